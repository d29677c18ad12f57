// The built-in dashboard: asks for an ADMIN token (kept in sessionStorage), then reads the stats,
// funnels, dashboard, export and jobs APIs. Every value from the data is written with textContent:
// page paths and UTM tags come from the public beacon endpoint.
"use strict";

(function () {
  const TOKEN_KEY = "lomash.analytics.adminToken";
  const TZ = document.body.dataset.timezone || "UTC";
  const BREAKDOWNS = [
    ["page", "Pages"], ["entry_page", "Entry pages"], ["referrer", "Sources"],
    ["utm_source", "UTM source"], ["utm_medium", "UTM medium"], ["utm_campaign", "UTM campaign"],
    ["country", "Countries"], ["city", "Cities"], ["device", "Devices"],
    ["browser", "Browsers"], ["os", "Operating systems"],
  ];
  const METRICS = [
    ["visitors", "Visitors", formatCount],
    ["sessions", "Visits", formatCount],
    ["pageviews", "Pageviews", formatCount],
    ["bounceRate", "Bounce rate", (v) => v.toFixed(1) + "%"],
    ["visitDurationSeconds", "Visit duration", formatDuration],
  ];
  const $ = (id) => document.getElementById(id);
  const TRACKING_TYPES = (document.body.dataset.trackingTypes || "").split(" ").filter(Boolean);
  const DOMAIN_TYPES = (document.body.dataset.domainTypes || "").split(" ").filter(Boolean);
  const JOBS = (document.body.dataset.jobs || "").split(" ").filter(Boolean);  // not export
  const JOB_RUNS = 20;  // recent runs in the jobs table
  const state = {
    range: "7d", custom: null, filters: {}, generation: 0, chart: null, propKey: null, funnel: null,
    jobsGeneration: 0,
  };
  const MAX_FILTER_VALUE = 512;  // the API's cap on a filter's value

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "className") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function formatCount(n) { return Number(n).toLocaleString("en-GB"); }

  function formatDuration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    return m < 60 ? `${m}m ${s % 60}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
  }

  // Dates in the report's time zone, as YYYY-MM-DD strings.
  function todayInZone() {
    return new Intl.DateTimeFormat("en-CA", {
      timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit",
    }).format(new Date());
  }

  function addDays(day, n) {
    const [y, m, d] = day.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
  }

  function currentRange() {
    const today = todayInZone();
    if (state.range === "custom" && state.custom) {
      return { from: state.custom.from, to: addDays(state.custom.to, 1), hourly: false };
    }
    const days = { today: 1, "7d": 7, "30d": 30 }[state.range] || 7;
    return { from: addDays(today, 1 - days), to: addDays(today, 1), hourly: days === 1 };
  }

  // A value may hold anything a beacon sent: `\`, `;` and `:` are escaped so that it stays
  // one value (the API reads `\;` as `;`), never a second filter.
  function filterValue(v) {
    return v.replace(/[\\;:]/g, (c) => "\\" + c);
  }

  // A property's key is escaped alike: `prop:KEY:VALUE`.
  function filterDimension(d) {
    return d.startsWith("prop:") ? "prop:" + filterValue(d.slice(5)) : d;
  }

  function filterParam() {
    return Object.entries(state.filters)
      .map(([d, v]) => `${filterDimension(d)}:${filterValue(v)}`).join(";");
  }

  class Unauthorised extends Error {}

  async function api(path, params, options) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== "" && v !== undefined) url.searchParams.set(k, v);
    }
    const response = await fetch(url, {
      ...(options || {}),
      headers: {
        Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY),
        ...((options && options.headers) || {}),
      },
    });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      throw new Unauthorised(body.error || "not allowed");
    }
    if (response.status === 204) return null;
    const body = await response.json();
    if (!response.ok) {
      const failure = new Error(body.error || `HTTP ${response.status}`);
      failure.where = body.path || body.parameter || "";  // the field or parameter named
      throw failure;
    }
    return body;
  }

  // Sign in and out.

  function showSignIn(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("live").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
  }

  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("sign-out").addEventListener("click", () => showSignIn(""));

  // Rendering.

  function renderHeadline(overview) {
    const box = $("headline");
    box.replaceChildren();
    for (const [key, label, format] of METRICS) {
      const now = overview[key];
      const before = overview.previous[key];
      let change = "no earlier data";
      let direction = "";
      if (key === "bounceRate") {
        const points = now - before;
        change = `${points >= 0 ? "+" : ""}${points.toFixed(1)} pts`;
        direction = points > 0 ? "down" : points < 0 ? "up" : "";
      } else if (before > 0) {
        const pct = Math.round(((now - before) / before) * 100);
        change = `${pct >= 0 ? "+" : ""}${pct}%`;
        direction = pct > 0 ? "up" : pct < 0 ? "down" : "";
      }
      const estimated =
        (key === "visitors" && !overview.visitorsExact) ||
        (key === "visitDurationSeconds" && overview.visitDurationExact === false);
      const approx = estimated ? "≈ " : "";
      box.append(
        el("div", { className: "card metric", id: "metric-" + key },
          el("div", { className: "label" }, label),
          el("div", { className: "value" }, approx + format(now)),
          el("div", { className: "change " + direction }, change + " vs previous")));
    }
  }

  function renderChart(series) {
    const xs = series.points.map((p) => Date.parse(p.t) / 1000);
    const data = [xs, series.points.map((p) => p.visitors), series.points.map((p) => p.pageviews)];
    const box = $("chart");
    const width = Math.max(280, box.clientWidth);
    if (state.chart) state.chart.destroy();
    box.replaceChildren();
    state.chart = new uPlot({
      width, height: 260,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), TZ),
      series: [
        {},
        { label: "Visitors", stroke: "#7a4b21", width: 2, fill: "rgba(122,75,33,0.08)" },
        { label: "Pageviews", stroke: "#3b82f6", width: 2 },
      ],
      axes: [{}, { size: 60 }],
    }, data, box);
  }

  function renderBreakdown(dimension, title, answer) {
    const card = el("div", { className: "card", id: "breakdown-" + dimension }, el("h2", {}, title));
    if (!answer.rows.length) {
      card.append(el("p", { className: "empty" }, "No data for this range"));
      return card;
    }
    const table = el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Value"), el("th", {}, "Visitors"),
        el("th", {}, "Pageviews"))));
    const body = el("tbody");
    for (const row of answer.rows) {
      const link = el("a", { href: "#", "data-value": row.value, title: "Filter by this value" },
        row.value === "" ? "(none)" : row.value);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        state.filters[dimension] = row.value;
        refresh();
      });
      body.append(el("tr", {}, el("td", {}, link), el("td", {}, formatCount(row.visitors)),
        el("td", {}, formatCount(row.pageviews))));
    }
    table.append(body);
    card.append(table);
    return card;
  }

  // Event properties: the keys of the range (of one event type, when picked), and the values
  // of the key picked; a value is a filter by a click, as a breakdown row is.
  async function refreshProperties(params, filter, generation) {
    const eventType = $("prop-event-type").value;
    const typed = eventType ? { eventType } : {};
    const answer = await api("/v1/analytics/stats/properties", { ...params, ...typed });
    if (generation !== state.generation) return;
    const keys = answer.keys.map((k) => k.key);
    if (!keys.includes(state.propKey)) state.propKey = keys.length ? keys[0] : null;
    const select = $("prop-key");
    select.replaceChildren(...answer.keys.map((k) =>
      el("option", { value: k.key }, `${k.key} (${formatCount(k.events)} events)`)));
    const box = $("prop-values");
    if (state.propKey === null) {
      box.replaceChildren(el("p", { className: "empty" }, "No properties in this range"));
      return;
    }
    select.value = state.propKey;
    const key = state.propKey;
    const values = await api("/v1/analytics/stats/breakdown",
      { ...params, ...typed, filter, dimension: "prop:" + key, limit: 20 });
    if (generation !== state.generation) return;
    const table = el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Value"), el("th", {}, "Visitors"),
        el("th", {}, "Events"))));
    const body = el("tbody");
    for (const row of values.rows) {
      const label = row.value === "" ? "(empty)" : row.value;
      let cell = label;
      if (row.value.length <= MAX_FILTER_VALUE) {
        cell = el("a", { href: "#", "data-value": row.value, title: "Filter by this value" }, label);
        cell.addEventListener("click", (event) => {
          event.preventDefault();
          state.filters["prop:" + key] = row.value;
          refresh();
        });
      }
      body.append(el("tr", {}, el("td", {}, cell), el("td", {}, formatCount(row.visitors)),
        el("td", {}, formatCount(row.events))));
    }
    table.append(body);
    box.replaceChildren(values.rows.length ? table : el("p", { className: "empty" }, "No values"));
  }

  function renderFunnel(id, funnel) {
    const box = $(id);
    box.replaceChildren();
    const first = funnel.steps.length ? funnel.steps[0].count : 0;
    for (const step of funnel.steps) {
      const share = first ? (step.count / first) * 100 : 0;
      const bar = el("div", { className: "bar" });
      bar.style.width = share.toFixed(1) + "%";
      box.append(el("div", { className: "step" },
        el("div", { className: "step-label" }, el("span", {}, step.step),
          el("span", {}, `${formatCount(step.count)} · ${share.toFixed(0)}%`)), bar));
    }
    box.append(el("p", { className: "hint" }, `Conversion ${funnel.conversionRate}%`));
  }

  function table(headings, rows) {
    const body = el("tbody");
    for (const cells of rows) body.append(el("tr", {}, ...cells.map((c) => el("td", {}, c))));
    return el("table", {}, el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {}, h)))), body);
  }

  // Any funnel, built in or defined, for the range: visitors, drop-off and time per step.
  async function refreshFunnels(params, generation) {
    const listed = await api("/v1/analytics/funnels");
    if (generation !== state.generation) return;
    const names = listed.funnels.map((f) => f.name);
    if (!names.includes(state.funnel)) state.funnel = names.length ? names[0] : null;
    const select = $("funnel-pick");
    select.replaceChildren(...listed.funnels.map((f) =>
      el("option", { value: f.name }, f.builtIn ? `${f.name} (built in)` : f.name)));
    const box = $("funnel-result");
    if (state.funnel === null) { box.replaceChildren(); return; }
    select.value = state.funnel;
    $("funnel-remove").hidden = listed.funnels[names.indexOf(state.funnel)].builtIn;
    const report = await api("/v1/analytics/funnels/" + encodeURIComponent(state.funnel), params);
    if (generation !== state.generation) return;
    // A sampled answer (past FUNNEL_SAMPLE_ROWS) carries sampleShare and each step's margin.
    const sampled = report.sampleShare !== undefined;
    const approx = sampled ? "≈ " : "";
    box.replaceChildren(
      table(["Step", "Visitors", "Drop-off", "Time from previous"], report.steps.map((s) => [
        s.step,
        sampled ? `≈ ${formatCount(s.count)} ± ${formatCount(s.margin)}` : formatCount(s.count),
        approx + formatCount(s.dropOff),
        s.medianSecondsFromPrevious === null ? "–" : approx + formatDuration(s.medianSecondsFromPrevious),
      ])),
      el("p", { className: "hint" }, sampled
        ? `Conversion ≈ ${report.conversionRate}%, from ${(report.sampleShare * 100).toFixed(1)}% of visitors (± 95% interval)`
        : `Conversion ${report.conversionRate}%`));
  }

  function stepRow() {
    const type = el("select", { className: "step-type", "aria-label": "Event type" },
      ...[...TRACKING_TYPES, ...DOMAIN_TYPES].map((t) => el("option", { value: t }, t)));
    const page = el("input", { className: "step-page", "aria-label": "Page", placeholder: "page (optional)" });
    const prop = el("input", { className: "step-prop", "aria-label": "Property", placeholder: "key=value (optional)" });
    const remove = el("button", { type: "button", title: "Remove this step" }, "×");
    const row = el("li", {}, type, page, prop, remove);
    remove.addEventListener("click", () => row.remove());
    type.addEventListener("change", () => {
      // A domain event has no page and no properties.
      page.disabled = prop.disabled = DOMAIN_TYPES.includes(type.value);
    });
    return row;
  }

  function definedSteps() {
    return [...$("funnel-steps").children].map((row) => {
      const step = { eventType: row.querySelector(".step-type").value };
      const page = row.querySelector(".step-page");
      const prop = row.querySelector(".step-prop");
      if (!page.disabled && page.value.trim()) step.page = page.value.trim();
      if (!prop.disabled && prop.value.trim()) {
        const pair = prop.value.trim();
        const at = pair.indexOf("=");
        step.properties = at < 0 ? { [pair]: "" } : { [pair.slice(0, at)]: pair.slice(at + 1) };
      }
      return step;
    });
  }

  async function defineFunnel(event) {
    event.preventDefault();
    const body = {
      name: $("funnel-name").value.trim(),
      steps: definedSteps(),
      windowSeconds: Number($("funnel-window").value),
    };
    document.body.dataset.loading = "true";
    try {
      const created = await api("/v1/analytics/funnels", {}, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      $("funnel-error").textContent = "";
      $("funnel-name").value = "";
      state.funnel = created.name;
      refresh();
    } catch (error) {
      if (error instanceof Unauthorised) return showSignIn(error.message);
      $("funnel-error").textContent =
        "Not defined: " + error.message + (error.where ? ` (${error.where})` : "");
      document.body.dataset.loading = "false";
    }
  }

  async function removeFunnel() {
    document.body.dataset.loading = "true";
    try {
      await api("/v1/analytics/funnels/" + encodeURIComponent(state.funnel), {}, { method: "DELETE" });
      state.funnel = null;
      refresh();
    } catch (error) {
      if (error instanceof Unauthorised) return showSignIn(error.message);
      $("funnel-error").textContent = "Not removed: " + error.message;
      document.body.dataset.loading = "false";
    }
  }

  function mondayOf(day) {
    const [y, m, d] = day.split("-").map(Number);
    return addDays(day, -((new Date(Date.UTC(y, m - 1, d)).getUTCDay() + 6) % 7));
  }

  // Weekly cohorts over the last N weeks (Monday to Monday in the report's zone): each later
  // week's share of the cohort, the count on hover; weeks not yet begun stay blank.
  async function refreshRetention(generation) {
    const weeks = Number($("retention-weeks").value);
    const today = todayInZone();
    const answer = await api("/v1/analytics/stats/retention", {
      by: $("retention-by").value,
      from: addDays(mondayOf(today), -7 * (weeks - 1)),
      to: addDays(today, 1),
      weeks: weeks - 1,
    });
    if (generation !== state.generation) return;
    const headings = ["Cohort", "Size", ...Array.from({ length: weeks - 1 }, (_, k) => `Week ${k + 1}`)];
    const body = el("tbody");
    for (const cohort of answer.cohorts) {
      const row = el("tr", { "data-week": cohort.week }, el("td", {}, cohort.week),
        el("td", {}, formatCount(cohort.size)));
      for (let k = 0; k < weeks - 1; k++) {
        const cell = el("td", { className: "cell" });
        if (k < cohort.returning.length) {
          const n = cohort.returning[k];
          const share = cohort.size ? (n / cohort.size) * 100 : 0;
          cell.textContent = share.toFixed(1) + "%";
          cell.title = `${formatCount(n)} of ${formatCount(cohort.size)}`;
          cell.dataset.n = String(n);
          cell.style.background = `rgba(122, 75, 33, ${(Math.min(share, 100) / 100 * 0.8 + 0.05).toFixed(2)})`;
          if (share > 45) cell.style.color = "#fff";
        }
        row.append(cell);
      }
      body.append(row);
    }
    $("retention-grid").replaceChildren(el("table", { className: "cohorts" },
      el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {}, h)))), body));
  }

  // The most common pages after an entry page, or before a goal, in the range.
  async function refreshJourneys(params, generation) {
    const asked = { ...params, steps: $("journey-steps").value };
    if ($("journey-mode").value === "entry") {
      const entry = $("journey-entry").value.trim();
      asked.entry = entry.startsWith("/") ? entry : "/" + entry;
    } else {
      asked.goal = $("journey-goal").value;
    }
    const answer = await api("/v1/analytics/stats/journeys", asked);
    if (generation !== state.generation) return;
    $("journey-paths").replaceChildren(answer.paths.length
      ? table(["Pages", "Visitors"], answer.paths.map((j) => [j.pages.join(" → "), formatCount(j.visitors)]))
      : el("p", { className: "empty" }, "No journeys in this range"));
  }

  // A moment in the report's zone as `YYYY-MM-DD HH:MM:SS`.
  const CLOCK = new Intl.DateTimeFormat("en-GB", {
    timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });

  function formatMoment(iso) {
    const part = {};
    for (const { type, value } of CLOCK.formatToParts(new Date(iso))) part[type] = value;
    return `${part.year}-${part.month}-${part.day} ${part.hour}:${part.minute}:${part.second}`;
  }

  // A finished run's duration: hundredths of a second (rounded from whole milliseconds, so
  // without a float's ties) under a minute, minutes and seconds beyond.
  function runDuration(run) {
    if (!run.startedAt || !run.finishedAt) return "–";
    const ms = Date.parse(run.finishedAt) - Date.parse(run.startedAt);
    if (ms >= 60000) return formatDuration(ms / 1000);
    const hundredths = Math.round(ms / 10);
    return `${Math.floor(hundredths / 100)}.${String(hundredths % 100).padStart(2, "0")} s`;
  }

  function runResult(result) {
    if (result === null || result === undefined) return "";
    return typeof result === "string" ? result : JSON.stringify(result);
  }

  // The recent runs, as GET /v1/admin/jobs lists them: the newest answer asked for is drawn.
  async function refreshJobs() {
    const generation = ++state.jobsGeneration;
    let answer;
    try {
      answer = await api("/v1/admin/jobs", { limit: JOB_RUNS });
    } catch (error) {
      if (error instanceof Unauthorised) throw error;
      if (generation === state.jobsGeneration) {
        $("job-runs").replaceChildren(el("p", { className: "error" }, "Jobs unavailable: " + error.message));
      }
      return null;
    }
    if (generation !== state.jobsGeneration) return answer.jobs;
    const body = el("tbody");
    for (const run of answer.jobs) {
      body.append(el("tr", { "data-job-id": run.jobId, "data-status": run.status },
        el("td", {}, run.name),
        el("td", { className: "status-" + run.status }, run.status),
        el("td", {}, el("time", { datetime: run.enqueuedAt }, formatMoment(run.enqueuedAt))),
        el("td", {}, runDuration(run)),
        el("td", { className: "result" }, runResult(run.result))));
    }
    $("job-runs").replaceChildren(answer.jobs.length
      ? el("table", { className: "runs" }, el("thead", {}, el("tr", {},
        ...["Job", "Status", "Enqueued", "Duration", "Result"].map((h) => el("th", {}, h)))), body)
      : el("p", { className: "empty" }, "No recent runs"));
    return answer.jobs;
  }

  // Run a job now, then follow it in the table until it is done (or, keeping no result, gone).
  async function runJob() {
    const name = $("job-name").value;
    const status = $("job-state");
    status.removeAttribute("data-job-id");
    status.textContent = "Requesting…";
    $("job-run").disabled = true;
    try {
      const queued = await api("/v1/admin/jobs/" + encodeURIComponent(name), {}, { method: "POST" });
      status.dataset.jobId = queued.jobId;
      for (let attempt = 0; attempt < 120; attempt++) {
        const runs = await refreshJobs();
        const run = runs && runs.find((r) => r.jobId === queued.jobId);
        if (runs && !run) { status.textContent = `${name}: finished`; return; }
        if (run && (run.status === "DONE" || run.status === "FAILED")) {
          status.textContent = `${name}: ${run.status}`;
          return;
        }
        status.textContent = `${name}: ${run ? run.status : "…"}`;
        if ($("dashboard").hidden) return;
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      status.textContent = `${name}: still running; see the table`;
    } catch (error) {
      if (error instanceof Unauthorised) return showSignIn(error.message);
      status.textContent = "Not run: " + error.message;
    } finally {
      $("job-run").disabled = false;
    }
  }

  function hourInZone(iso) {
    return new Intl.DateTimeFormat("en-GB", {
      timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
      minute: "2-digit", hourCycle: "h23",
    }).format(new Date(iso));
  }

  function byReason(counts) {
    const pairs = Object.entries(counts);
    return pairs.length ? pairs.map(([reason, n]) => `${formatCount(n)} ${reason}`).join(", ") : "0";
  }

  function formatLag(ms) { return ms === null ? "–" : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`; }

  // The ingest ledger for the range: the whole range first, then its newest hours; accepted =
  // stored + filtered + lost + pending in every row.
  async function refreshIngest(params, generation) {
    const answer = await api("/v1/analytics/ingest", params);
    if (generation !== state.generation) return;
    const lag = answer.lag;
    $("ingest-lag").textContent =
      `202 to queryable: p50 ${formatLag(lag.queryableP50Ms)}, p99 ${formatLag(lag.queryableP99Ms)}` +
      ` · 202 to announced on event.tracked: p50 ${formatLag(lag.announcedP50Ms)},` +
      ` p99 ${formatLag(lag.announcedP99Ms)}`;
    if (!answer.hours.length) {
      $("ingest-hours").replaceChildren(el("p", { className: "empty" }, "No events accepted in this range"));
      return;
    }
    const total = { accepted: 0, stored: 0, pending: 0, filtered: {}, lost: {} };
    for (const hour of answer.hours) {
      for (const key of ["accepted", "stored", "pending"]) total[key] += hour[key];
      for (const key of ["filtered", "lost"]) {
        for (const [reason, n] of Object.entries(hour[key])) total[key][reason] = (total[key][reason] || 0) + n;
      }
    }
    const row = (label, h) => [label, formatCount(h.accepted), formatCount(h.stored),
      byReason(h.filtered), byReason(h.lost), formatCount(h.pending)];
    const newest = answer.hours.slice(-48).reverse();
    const shown = table(["Hour", "Accepted", "Stored", "Filtered", "Lost", "Pending"],
      [row("Whole range", total), ...newest.map((h) => row(hourInZone(h.hour), h))]);
    shown.className = "ledger";
    $("ingest-hours").replaceChildren(shown);
  }

  function keyValues(title, id, pairs) {
    const list = el("dl", { className: "kv" });
    for (const [k, v] of pairs) list.append(el("dt", {}, k), el("dd", {}, v));
    return el("div", { className: "card", id }, el("h2", {}, title), list);
  }

  function renderBusiness(answer) {
    const w = answer.widgets;
    const revenue = Object.entries(w.orders.revenue);
    const box = $("business");
    box.replaceChildren(
      keyValues("Bookings", "widget-bookings", [
        ["In range", formatCount(w.bookings.inRange)],
        ["Cancelled in range", formatCount(w.bookings.cancelledInRange)],
        ["Today", formatCount(w.bookings.today)],
        ["This week", formatCount(w.bookings.thisWeek)],
        ["This month", formatCount(w.bookings.thisMonth)],
      ]),
      keyValues("Orders and revenue", "widget-revenue", [
        ["Orders", formatCount(w.orders.count)],
        ...(revenue.length ? revenue.map(([cur, total]) => ["Revenue " + cur, total]) : [["Revenue", "0.00"]]),
        ...Object.entries(w.orders.averageOrderValue).map(([cur, v]) => ["Average order " + cur, v]),
      ]),
      keyValues("Customers", "widget-customers", [
        ["New", formatCount(w.customers.new)],
        ["Returning", formatCount(w.customers.returning)],
      ]),
      keyValues("Top products", "widget-products",
        w.topProducts.length ? w.topProducts.map((p) => [p.productId, formatCount(p.views) + " views"])
          : [["No product views", ""]]),
      keyValues("Content and leads", "widget-content", [
        ["Product page views", w.productPageViews == null ? "–" : formatCount(w.productPageViews)],
        ["Blog views", formatCount(w.blogViews)],
        ["Brochure requests", formatCount(w.brochureRequests)],
        ["Newsletter sign-ups", formatCount(w.newsletterSignups)],
      ]),
      keyValues("Platform events", "widget-domain-events",
        Object.entries(w.domainEventsByType || {}).map(([type, n]) => [type, formatCount(n)])),
    );
    if (answer.stale) {
      box.prepend(el("p", { className: "hint" }, `Business widgets from a snapshot ${answer.ageSeconds}s old`));
    }
  }

  function renderFilters() {
    const box = $("filters");
    box.replaceChildren();
    for (const [dimension, value] of Object.entries(state.filters)) {
      const chip = el("button", { type: "button", className: "chip", title: "Remove this filter" },
        `${dimension}: ${value === "" ? "(none)" : value} ×`);
      chip.addEventListener("click", () => { delete state.filters[dimension]; refresh(); });
      box.append(chip);
    }
  }

  // Loading.

  async function refresh() {
    const generation = ++state.generation;
    const range = currentRange();
    const params = { from: range.from, to: range.to };
    const filter = filterParam();
    renderFilters();
    $("error").textContent = "";
    document.body.dataset.loading = "true";
    try {
      const [overview, series, funnelB, funnelC, business, ...breakdowns] = await Promise.all([
        api("/v1/analytics/stats/overview", { ...params, filter }),
        api("/v1/analytics/stats/timeseries", { ...params, filter, interval: range.hourly ? "hour" : "day" }),
        api("/v1/analytics/funnels/booking", params),
        api("/v1/analytics/funnels/checkout", params),
        api("/v1/analytics/dashboard", params),
        ...BREAKDOWNS.map(([d]) => api("/v1/analytics/stats/breakdown", { ...params, filter, dimension: d })),
      ]);
      if (generation !== state.generation) return;  // a newer request is on its way
      state.resolved = overview.range;
      $("range-label").textContent =
        `${overview.range.from.slice(0, 16).replace("T", " ")} to ${overview.range.to.slice(0, 16).replace("T", " ")} (${overview.range.timezone})`;
      renderHeadline(overview);
      renderChart(series);
      $("breakdowns").replaceChildren(
        ...BREAKDOWNS.map(([d, title], i) => renderBreakdown(d, title, breakdowns[i])));
      renderFunnel("funnel-booking", funnelB);
      renderFunnel("funnel-checkout", funnelC);
      renderBusiness(business);
      await Promise.all([
        refreshProperties(params, filter, generation),
        refreshFunnels(params, generation),
        refreshRetention(generation),
        refreshJourneys(params, generation),
        refreshIngest(params, generation),
        refreshJobs(),
      ]);
    } catch (error) {
      if (error instanceof Unauthorised) return showSignIn(error.message);
      $("error").textContent = "Could not load: " + error.message;
    } finally {
      if (generation === state.generation) document.body.dataset.loading = "false";
    }
  }

  async function pollRealtime() {
    if ($("dashboard").hidden) return;
    try {
      const live = await api("/v1/analytics/stats/realtime");
      $("live-visitors").textContent = formatCount(live.visitors);
      $("live").title = `Pageviews in the last 30 minutes: ${live.pageviewsPerMinute.reduce((a, b) => a + b, 0)}`;
      $("live").hidden = false;
    } catch (error) {
      if (error instanceof Unauthorised) showSignIn(error.message);
    }
  }

  async function exportReport() {
    if (!state.resolved) return;
    const status = $("export-state");
    status.textContent = "Requesting…";
    try {
      const created = await api("/v1/analytics/exports", {}, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          reportType: $("export-type").value,
          format: $("export-format").value,
          dateRange: { from: state.resolved.from, to: state.resolved.to },
        }),
      });
      for (let attempt = 0; attempt < 120; attempt++) {
        const found = await api("/v1/analytics/exports/" + encodeURIComponent(created.exportId));
        if (found.status === "READY") {
          const link = el("a", { href: found.downloadUrl, id: "export-link" }, `Download (${found.rows} rows)`);
          status.replaceChildren(link);
          return;
        }
        if (found.status === "FAILED") { status.textContent = "Failed: " + found.error; return; }
        status.textContent = "Preparing…";
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      status.textContent = "Still preparing; try again later";
    } catch (error) {
      if (error instanceof Unauthorised) return showSignIn(error.message);
      status.textContent = "Failed: " + error.message;
    }
  }

  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      for (const other of document.querySelectorAll("[data-range]")) other.classList.remove("active");
      button.classList.add("active");
      state.range = button.dataset.range;
      $("custom").hidden = state.range !== "custom";
      if (state.range !== "custom") refresh();
    });
  }
  $("custom-apply").addEventListener("click", () => {
    const from = $("custom-from").value;
    const to = $("custom-to").value;
    if (!from || !to || to < from) { $("error").textContent = "Pick a start and an end date"; return; }
    state.custom = { from, to };
    refresh();
  });
  $("export").addEventListener("click", exportReport);
  window.addEventListener("resize", () => {
    if (state.chart) state.chart.setSize({ width: Math.max(280, $("chart").clientWidth), height: 260 });
  });

  $("prop-event-type").addEventListener("change", () => refresh());
  $("prop-key").addEventListener("change", () => { state.propKey = $("prop-key").value; refresh(); });
  $("funnel-pick").addEventListener("change", () => { state.funnel = $("funnel-pick").value; refresh(); });
  $("funnel-remove").addEventListener("click", removeFunnel);
  $("funnel-builder").addEventListener("submit", defineFunnel);
  $("funnel-add-step").addEventListener("click", () => {
    if ($("funnel-steps").children.length < 8) $("funnel-steps").append(stepRow());
  });
  $("funnel-steps").append(stepRow(), stepRow());
  $("retention-by").addEventListener("change", () => refresh());
  $("retention-weeks").addEventListener("change", () => refresh());
  $("journey-goal").replaceChildren(...TRACKING_TYPES.filter((t) => t !== "PAGEVIEW")
    .map((t) => el("option", { value: t }, t)));
  $("journey-goal").value = "BOOKING_COMPLETE";
  $("journey-mode").addEventListener("change", () => {
    const entry = $("journey-mode").value === "entry";
    $("journey-entry").hidden = !entry;
    $("journey-goal").hidden = entry;
    refresh();
  });
  $("journey-steps").addEventListener("change", () => refresh());
  $("journey-apply").addEventListener("click", () => refresh());
  $("job-name").replaceChildren(...JOBS.map((name) => el("option", { value: name }, name)));
  $("job-run").addEventListener("click", runJob);

  function start() {
    if (!sessionStorage.getItem(TOKEN_KEY)) return showSignIn("");
    $("sign-in").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
    const today = todayInZone();
    $("custom-from").value = addDays(today, -13);
    $("custom-to").value = today;
    refresh();
    pollRealtime();
  }

  setInterval(pollRealtime, 15000);
  start();
})();
