/* Lomash Wood first-party analytics tracker. No dependencies.
 * <script src="https://analytics.example/v1/analytics/tracker.js" async></script>
 * window.lomash.track(eventType, properties) | .identify(userId) | .flush()
 */
(function (w, d) {
  "use strict";
  if (w.lomash && w.lomash.loaded) return;
  var script = d.currentScript;
  var endpoint = (script && script.getAttribute("data-endpoint")) ||
    (script && script.src ? new URL(script.src).origin : "") + "/v1/analytics/track";
  var MAX_BATCH = 20, DELAY_MS = 1000, MAX_TRIES = 3;
  var queue = [], timer = 0, userId = null, lastUrl = null;

  function uuid() {
    if (w.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16)), h = "";
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" +
      h.slice(16, 20) + "-" + h.slice(20);
  }

  function sessionId() {
    try {
      var id = sessionStorage.getItem("lomash.sid");
      if (!id) sessionStorage.setItem("lomash.sid", (id = uuid()));
      return id;
    } catch (e) {
      return w.__lomashSid || (w.__lomashSid = uuid());
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
    // Same eventIds on every try: the server stores each event once.
    batch = batch.filter(function (e) { return (e._tries = (e._tries || 0) + 1) < MAX_TRIES; });
    if (batch.length) { queue = batch.concat(queue); schedule(); }
  }

  function flush(leaving) {
    clearTimeout(timer);
    timer = 0;
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
    queue.push({
      eventId: uuid(),
      eventType: eventType,
      sessionId: sessionId(),
      userId: userId,
      timestamp: new Date().toISOString(),
      metadata: {
        url: location.href,
        referrer: lastUrl || d.referrer || null,
        userAgent: navigator.userAgent,
        deviceType: deviceType()
      },
      properties: properties || {}
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

  var pending = (w.lomash && w.lomash.q) || [];
  w.lomash = {
    loaded: true,
    track: track,
    identify: function (id) { userId = id || null; },
    flush: function () { flush(false); }
  };
  pending.forEach(function (call) { w.lomash[call[0]].apply(null, call.slice(1)); });
  pageview();
})(window, document);
