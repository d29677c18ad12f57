/* Lomash Wood first-party analytics tracker. No dependencies.
 * <script src="https://analytics.example/v1/analytics/tracker.js" async></script>
 * window.lomash.track(eventType, properties) | .identify(userId) | .flush()
 *   | .optOut() | .optIn() | .isOptedOut(); script attributes data-endpoint, data-respect-dnt
 */
(function (w, d) {
  "use strict";
  if (w.lomash && w.lomash.loaded) return;
  var script = d.currentScript;
  var endpoint = (script && script.getAttribute("data-endpoint")) ||
    (script && script.src ? new URL(script.src).origin : "") + "/v1/analytics/track";
  var MAX_BATCH = 20, DELAY_MS = 1000, MAX_TRIES = 3, MAX_TEXT = 4096;
  var queue = [], timer = 0, userId = null, lastUrl = null;

  // Opted out (optOut(), or with data-respect-dnt the browser's DNT or GPC, which optIn()
  // cannot lift): nothing is sent. The choice is kept in localStorage, else for this page.
  var KEY = "lomash.optOut", nav = navigator, optedOut = stored();
  var signal = !!(script && script.hasAttribute("data-respect-dnt")) && (
    [nav.doNotTrack, w.doNotTrack, nav.msDoNotTrack].some(function (v) {
      return v === "1" || v === "yes";
    }) || nav.globalPrivacyControl === true);
  function stored() {
    try { return localStorage.getItem(KEY) === "1"; } catch (e) { return false; }
  }
  function blocked() { return optedOut || signal; }

  function optOut(other) {
    optedOut = true;
    queue = [];  // what waits is never sent; the user and the tab's session are forgotten
    clearTimeout(timer);
    timer = 0;
    userId = w.__lomashSid = null;
    try { sessionStorage.removeItem("lomash.sid"); } catch (e) { /* in memory, cleared */ }
    try { if (!other) localStorage.setItem(KEY, "1"); } catch (e) { /* this page only */ }
  }

  // A string cut in the middle of an emoji (by the page, or by us) holds half a UTF-16 pair,
  // which JSON.stringify writes as a lone \ud83d: replace each half by U+FFFD first.
  var LONE = /[\ud800-\udbff](?![\udc00-\udfff])|(^|[^\ud800-\udbff])[\udc00-\udfff]/g;
  function wellFormed(s) {
    return s.toWellFormed ? s.toWellFormed() : s.replace(LONE, "$1\ufffd");
  }

  // At most MAX_TEXT code units (what the server takes), never half a pair.
  function cut(s) {
    if (s == null) return s;
    s = String(s);
    if (s.length > MAX_TEXT) {
      var end = MAX_TEXT, last = s.charCodeAt(end - 1);
      if (last >= 0xd800 && last <= 0xdbff) end -= 1;  // the first half of a pair: leave both
      s = s.slice(0, end);
    }
    return wellFormed(s);
  }

  function clean(value) {
    if (typeof value === "string") return wellFormed(value);
    if (Array.isArray(value)) return value.map(clean);
    if (value && typeof value === "object") {
      var copy = {};
      for (var k in value) if (Object.prototype.hasOwnProperty.call(value, k)) copy[wellFormed(k)] = clean(value[k]);
      return copy;
    }
    return value;
  }

  function uuid() {
    if (w.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16)), h = "";
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" +
      h.slice(16, 20) + "-" + h.slice(20);
  }

  // A session ends after 30 minutes without an event (the server keeps its state 45).
  var SESSION_IDLE_MINUTES = 30;
  function sessionId() {
    var now = Date.now(), idle = SESSION_IDLE_MINUTES * 60000;
    try {
      var id = sessionStorage.getItem("lomash.sid");
      var seen = Number(sessionStorage.getItem("lomash.seen") || 0);
      if (!id || !(now - seen < idle)) sessionStorage.setItem("lomash.sid", (id = uuid()));
      sessionStorage.setItem("lomash.seen", String(now));
      return id;
    } catch (e) {
      if (!w.__lomashSid || !(now - w.__lomashSeen < idle)) w.__lomashSid = uuid();
      w.__lomashSeen = now;
      return w.__lomashSid;
    }
  }

  function deviceType() {
    var ua = navigator.userAgent;
    if (/iPad|Tablet|Android(?!.*Mobile)/i.test(ua)) return "tablet";
    if (/Mobi|iPhone|Android/i.test(ua)) return "mobile";
    return "desktop";
  }

  function send(batch, leaving) {
    var body = JSON.stringify(batch);
    // sendBeacon posts text/plain: no CORS preflight, and it survives the page going away.
    if (leaving && navigator.sendBeacon && navigator.sendBeacon(endpoint, body)) return;
    fetch(endpoint, {
      method: "POST", body: body, keepalive: true, credentials: "omit",
      headers: { "Content-Type": "text/plain" }
    }).then(function (r) {
      if (r.status >= 500 || r.status === 429) retry(batch);
    }, function () { retry(batch); });
  }

  function retry(batch) {
    if (blocked()) return;  // opted out while it was out
    // Same eventIds on every try: the server stores each event once.
    batch = batch.filter(function (e) { return (e._tries = (e._tries || 0) + 1) < MAX_TRIES; });
    if (batch.length) { queue = batch.concat(queue); schedule(); }
  }

  function flush(leaving) {
    clearTimeout(timer);
    timer = 0;
    if (blocked()) queue = [];
    while (queue.length) {
      send(queue.splice(0, MAX_BATCH).map(function (e) {
        var copy = {}; for (var k in e) if (k !== "_tries") copy[k] = e[k]; return copy;
      }), leaving === true);
    }
  }

  function schedule() {
    if (queue.length >= MAX_BATCH) flush();
    else if (!timer) timer = setTimeout(flush, DELAY_MS);
  }

  function track(eventType, properties) {
    if (blocked()) return;
    queue.push({
      eventId: uuid(),
      eventType: eventType,
      sessionId: sessionId(),
      userId: userId,
      timestamp: new Date().toISOString(),
      metadata: {
        url: cut(location.href),
        referrer: cut(lastUrl || d.referrer || null),
        userAgent: cut(navigator.userAgent),
        deviceType: deviceType()
      },
      properties: clean(properties || {})
    });
    schedule();
  }

  function pageview() {
    if (location.href === lastUrl) return;
    track("PAGEVIEW", {});
    lastUrl = location.href;
  }

  ["pushState", "replaceState"].forEach(function (name) {
    var original = history[name];
    history[name] = function () {
      var result = original.apply(this, arguments);
      pageview();
      return result;
    };
  });
  w.addEventListener("popstate", pageview);
  w.addEventListener("pagehide", function () { flush(true); });
  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") flush(true);
  });
  w.addEventListener("storage", function (e) {  // another tab opted out or in
    if (e.key !== KEY && e.key !== null) return;
    if (stored()) optOut(true);
    else optedOut = false;
  });

  var pending = (w.lomash && w.lomash.q) || [];
  w.lomash = {
    loaded: true,
    track: track,
    identify: function (id) { if (!blocked()) userId = id || null; },
    flush: function () { flush(false); },
    optOut: function () { optOut(); },
    optIn: function () {
      optedOut = false;
      try { localStorage.removeItem(KEY); } catch (e) { /* this page only */ }
    },
    isOptedOut: blocked
  };
  pending.forEach(function (call) { w.lomash[call[0]].apply(null, call.slice(1)); });
  pageview();
})(window, document);
