// Sluice dashboard: plain JavaScript, no framework, no build step.
//
// Data comes from the JSON API (/stats, /queues, /ingestions, /status/{id},
// /ingestions/{id}/results) and stays fresh through the service's event
// stream (/events): an event only says "this changed", and the parts it
// touches are fetched again, a few times a second at most. Without the
// stream, a slow poll keeps the page roughly current.
//
// Every string from the server reaches the page through textContent or an
// attribute, never as markup.
//
// With API keys (--api-keys-file), the page asks for one when a read answers
// 401 and keeps it for this tab only (sessionStorage); every call sends it, and
// so does the event stream, read with fetch since EventSource cannot send a
// header. With a tenant's key, /stats and /queues answer 403: the operator
// panels (queue depth, the queues, what is processing) are left out, and the
// page shows the tenant's own requests and activity, which is all the API
// gives such a key.
"use strict";

(() => {
  const RECENT_LIMIT = 50; // requests in the list
  const RESULTS_PAGE = 10; // batches per page of results
  const BATCH_ROWS = 200; // batch rows shown at a time
  const MAX_BATCHES_TO_LIST = 5000; // larger requests show counts only
  const MAX_FORM_IDS = 1000000; // the CLI takes larger requests
  const CHART_BUCKETS = 60;
  const POLL_WHEN_LIVE_MS = 30000;
  const POLL_WHEN_DOWN_MS = 5000;
  const ACTIVE = new Set(["yet_to_start", "triggered"]);
  const PRIORITIES = ["HIGH", "MEDIUM", "LOW"];
  const QUEUE_COLUMNS = ["yet_to_start", "triggered", "retrying", "completed", "failed", "cancelled"];

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- helpers

  /** An element with properties, attributes and children (strings become text). */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function setText(el, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (el.textContent !== value) el.textContent = value;
  }

  /** Milliseconds since the epoch from RFC 3339 (microseconds allowed). */
  function parseTime(text) {
    if (!text) return null;
    const trimmed = String(text).replace(/(\.\d{3})\d+/, "$1");
    const ms = Date.parse(trimmed);
    return Number.isNaN(ms) ? null : ms;
  }

  const numberFormat = new Intl.NumberFormat();
  const fmtInt = (n) => numberFormat.format(n || 0);

  const pad = (n, width = 2) => String(n).padStart(width, "0");
  function clockTime(ms, withMillis = false) {
    if (ms === null || ms === undefined) return "—";
    const d = new Date(ms);
    const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMillis ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
  }
  function fullTime(ms) {
    return ms === null || ms === undefined ? "" : new Date(ms).toLocaleString();
  }

  /** A duration for people: 85 ms, 4.2 s, 42 s, 3 min 05 s, 2 h 10 min. */
  function duration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
    if (ms < 0) ms = 0;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.round(ms / 1000);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
    const m = Math.floor(s / 60);
    if (m < 48 * 60) return `${Math.floor(m / 60)} h ${pad(m % 60)} min`;
    return `${Math.floor(m / 1440)} d ${Math.floor((m % 1440) / 60)} h`;
  }

  function ago(ms) {
    const s = Math.max(0, Math.round((serverNow() - ms) / 1000));
    if (s < 3) return "just now";
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(ms).toLocaleDateString();
  }

  const statusLabel = (status) => String(status).replace(/_/g, " ");
  /** The visible part of an ingestion id: its random tail (UUIDv7 starts with the time). */
  const shortId = (id) => `…${String(id).slice(-8)}`;
  const positionOf = (batchId) => String(batchId).split(":").pop();

  function pill(status, label) {
    return h("span", { class: "pill", dataset: { status }, text: label || statusLabel(status) });
  }
  function setPill(el, status, label) {
    if (el.dataset.status !== status) el.dataset.status = status;
    setText(el, label || statusLabel(status));
  }
  function setPriority(el, priority) {
    el.dataset.priority = priority;
    setText(el, priority);
  }

  /** Runs `fn` at most once per `wait` ms, with the latest call honoured. */
  function throttle(fn, wait) {
    let timer = null;
    let last = 0;
    return () => {
      if (timer) return;
      const delay = Math.max(0, last + wait - Date.now());
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn();
      }, delay);
    };
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, problem, fallback) {
      super((problem && problem.detail) || fallback);
      this.status = status;
      this.problem = problem;
    }
  }

  // ---------------------------------------------------------- the API key

  const KEY_STORE = "sluice-api-key";
  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return "";
    }
  }

  /** The headers of a call: `extra`, and the key when there is one. */
  function withKey(extra = {}) {
    const key = apiKey();
    return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
  }

  function askForKey() {
    const form = $("key-form");
    if (!form.hidden) return;
    form.hidden = false;
    $("key-input").focus();
  }

  function useKey(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    try {
      sessionStorage.setItem(KEY_STORE, key);
    } catch {
      /* private mode: the key holds until the page is left */
    }
    // Start afresh with the key: every panel, and the stream.
    location.reload();
  }

  /** A tenant's key: the operator panels are not for it. */
  function leaveOutOperatorPanels() {
    if (state.tenantView) return;
    state.tenantView = true;
    state.stats = null;
    state.queues = null;
    document.querySelector(".layout").classList.add("tenant-view");
    $("operator-note").hidden = false;
    for (const el of [document.querySelector(".card.queue"), document.querySelector(".card.now"),
      document.querySelector(".facts"), $("queues-card")]) {
      el.hidden = true;
    }
  }

  /** Whether an answer is the 403 of an operator endpoint to a tenant's key. */
  const needsOperator = (error) =>
    error instanceof ApiError && error.status === 403 &&
    /operator key/.test((error.problem && error.problem.detail) || "");

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...options, headers: withKey(options.headers) });
    } catch (error) {
      markReachable(false);
      throw new ApiError(0, null, "Sluice does not answer (is it running?)");
    }
    markReachable(true);
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json().catch(() => null) : null;
    if (!response.ok) {
      if (response.status === 401) askForKey();
      throw new ApiError(response.status, body, `${response.status} ${response.statusText}`.trim());
    }
    return body;
  }

  // ------------------------------------------------------------- the clock

  // The server's clock minus the browser's, from the /stats sample with the
  // shortest round trip: countdowns then hold whatever the browser's clock says.
  let clockSamples = [];
  let clockOffset = 0;
  const serverNow = () => Date.now() + clockOffset;

  function sampleClock(serverText, sentAt, receivedAt) {
    const server = parseTime(serverText);
    if (server === null) return;
    clockSamples.push({ rtt: receivedAt - sentAt, offset: server - (sentAt + receivedAt) / 2 });
    clockSamples = clockSamples.slice(-12);
    clockOffset = clockSamples.reduce((best, s) => (s.rtt < best.rtt ? s : best)).offset;
  }

  // ---------------------------------------------------------------- state

  const state = {
    stats: null,
    ingestions: [],
    listLoaded: false,
    selected: null,
    detail: null,
    detailMissing: false,
    batchRows: BATCH_ROWS,
    results: { id: null, rows: [], cursor: null, pages: 0, loading: false },
    completions: [], // {at, failed}: batches that ended, from the event stream
    watchingSince: Date.now(),
    lastEventId: 0,
    sse: "connecting",
    reachable: true,
    queues: null, // the named queues; null until known, or on a server without them
    queuesMissing: false, // the server answered that it has no /queues
    sseOpened: false, // the event stream has opened once
    tenantView: false, // a tenant's key: no operator panels
  };

  // ------------------------------------------------------------ /stats

  let statsToken = 0;
  async function loadStats() {
    if (state.tenantView) return;
    const token = ++statsToken;
    const sentAt = Date.now();
    try {
      const stats = await api("/stats");
      if (token !== statsToken || state.tenantView) return;
      sampleClock(stats.now, sentAt, Date.now());
      state.stats = stats;
      renderStats();
    } catch (error) {
      if (needsOperator(error)) leaveOutOperatorPanels();
      /* anything else is shown by the connection badge */
    }
  }

  const queueCells = new Map(); // "HIGH:triggered" -> td
  function buildQueueTable() {
    const body = $("queue-body");
    const rows = [...PRIORITIES, "total"];
    for (const priority of rows) {
      const first =
        priority === "total"
          ? h("td", { text: "All" })
          : h("td", {}, h("span", { class: "prio", dataset: { priority }, text: priority }));
      const tr = h("tr", { class: priority === "total" ? "total" : null }, first);
      for (const status of QUEUE_COLUMNS) {
        const td = h("td", { class: "num zero", text: "0", dataset: { status } });
        if (status === "completed") td.classList.add("ended");
        queueCells.set(`${priority}:${status}`, td);
        tr.append(td);
      }
      if (priority === "total") {
        const foot = h("tfoot", {}, tr);
        body.parentElement.append(foot);
      } else {
        body.append(tr);
      }
    }
  }

  function waitingBatches(stats) {
    let n = 0;
    for (const p of PRIORITIES) {
      const q = stats.queue[p] || {};
      n += (q.yet_to_start || 0) + (q.retrying || 0);
    }
    return n;
  }

  function renderStats() {
    const stats = state.stats;
    if (!stats) return;
    const totals = {};
    for (const priority of PRIORITIES) {
      const counts = stats.queue[priority] || {};
      for (const status of QUEUE_COLUMNS) {
        const n = counts[status] || 0;
        totals[status] = (totals[status] || 0) + n;
        const td = queueCells.get(`${priority}:${status}`);
        setText(td, fmtInt(n));
        td.classList.toggle("zero", n === 0);
      }
    }
    for (const status of QUEUE_COLUMNS) {
      const td = queueCells.get(`total:${status}`);
      setText(td, fmtInt(totals[status]));
      td.classList.toggle("zero", totals[status] === 0);
    }
    setText($("fact-interval"), stats.interval_ms ? duration(stats.interval_ms) : "no limit");
    renderInFlight();
    setText($("fact-requests"), fmtInt(stats.ingestions));
    renderProcessing();
    tick();
  }

  /**
   * Batches processing out of those allowed: over every queue when the server
   * has several (/stats gives the default queue's limit only).
   */
  function renderInFlight() {
    const stats = state.stats;
    if (!stats) return;
    const limit = multipleQueues()
      ? state.queues.reduce((n, q) => n + (q.max_in_flight || 0), 0)
      : stats.max_in_flight;
    setText($("fact-inflight"), `${stats.processing.length} / ${limit}`);
  }

  /** Whether the server has queues besides `default`. */
  const multipleQueues = () => Array.isArray(state.queues) && state.queues.length > 1;

  /** The default queue as GET /queues answered it, if it did. */
  const defaultQueue = () =>
    (Array.isArray(state.queues) && state.queues.find((q) => q.name === "default")) || null;

  function renderProcessing() {
    const list = $("processing");
    const processing = (state.stats && state.stats.processing) || [];
    list.replaceChildren();
    if (processing.length === 0) {
      list.append(h("li", { class: "idle" }, "Nothing processing"));
      return;
    }
    for (const item of processing.slice(0, 3)) {
      const ingestion = String(item.batch_id).split(":")[0];
      const started = parseTime(item.started_at);
      list.append(
        h(
          "li",
          {},
          h("button", {
            type: "button",
            class: "batch-link",
            title: `Batch ${item.batch_id}`,
            "aria-label": `Show request ${ingestion}`,
            text: `${shortId(ingestion)} : batch ${positionOf(item.batch_id)}`,
            onclick: () => select(ingestion, true),
          }),
          h(
            "span",
            { class: "muted small running" },
            priorityOf(ingestion),
            h("span", { class: "elapsed", dataset: { started: String(started) } }),
          ),
        ),
      );
    }
    if (processing.length > 3) {
      list.append(h("li", { class: "muted small" }, `+ ${processing.length - 3} more`));
    }
    updateElapsed();
  }

  /** The priority badge of a listed request, if it is in the list. */
  function priorityOf(id) {
    const item = listed(id);
    return item ? h("span", { class: "prio", dataset: { priority: item.priority }, text: item.priority }) : null;
  }

  function updateElapsed() {
    for (const el of document.querySelectorAll("#processing .elapsed")) {
      const started = Number(el.dataset.started);
      setText(el, `running for ${duration(serverNow() - started)}`);
    }
  }

  /** The countdown to the next slot, ten times a second. */
  function tick() {
    const stats = state.stats;
    const countdown = $("countdown");
    const fill = $("slot-fill");
    const note = $("slot-note");
    tickQueues();
    if (!stats) return;
    updateElapsed();
    const now = serverNow();
    const lastStart = parseTime(stats.last_start);
    const lastEl = $("last-start");
    setText(lastEl, lastStart === null ? "never" : `${duration(now - lastStart)} ago`);
    lastEl.title = lastStart === null ? "" : fullTime(lastStart);
    const interval = stats.interval_ms;
    const next = parseTime(stats.next_slot);
    // The slot is the default queue's; with other queues beside it, so are
    // the batches that wait for it.
    const own = multipleQueues() ? defaultQueue() : null;
    const waiting = own ? own.waiting || 0 : waitingBatches(stats);
    const busy = own
      ? (own.processing || 0) >= (own.max_in_flight || 1)
      : stats.processing.length >= stats.max_in_flight;
    $("slot-queue").hidden = !own;
    if (own && own.paused) {
      setText(countdown, "Paused");
      fill.style.width = "0%";
      setText(note, waiting ? `${fmtInt(waiting)} batch${waiting === 1 ? "" : "es"} waiting` : "Nothing waiting");
      return;
    }
    let text;
    let fraction;
    let remark;
    if (!interval) {
      text = "Any time";
      fraction = 1;
      remark = "No rate limit";
    } else if (next !== null && next > now) {
      const left = next - now;
      text = left < 10000 ? `${(left / 1000).toFixed(1)} s` : duration(left);
      fraction = Math.min(1, Math.max(0, 1 - left / interval));
      remark = waiting
        ? `${fmtInt(waiting)} batch${waiting === 1 ? "" : "es"} waiting`
        : "Nothing waiting";
    } else {
      text = "Open";
      fraction = 1;
      if (!waiting) remark = "New work starts at once";
      else if (busy) remark = "Waiting for a batch to finish";
      else remark = "Starting the next batch…";
    }
    setText(countdown, text);
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    setText(note, remark);
  }

  // -------------------------------------------------------------- /queues

  /** Milliseconds in a humantime interval ("250ms", "1m 30s", "0"), or null. */
  function intervalMs(text) {
    if (text === null || text === undefined) return null;
    const value = String(text).trim();
    if (value === "0") return 0;
    const units = {
      ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1,
      s: 1000, sec: 1000, secs: 1000,
      m: 60000, min: 60000, mins: 60000,
      h: 3600000, hr: 3600000, hrs: 3600000,
      d: 86400000, days: 86400000,
    };
    const pattern = /(\d+(?:\.\d+)?)\s*([a-zµ]+)\s*/gy;
    let total = 0;
    let matched = 0;
    let part;
    while ((part = pattern.exec(value)) !== null) {
      const unit = units[part[2]];
      if (unit === undefined) return null;
      total += Number(part[1]) * unit;
      matched = pattern.lastIndex;
    }
    return matched === value.length && matched > 0 ? total : null;
  }

  /** An interval for people, in the page's style; the server's text if it is odd. */
  function intervalLabel(text) {
    const ms = intervalMs(text);
    if (ms === null) return text === null || text === undefined ? "—" : String(text);
    return ms === 0 ? "no limit" : duration(ms);
  }

  let queuesToken = 0;
  let queuesLoading = null;
  /**
   * Fetches the queues; a call while a fetch is under way joins it, unless
   * `force` (after a change, whose answer must not be overtaken by an older
   * read). Once the server has said it has no /queues, only `force` asks.
   */
  function loadQueues(force = false) {
    if (state.tenantView) return Promise.resolve();
    if (!force && (state.queuesMissing || queuesLoading)) return queuesLoading;
    const loading = fetchQueues().finally(() => {
      if (queuesLoading === loading) queuesLoading = null;
    });
    queuesLoading = loading;
    return loading;
  }

  async function fetchQueues() {
    const token = ++queuesToken;
    try {
      const body = await api("/queues");
      if (token !== queuesToken) return;
      if (!body || !Array.isArray(body.queues)) throw new ApiError(404, null, "no queue list");
      state.queues = body.queues;
      state.queuesMissing = false;
    } catch (error) {
      if (token !== queuesToken) return;
      if (needsOperator(error)) {
        leaveOutOperatorPanels();
        return;
      }
      // A server from before named queues: no panel at all. Other failures
      // keep what is shown; the connection badge tells of them.
      if (error.status !== 404 && error.status !== 405) return;
      state.queues = null;
      state.queuesMissing = true;
    }
    renderQueues();
  }

  const queueRows = new Map(); // queue name -> {tr, cells}

  function buildQueueRow(name) {
    const cells = {
      state: pill("running"),
      waiting: h("td", { class: "num", dataset: { field: "waiting" } }),
      processing: h("td", { class: "num", dataset: { field: "processing" } }),
      next: h("td", { class: "when", dataset: { field: "next-slot" } }),
      interval: h("td", { dataset: { field: "interval" } }),
      action: h("button", { type: "button", class: "ghost small-button queue-action" }),
    };
    cells.action.addEventListener("click", () => {
      const queue = (state.queues || []).find((q) => q.name === name);
      if (queue) togglePause(queue, cells.action);
    });
    const tr = h(
      "tr",
      { dataset: { queue: name } },
      h("th", { scope: "row", class: "queue-name", text: name, title: name }),
      h("td", {}, cells.state),
      cells.waiting,
      cells.processing,
      cells.next,
      cells.interval,
      h("td", { class: "num" }, cells.action),
    );
    return { tr, cells };
  }

  function updateQueueRow(row, queue) {
    const { cells } = row;
    setPill(cells.state, queue.paused ? "paused" : "running");
    setText(cells.waiting, fmtInt(queue.waiting));
    cells.waiting.classList.toggle("zero", !queue.waiting);
    const processing = queue.processing || 0;
    setText(cells.processing, queue.max_in_flight ? `${fmtInt(processing)} / ${fmtInt(queue.max_in_flight)}` : fmtInt(processing));
    cells.processing.classList.toggle("zero", processing === 0);

    // The effective interval, highlighted when the upstream has slowed the
    // queue down below its set rate.
    const set = intervalMs(queue.interval);
    const effective = intervalMs(queue.effective_interval);
    const slowed = set !== null && effective !== null && effective > set;
    cells.interval.classList.toggle("slowed", slowed);
    const shown = queue.effective_interval === undefined || queue.effective_interval === null
      ? queue.interval
      : queue.effective_interval;
    const parts = [h("span", { class: "effective", text: intervalLabel(shown) })];
    if (slowed) parts.push(h("span", { class: "muted small set", text: ` set ${intervalLabel(queue.interval)}` }));
    const signature = `${shown}|${slowed}|${queue.interval}`;
    if (cells.interval.dataset.signature !== signature) {
      cells.interval.dataset.signature = signature;
      cells.interval.replaceChildren(...parts);
    }
    cells.interval.title = slowed
      ? `Slowed down to ${intervalLabel(queue.effective_interval)} by the upstream's answers; its interval is ${intervalLabel(queue.interval)}`
      : `One batch start per ${intervalLabel(queue.interval)} at most`;

    const action = queue.paused ? "resume" : "pause";
    if (cells.action.dataset.action !== action && !cells.action.disabled) {
      cells.action.dataset.action = action;
      setText(cells.action, queue.paused ? "Resume" : "Pause");
      cells.action.setAttribute("aria-label", `${queue.paused ? "Resume" : "Pause"} queue ${queue.name}`);
    }
    row.tr.classList.toggle("paused", Boolean(queue.paused));
  }

  function renderQueues() {
    const queues = state.queues;
    const card = $("queues-card");
    const shown = Array.isArray(queues) && !state.tenantView;
    card.hidden = !shown;
    document.querySelector(".layout").classList.toggle("with-queues", shown);
    if (!shown) return;
    const body = $("queues-body");
    const seen = new Set();
    for (const queue of queues) {
      seen.add(queue.name);
      let row = queueRows.get(queue.name);
      if (!row) {
        row = buildQueueRow(queue.name);
        queueRows.set(queue.name, row);
      }
      updateQueueRow(row, queue);
      body.append(row.tr); // moves it into order
    }
    for (const [name, row] of queueRows) {
      if (!seen.has(name)) {
        row.tr.remove();
        queueRows.delete(name);
      }
    }
    renderQueueChoice();
    renderList(); // a queue column only once there are several
    const paused = queues.filter((q) => q.paused).length;
    setText(
      $("queues-summary"),
      `${queues.length} queue${queues.length === 1 ? "" : "s"}` + (paused ? ` · ${paused} paused` : ""),
    );
    tickQueues();
    renderInFlight();
  }

  /** The form's queue choice: shown only when there is a choice to make. */
  function renderQueueChoice() {
    const select = $("queue-input");
    const names = multipleQueues() ? state.queues.map((q) => q.name) : [];
    const current = [...select.options].map((o) => o.value);
    if (names.join("\n") !== current.join("\n")) {
      const chosen = select.value;
      select.replaceChildren(...names.map((name) => h("option", { value: name, text: name })));
      select.value = names.includes(chosen) ? chosen : "default";
    }
    for (const el of document.querySelectorAll(".queue-field")) el.hidden = names.length === 0;
  }

  /** Each queue's countdown to its next slot. */
  function tickQueues() {
    if (!state.queues) return;
    const now = serverNow();
    for (const queue of state.queues) {
      const row = queueRows.get(queue.name);
      if (!row) continue;
      const next = parseTime(queue.next_slot);
      let text;
      if (queue.paused) text = "paused";
      else if (next === null) text = queue.waiting ? "open" : "—";
      else if (next > now) {
        const left = next - now;
        text = left < 10000 ? `in ${(left / 1000).toFixed(1)} s` : `in ${duration(left)}`;
      } else text = "now";
      setText(row.cells.next, text);
      row.cells.next.title = next === null ? "" : fullTime(next);
    }
  }

  /** Pauses a running queue or resumes a paused one, and shows the answer. */
  async function togglePause(queue, button) {
    const action = queue.paused ? "resume" : "pause";
    button.disabled = true;
    setText(button, queue.paused ? "Resuming…" : "Pausing…");
    try {
      const answer = await api(`/queues/${encodeURIComponent(queue.name)}/${action}`, { method: "POST" });
      if (answer && answer.name && state.queues) {
        state.queues = state.queues.map((q) => (q.name === answer.name ? answer : q));
      }
    } catch (error) {
      toast(`Could not ${action} ${queue.name}: ${error.message}`);
    }
    button.disabled = false;
    delete button.dataset.action; // relabelled from the queue's state below
    renderQueues();
    loadQueues(true);
  }

  // ------------------------------------------------------- recent requests

  let listToken = 0;
  async function loadList() {
    const token = ++listToken;
    try {
      const body = await api(`/ingestions?limit=${RECENT_LIMIT}`);
      if (token !== listToken) return;
      state.ingestions = body.ingestions;
      state.listLoaded = true;
      renderList();
    } catch (error) {
      /* shown by the connection badge */
    }
  }

  const rows = new Map(); // ingestion id -> {tr, cells}

  function buildRow(item) {
    const id = item.ingestion_id;
    const cells = {
      status: pill(item.status),
      idButton: h("button", {
        type: "button",
        class: "req-id",
        title: id,
        "aria-label": `Request ${id}`,
        text: shortId(id),
      }),
      priority: h("span", { class: "prio" }),
      queue: h("span", { class: "queue-tag", title: "Queue" }),
      ids: h("td", { class: "num" }),
      bar: h("div", { class: "bar", "aria-hidden": "true" }),
      barLabel: h("span", { class: "label" }),
      created: h("td", { class: "when" }),
      took: h("td", { class: "when" }),
      action: h("td", { class: "num" }),
    };
    for (const kind of ["completed", "failed", "cancelled", "triggered"]) {
      cells.bar.append(h("span", { class: `b-${kind}` }));
    }
    const tr = h(
      "tr",
      { dataset: { id } },
      h("td", {}, cells.status),
      h("td", {}, cells.idButton),
      h("td", {}, cells.priority, cells.queue),
      cells.ids,
      h("td", {}, h("div", { class: "progress" }, cells.bar, cells.barLabel)),
      cells.created,
      cells.took,
      cells.action,
    );
    tr.addEventListener("click", (event) => {
      if (event.target.closest("button.cancel")) return;
      select(id, event.target.closest("button") !== null);
    });
    return { tr, cells, cancel: null };
  }

  function updateRow(row, item) {
    const { cells } = row;
    const counts = item.batch_counts;
    setPill(cells.status, item.status);
    setPriority(cells.priority, item.priority);
    setText(cells.queue, multipleQueues() && item.queue ? item.queue : "");
    setText(cells.ids, fmtInt(item.ids));
    const total = counts.total || 1;
    const spans = cells.bar.children;
    ["completed", "failed", "cancelled", "triggered"].forEach((kind, i) => {
      spans[i].style.width = `${((counts[kind] || 0) / total) * 100}%`;
    });
    const ended = counts.completed + counts.failed + counts.cancelled;
    setText(cells.barLabel, `${fmtInt(ended)} / ${fmtInt(counts.total)}`);
    cells.bar.parentElement.title =
      `${counts.completed} completed, ${counts.failed} failed, ${counts.cancelled} cancelled, ` +
      `${counts.triggered} processing, ${counts.yet_to_start} waiting`;
    const created = parseTime(item.created_at);
    cells.created.dataset.at = String(created);
    cells.created.title = fullTime(created);
    setText(cells.created, ago(created));
    const completed = parseTime(item.completed_at);
    setText(cells.took, completed !== null ? duration(completed - created) : "—");
    if (ACTIVE.has(item.status)) {
      if (!row.cancel) {
        row.cancel = cancelButton(item.ingestion_id, "Cancel", "cancel danger small-button");
        cells.action.replaceChildren(row.cancel);
      }
    } else if (row.cancel) {
      row.cancel = null;
      cells.action.replaceChildren();
    }
    const selected = state.selected === item.ingestion_id;
    row.tr.classList.toggle("selected", selected);
    if (selected) cells.idButton.setAttribute("aria-current", "true");
    else cells.idButton.removeAttribute("aria-current");
  }

  function renderList() {
    const body = $("requests-body");
    const seen = new Set();
    for (const item of state.ingestions) {
      seen.add(item.ingestion_id);
      let row = rows.get(item.ingestion_id);
      if (!row) {
        row = buildRow(item);
        rows.set(item.ingestion_id, row);
      }
      updateRow(row, item);
      body.append(row.tr); // moves it into order
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    $("requests-empty").hidden = !state.listLoaded || state.ingestions.length > 0;
  }

  function updateRelativeTimes() {
    for (const td of document.querySelectorAll("#requests-body td.when[data-at]")) {
      setText(td, ago(Number(td.dataset.at)));
    }
  }

  // --------------------------------------------------------------- cancel

  /** A cancel button that asks once more before it cancels. */
  function cancelButton(id, label, className) {
    const button = h("button", {
      type: "button",
      class: className,
      "aria-label": `Cancel request ${id}`,
      text: label,
    });
    armCancel(button, () => id, label);
    return button;
  }

  /** Confirm-then-cancel on `button`, for the request `idOf()` names at click time. */
  function armCancel(button, idOf, label) {
    let armed = null;
    const disarm = () => {
      clearTimeout(armed);
      armed = null;
      button.classList.remove("confirm");
      setText(button, label);
    };
    button.addEventListener("click", async (event) => {
      event.stopPropagation();
      const id = idOf();
      if (!id) return;
      if (!armed) {
        button.classList.add("confirm");
        setText(button, "Confirm?");
        armed = setTimeout(disarm, 4000);
        return;
      }
      disarm();
      button.disabled = true;
      setText(button, "Cancelling…");
      try {
        await api(`/ingestions/${encodeURIComponent(id)}`, { method: "DELETE" });
      } catch (error) {
        toast(`Could not cancel: ${error.message}`);
      }
      button.disabled = false;
      setText(button, label);
      refreshNow();
    });
  }

  let toastTimer = null;
  function toast(message) {
    let el = $("toast");
    if (!el) {
      el = h("div", { id: "toast", class: "toast", role: "alert" });
      document.body.append(el);
    }
    setText(el, message);
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      el.hidden = true;
    }, 6000);
  }

  // ---------------------------------------------------------------- detail

  function select(id, focus = false) {
    if (!id) return;
    if (state.selected !== id) {
      state.selected = id;
      state.detail = null;
      state.detailMissing = false;
      state.batchRows = BATCH_ROWS;
      state.scrollToActive = true;
      state.results = { id, rows: [], cursor: null, pages: 0, loading: false };
      $("batches-body").replaceChildren();
      $("results-body").replaceChildren();
      if (location.hash.slice(1) !== id) history.replaceState(null, "", `#${id}`);
    }
    $("detail").hidden = false;
    if (focus) $("detail-title").focus();
    setText($("detail-id"), id);
    $("detail-id").title = id;
    renderList();
    loadDetail();
    loadResults(false);
  }

  function closeDetail() {
    if (!state.selected) return;
    state.detail = null;
    const row = rows.get(state.selected);
    state.selected = null;
    $("detail").hidden = true;
    history.replaceState(null, "", location.pathname);
    renderList();
    if (row && document.activeElement === document.body) row.cells.idButton.focus();
  }

  function listed(id) {
    return state.ingestions.find((item) => item.ingestion_id === id);
  }

  let detailToken = 0;
  async function loadDetail() {
    const id = state.selected;
    if (!id) return;
    const token = ++detailToken;
    const item = listed(id);
    if (item && item.batch_counts.total > MAX_BATCHES_TO_LIST) {
      // Too many batches to fetch them all: the list's summary says enough.
      state.detail = { ...item, batches: null };
      renderDetail();
      return;
    }
    try {
      const detail = await api(`/status/${encodeURIComponent(id)}`);
      if (token !== detailToken || state.selected !== id) return;
      state.detail = detail;
      state.detailMissing = false;
    } catch (error) {
      if (token !== detailToken || state.selected !== id) return;
      if (error.status === 404) state.detailMissing = true;
      else return;
    }
    renderDetail();
  }

  function fact(label, value, title) {
    return h("div", {}, h("dt", { text: label }), h("dd", { text: value, title }));
  }

  function renderDetail() {
    const detail = state.detail;
    const facts = $("detail-facts");
    if (state.detailMissing) {
      setPill($("detail-status"), "failed", "not found");
      setText($("detail-priority"), "");
      facts.replaceChildren(fact("Request", "No such request on this server"));
      $("detail-cancel").hidden = true;
      return;
    }
    if (!detail) return;
    setPill($("detail-status"), detail.status);
    setPriority($("detail-priority"), detail.priority);
    setText($("detail-queue"), multipleQueues() && detail.queue ? detail.queue : "");
    $("detail-cancel").hidden = !ACTIVE.has(detail.status);

    const counts = detail.batch_counts;
    const created = parseTime(detail.created_at);
    const completed = parseTime(detail.completed_at);
    const idCount = detail.batches
      ? detail.batches.reduce((n, b) => n + b.ids.length, 0)
      : detail.ids;
    const retries = detail.batches
      ? detail.batches.reduce((n, b) => n + Math.max(0, b.attempts - 1), 0)
      : null;
    const ended = counts.completed + counts.failed + counts.cancelled;
    const breakdown = [
      counts.completed && `${fmtInt(counts.completed)} completed`,
      counts.failed && `${fmtInt(counts.failed)} failed`,
      counts.cancelled && `${fmtInt(counts.cancelled)} cancelled`,
      counts.triggered && `${fmtInt(counts.triggered)} processing`,
      counts.yet_to_start && `${fmtInt(counts.yet_to_start)} waiting`,
    ].filter(Boolean);
    const last = detail.callback
      ? fact("Callback", `${detail.callback.state} (${detail.callback.attempts} tries)`, detail.callback.url)
      : fact("Batch retries", retries === null ? "—" : fmtInt(retries), "Starts beyond the first: retries and crash recoveries");
    facts.replaceChildren(
      fact("Created", clockTime(created), fullTime(created)),
      fact("Finished", completed !== null ? clockTime(completed) : "—", fullTime(completed)),
      fact("Took", completed !== null ? duration(completed - created) : "—"),
      fact("Ids", fmtInt(idCount)),
      fact("Batches ended", `${fmtInt(ended)} of ${fmtInt(counts.total)}`, breakdown.join(", ")),
      last,
    );
    setText($("batches-count"), fmtInt(counts.total));
    renderBatches();
  }

  /** Once per request opened: its first unfinished batch, scrolled into view. */
  function scrollToActiveBatch() {
    const detail = state.detail;
    const panel = $("panel-batches");
    if (!state.scrollToActive || panel.hidden || !detail || !detail.batches) return;
    state.scrollToActive = false;
    const active = detail.batches.findIndex((b) => ACTIVE.has(b.status));
    const row = $("batches-body").children[active - 2];
    if (active > 3 && row) row.scrollIntoView({ block: "start" });
  }

  function renderBatches() {
    const detail = state.detail;
    const body = $("batches-body");
    const note = $("batches-note");
    const more = $("batches-more");
    if (!detail.batches) {
      body.replaceChildren();
      note.hidden = false;
      setText(note, `${fmtInt(detail.batch_counts.total)} batches: too many to list here. ` +
        "Use `sluice status` or the results below.");
      more.hidden = true;
      return;
    }
    const shown = detail.batches.slice(0, state.batchRows);
    while (body.children.length > shown.length) body.lastElementChild.remove();
    shown.forEach((batch, i) => {
      let tr = body.children[i];
      if (!tr) {
        tr = h(
          "tr",
          {},
          h("td", { class: "num" }),
          h("td", { class: "ids" }),
          h("td", {}, pill("yet_to_start")),
          h("td", { class: "num" }),
          h("td", { class: "when" }),
          h("td", { class: "when" }),
        );
        body.append(tr);
      }
      const [pos, ids, status, attempts, started, took] = tr.children;
      tr.dataset.batch = batch.batch_id;
      setText(pos, positionOf(batch.batch_id));
      const idText = batch.ids.length > 40
        ? `${batch.ids.slice(0, 40).join(", ")}, … (${batch.ids.length} ids)`
        : batch.ids.join(", ");
      setText(ids, idText);
      ids.title = idText;
      const waitingRetry = batch.status === "triggered" && batch.next_attempt_at;
      setPill(status.firstChild, waitingRetry ? "retrying" : batch.status);
      status.title = waitingRetry ? `next attempt at ${fullTime(parseTime(batch.next_attempt_at))}` : "";
      setText(attempts, batch.attempts);
      const startedAt = parseTime(batch.started_at);
      const completedAt = parseTime(batch.completed_at);
      setText(started, startedAt !== null ? clockTime(startedAt, true) : "—");
      started.title = batch.scheduled_at ? `slot ${fullTime(parseTime(batch.scheduled_at))}` : "";
      setText(took, startedAt !== null && completedAt !== null ? duration(completedAt - startedAt) : "—");
    });
    scrollToActiveBatch();
    const hiddenCount = detail.batches.length - shown.length;
    more.hidden = hiddenCount <= 0;
    note.hidden = true;
    if (hiddenCount > 0) setText(more, `Show more batches (${fmtInt(hiddenCount)} not shown)`);
  }

  // --------------------------------------------------------------- results

  const OUTCOME_STYLE = {
    ok: "completed",
    error: "failed",
    retrying: "retrying",
    pending: "yet_to_start",
    cancelled: "cancelled",
  };

  /**
   * Loads results: the next page (`more`), or again every page loaded so
   * far in one request (a refresh while the request progresses).
   */
  async function loadResults(more) {
    const results = state.results;
    const id = results.id;
    if (!id || results.loading) return;
    results.loading = true;
    const button = $("results-more");
    button.disabled = true;
    try {
      let url;
      if (more) {
        url = `/ingestions/${encodeURIComponent(id)}/results?limit=${RESULTS_PAGE}` +
          (results.cursor ? `&cursor=${encodeURIComponent(results.cursor)}` : "");
      } else {
        const limit = Math.min(10000, RESULTS_PAGE * Math.max(1, results.pages));
        url = `/ingestions/${encodeURIComponent(id)}/results?limit=${limit}`;
      }
      const page = await api(url);
      if (state.results !== results) return;
      if (more) {
        results.rows = results.rows.concat(page.results);
        results.pages += 1;
      } else {
        results.rows = page.results;
        results.pages = Math.max(1, results.pages);
      }
      results.cursor = page.next_cursor;
      renderResults();
    } catch (error) {
      if (state.results === results && error.status !== 404) {
        const note = $("results-note");
        note.hidden = false;
        setText(note, `Could not load results: ${error.message}`);
      }
    } finally {
      results.loading = false;
      button.disabled = false;
    }
  }

  function describe(row) {
    if (row.error) {
      const e = row.error;
      return [e.kind, e.status, e.message].filter((x) => x !== undefined && x !== null && x !== "").join(" · ");
    }
    if (row.data !== undefined) return typeof row.data === "string" ? row.data : JSON.stringify(row.data);
    return "";
  }

  function renderResults() {
    const results = state.results;
    const body = $("results-body");
    while (body.children.length > results.rows.length) body.lastElementChild.remove();
    results.rows.forEach((row, i) => {
      let tr = body.children[i];
      if (!tr) {
        tr = h(
          "tr",
          {},
          h("td", { class: "num" }),
          h("td", {}, pill("pending")),
          h("td", { class: "data" }),
          h("td", { class: "when" }),
        );
        body.append(tr);
      }
      const [idCell, outcome, data, at] = tr.children;
      tr.dataset.outcome = row.outcome;
      setText(idCell, row.id);
      setPill(outcome.firstChild, OUTCOME_STYLE[row.outcome] || "yet_to_start", statusLabel(row.outcome));
      const text = describe(row);
      setText(data, text || "—");
      data.title = text.length > 400 ? `${text.slice(0, 400)}…` : text;
      data.classList.toggle("err", Boolean(row.error));
      const when = parseTime(row.at);
      setText(at, when !== null ? clockTime(when, true) : "—");
    });
    setText($("results-count"), results.cursor ? `${fmtInt(results.rows.length)}+` : fmtInt(results.rows.length));
    const more = $("results-more");
    more.hidden = !results.cursor;
    const note = $("results-note");
    note.hidden = results.rows.length > 0;
    if (!results.rows.length) setText(note, "No results yet.");
  }

  function selectTab(which) {
    const batches = which === "batches";
    const tabB = $("tab-batches");
    const tabR = $("tab-results");
    tabB.setAttribute("aria-selected", String(batches));
    tabR.setAttribute("aria-selected", String(!batches));
    tabB.tabIndex = batches ? 0 : -1;
    tabR.tabIndex = batches ? -1 : 0;
    $("panel-batches").hidden = !batches;
    $("panel-results").hidden = batches;
    scrollToActiveBatch();
  }

  // ------------------------------------------------------------------ form

  /** Ids as the CLI takes them: numbers and ranges, split by commas, spaces or lines. */
  function parseIds(text) {
    const tokens = text.split(/[\s,]+/).filter(Boolean);
    if (tokens.length === 0) return { error: "Enter at least one id." };
    const runs = [];
    let count = 0;
    for (const token of tokens) {
      const match = /^(\d+)(?:-(\d+))?$/.exec(token);
      if (!match) return { error: `“${token}” is neither a whole number nor a range like 1-100.` };
      const first = Number(match[1]);
      const last = match[2] === undefined ? first : Number(match[2]);
      if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last)) {
        return { error: `“${token}” is too large.` };
      }
      if (first > last) return { error: `The range ${token} is reversed: write ${last}-${first}.` };
      count += last - first + 1;
      if (count > MAX_FORM_IDS) {
        return { error: `More than ${fmtInt(MAX_FORM_IDS)} ids: use the sluice CLI for requests this large.` };
      }
      runs.push([first, last]);
    }
    return { runs, count };
  }

  function expand(runs, count) {
    const ids = new Array(count);
    let i = 0;
    for (const [first, last] of runs) for (let id = first; id <= last; id++) ids[i++] = id;
    return ids;
  }

  function updateIdsCount() {
    const input = $("ids-input");
    const out = $("ids-count");
    if (!input.value.trim()) {
      setText(out, "");
      input.removeAttribute("aria-invalid");
      return;
    }
    const parsed = parseIds(input.value);
    if (parsed.error) {
      setText(out, "");
      input.setAttribute("aria-invalid", "true");
    } else {
      setText(out, `${fmtInt(parsed.count)} id${parsed.count === 1 ? "" : "s"}`);
      input.removeAttribute("aria-invalid");
    }
  }

  function showProblem(title, fieldErrors) {
    const box = h("div", { class: "problem" }, h("strong", { text: title }));
    if (fieldErrors && fieldErrors.length) {
      const list = h("ul", {});
      for (const e of fieldErrors) {
        list.append(h("li", {}, h("code", { text: e.field }), `: ${e.message}`));
      }
      box.append(list);
    }
    $("form-message").replaceChildren(box);
  }

  async function submit(event) {
    event.preventDefault();
    const input = $("ids-input");
    const priority = $("priority-input").value;
    const queueInput = $("queue-input");
    const queue = queueInput.hidden ? null : queueInput.value;
    const parsed = parseIds(input.value);
    if (parsed.error) {
      input.setAttribute("aria-invalid", "true");
      showProblem(parsed.error);
      input.focus();
      return;
    }
    const button = $("submit-button");
    button.disabled = true;
    setText(button, "Submitting…");
    $("form-message").replaceChildren();
    try {
      const request = { ids: expand(parsed.runs, parsed.count), priority };
      if (queue) request.queue = queue;
      const body = JSON.stringify(request);
      const answer = await api("/ingest", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body,
      });
      const id = answer.ingestion_id;
      $("form-message").replaceChildren(
        h(
          "p",
          { class: "ok" },
          `Submitted ${fmtInt(parsed.count)} id${parsed.count === 1 ? "" : "s"} as `,
          h("button", {
            type: "button",
            text: shortId(id),
            title: id,
            "aria-label": `Show request ${id}`,
            onclick: () => select(id, true),
          }),
          ".",
        ),
      );
      input.value = "";
      updateIdsCount();
      await loadList();
      loadStats();
      const row = rows.get(id);
      if (row) {
        row.tr.classList.add("flash");
        setTimeout(() => row.tr.classList.remove("flash"), 2500);
      }
    } catch (error) {
      const problem = error.problem;
      if (problem && (problem.detail || problem.title)) {
        showProblem(problem.detail || problem.title, problem.errors);
      } else {
        showProblem(`Not submitted: ${error.message}`);
      }
    } finally {
      button.disabled = false;
      setText(button, "Submit");
    }
  }

  // ----------------------------------------------------------- throughput

  const chart = { canvas: null, ctx: null, width: 0, height: 0, queued: false };

  function bucketMs() {
    const interval = (state.stats && state.stats.interval_ms) || 1000;
    return Math.max(1000, interval);
  }

  function recordEnd(at, failed) {
    state.completions.push({ at, failed });
    // Pruned now and then, not at every event.
    const horizon = serverNow() - bucketMs() * (CHART_BUCKETS + 2);
    const stale = state.completions[0].at < horizon - bucketMs() * 10;
    if (stale || state.completions.length > 50000) {
      state.completions = state.completions.filter((c) => c.at >= horizon);
    }
    requestDraw();
  }

  function requestDraw() {
    if (chart.queued) return;
    chart.queued = true;
    requestAnimationFrame(() => {
      chart.queued = false;
      drawChart();
    });
  }

  function resizeChart() {
    const rect = chart.canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    chart.width = rect.width;
    chart.height = rect.height;
    chart.canvas.width = Math.round(rect.width * ratio);
    chart.canvas.height = Math.round(rect.height * ratio);
    chart.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    drawChart();
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function niceMax(n) {
    if (n <= 2) return 2;
    const magnitude = 10 ** Math.floor(Math.log10(n));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (n <= step * magnitude) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function windowLabel(ms) {
    return ms % 60000 === 0 ? `${ms / 60000} min` : duration(ms);
  }

  function drawChart() {
    const { ctx, width, height } = chart;
    if (!ctx || width === 0) return;
    const size = bucketMs();
    const now = serverNow();
    const current = Math.floor(now / size);
    const firstBucket = current - CHART_BUCKETS + 1;
    const done = new Array(CHART_BUCKETS).fill(0);
    const failed = new Array(CHART_BUCKETS).fill(0);
    for (const c of state.completions) {
      const i = Math.floor(c.at / size) - firstBucket;
      if (i < 0 || i >= CHART_BUCKETS) continue;
      if (c.failed) failed[i] += 1;
      else done[i] += 1;
    }
    const peak = Math.max(0, ...done.map((d, i) => d + failed[i]));
    const top = niceMax(peak);

    const left = 34;
    const right = 6;
    const topPad = 8;
    const bottom = 20;
    const plotW = width - left - right;
    const plotH = height - topPad - bottom;
    const muted = cssVar("--muted");
    const grid = cssVar("--border");
    ctx.clearRect(0, 0, width, height);
    ctx.font = `11px ${cssVar("--font")}`;

    // Grid lines and the y axis.
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of [0, top / 2, top]) {
      const y = Math.round(topPad + plotH - (v / top) * plotH) + 0.5;
      ctx.strokeStyle = grid;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(width - right, y);
      ctx.stroke();
      ctx.fillStyle = muted;
      ctx.fillText(Number.isInteger(v) ? String(v) : v.toFixed(1), left - 6, y);
    }

    // Bars: completed, with failed stacked on top.
    const slot = plotW / CHART_BUCKETS;
    const barW = Math.max(1, slot - Math.min(3, slot * 0.25));
    const green = cssVar("--c-completed");
    const red = cssVar("--c-failed");
    for (let i = 0; i < CHART_BUCKETS; i++) {
      const x = left + i * slot + (slot - barW) / 2;
      const hDone = (done[i] / top) * plotH;
      const hFail = (failed[i] / top) * plotH;
      const base = topPad + plotH;
      if (hDone > 0) {
        ctx.fillStyle = green;
        ctx.fillRect(x, base - hDone, barW, hDone);
      }
      if (hFail > 0) {
        ctx.fillStyle = red;
        ctx.fillRect(x, base - hDone - hFail, barW, hFail);
      }
    }

    // Time labels along the bottom.
    ctx.fillStyle = muted;
    ctx.textBaseline = "alphabetic";
    const span = size * CHART_BUCKETS;
    for (let k = 0; k <= 4; k++) {
      const x = left + (plotW * k) / 4;
      const ago = span - (span * k) / 4;
      ctx.textAlign = k === 0 ? "left" : k === 4 ? "right" : "center";
      ctx.fillText(k === 4 ? "now" : `−${windowLabel(ago)}`, x, height - 4);
    }

    const total = done.reduce((a, b) => a + b, 0) + failed.reduce((a, b) => a + b, 0);
    const watched = Math.min(span, now - (state.watchingSince + clockOffset));
    if (total === 0) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillStyle = muted;
      ctx.fillText("No batch has ended since this page opened", left + plotW / 2, topPad + plotH / 2);
    }
    const failedTotal = failed.reduce((a, b) => a + b, 0);
    const perMinute = watched > 5000 ? (total / watched) * 60000 : null;
    const summary = [
      `batches per ${duration(size)}, last ${windowLabel(span)}`,
      perMinute !== null && `${perMinute < 10 ? perMinute.toFixed(1) : Math.round(perMinute)}/min`,
      failedTotal > 0 && `${fmtInt(failedTotal)} failed`,
    ].filter(Boolean).join(" · ");
    setText($("throughput-summary"), summary);
    chart.canvas.setAttribute(
      "aria-label",
      `Throughput: ${fmtInt(total)} batches ended in the last ${windowLabel(span)}` +
        (failedTotal ? `, ${fmtInt(failedTotal)} of them failed` : ""),
    );
  }

  // ---------------------------------------------------------- live updates

  const refreshStats = throttle(loadStats, 300);
  const refreshQueues = throttle(() => loadQueues(), 500);
  const refreshList = throttle(loadList, 500);
  const refreshDetail = throttle(() => {
    loadDetail();
    if (state.results.pages <= 1 || !state.results.cursor) loadResults(false);
  }, 500);

  function refreshNow() {
    loadStats();
    loadQueues();
    loadList();
    if (state.selected) {
      loadDetail();
      loadResults(false);
    }
  }

  function fresh(event) {
    const seq = Number(event.lastEventId);
    if (Number.isFinite(seq) && seq > 0) {
      if (seq <= state.lastEventId) return false;
      state.lastEventId = seq;
    }
    return true;
  }

  const ACTIVITY_MAX = 60;
  function logActivity(data, what) {
    const list = $("activity");
    const at = parseTime(data.at);
    const id = data.ingestion_id;
    list.prepend(
      h(
        "li",
        {},
        h("span", { class: "when", text: clockTime(at, true), title: fullTime(at) }),
        h("button", {
          type: "button",
          class: "link",
          text: shortId(id),
          title: id,
          "aria-label": `Show request ${id}`,
          onclick: () => select(id, true),
        }),
        h("span", { class: "what", text: what }),
        pill(data.status),
      ),
    );
    while (list.children.length > ACTIVITY_MAX) list.lastElementChild.remove();
    $("activity-empty").hidden = true;
  }

  function onBatch(event) {
    if (!fresh(event)) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (data.status === "completed" || data.status === "failed") {
      const at = parseTime(data.at);
      recordEnd(at === null ? serverNow() : at, data.status === "failed");
    }
    logActivity(data, `batch ${positionOf(data.batch_id)}`);
    refreshStats();
    refreshQueues();
    refreshList();
    if (data.ingestion_id === state.selected) refreshDetail();
  }

  function onIngestion(event) {
    if (!fresh(event)) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    logActivity(data, "request");
    refreshStats();
    refreshQueues();
    refreshList();
    if (data.ingestion_id === state.selected) refreshDetail();
  }

  function streamOpened() {
    // Sequence numbers belong to the server's store: start afresh with it.
    state.lastEventId = 0;
    // A server that came back may be a newer one, with queues.
    if (state.sseOpened) state.queuesMissing = false;
    state.sseOpened = true;
    setSse("live");
    // Whatever changed while we were not listening.
    refreshNow();
  }

  /**
   * The event stream with the key, read with fetch: what EventSource does,
   * with an Authorization header. Resumes after the last event it read.
   */
  let streamedId = null;
  async function connectWithKey() {
    let response;
    try {
      const headers = withKey({ Accept: "text/event-stream" });
      if (streamedId !== null) headers["Last-Event-ID"] = streamedId;
      response = await fetch("/events", { cache: "no-store", headers });
    } catch {
      setSse("reconnecting");
      setTimeout(connectWithKey, 3000);
      return;
    }
    if (!response.ok || !response.body) {
      if (response.status === 401) askForKey();
      setSse("polling");
      setTimeout(connectWithKey, 10000);
      return;
    }
    streamOpened();
    const handlers = { batch: onBatch, ingestion: onIngestion };
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = { type: "message", data: "", lastEventId: "" };
          for (const line of block.split("\n")) {
            const colon = line.indexOf(":");
            if (colon === 0) continue; // a comment: the keep-alive
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event.type = value;
            else if (field === "data") event.data += (event.data ? "\n" : "") + value;
            else if (field === "id") event.lastEventId = value;
          }
          if (event.lastEventId) streamedId = event.lastEventId;
          const handler = handlers[event.type];
          if (handler && event.data) handler(event);
        }
      }
    } catch {
      /* the connection broke: reconnect below */
    }
    setSse("reconnecting");
    setTimeout(connectWithKey, 1000);
  }

  let source = null;
  function connect() {
    if (apiKey()) {
      connectWithKey();
      return;
    }
    if (!window.EventSource) {
      setSse("polling");
      return;
    }
    source = new EventSource("/events");
    source.addEventListener("open", streamOpened);
    source.addEventListener("batch", onBatch);
    source.addEventListener("ingestion", onIngestion);
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error answer, a 401 among them): start over
        // in a while, with a key if one was given meanwhile.
        source.close();
        setSse("polling");
        setTimeout(connect, 10000);
      } else {
        // The browser reconnects by itself, with Last-Event-ID.
        setSse("reconnecting");
      }
    });
  }

  function markReachable(ok) {
    if (state.reachable === ok) return;
    state.reachable = ok;
    renderConnection();
  }

  function setSse(value) {
    if (state.sse === value) return;
    state.sse = value;
    renderConnection();
    schedulePoll();
  }

  function renderConnection() {
    let key = state.sse;
    if (!state.reachable) key = "offline";
    const labels = {
      connecting: "Connecting…",
      live: "Live",
      reconnecting: "Reconnecting…",
      polling: "Polling",
      offline: "Offline",
    };
    const el = $("connection");
    el.dataset.state = key;
    setText($("connection-text"), labels[key] || key);
    el.title = key === "live"
      ? "Updates arrive as they happen (Server-Sent Events)"
      : "The event stream is down: the page refreshes every few seconds";
  }

  let pollTimer = null;
  function schedulePoll() {
    clearTimeout(pollTimer);
    const every = state.sse === "live" ? POLL_WHEN_LIVE_MS : POLL_WHEN_DOWN_MS;
    pollTimer = setTimeout(() => {
      refreshNow();
      schedulePoll();
    }, every);
  }

  // ------------------------------------------------------------------ start

  function start() {
    buildQueueTable();
    chart.canvas = $("chart");
    chart.ctx = chart.canvas.getContext("2d");
    new ResizeObserver(resizeChart).observe(chart.canvas);

    $("submit-form").addEventListener("submit", submit);
    $("key-form").addEventListener("submit", useKey);
    $("ids-input").addEventListener("input", updateIdsCount);
    $("ids-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("submit-form").requestSubmit();
    });
    $("detail-close").addEventListener("click", closeDetail);
    $("results-more").addEventListener("click", () => loadResults(true));
    $("batches-more").addEventListener("click", () => {
      state.batchRows += BATCH_ROWS;
      renderBatches();
    });
    $("tab-batches").addEventListener("click", () => selectTab("batches"));
    $("tab-results").addEventListener("click", () => selectTab("results"));
    for (const tab of [$("tab-batches"), $("tab-results")]) {
      tab.addEventListener("keydown", (event) => {
        if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
          const next = tab.id === "tab-batches" ? "results" : "batches";
          selectTab(next);
          $(`tab-${next}`).focus();
        }
      });
    }
    armCancel($("detail-cancel"), () => state.selected, "Cancel request");
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.selected && !event.target.closest("form")) closeDetail();
    });

    setInterval(tick, 100);
    setInterval(() => {
      updateRelativeTimes();
      requestDraw();
    }, 1000);

    renderConnection();
    loadStats();
    loadQueues();
    loadList().then(() => {
      const wanted = location.hash.slice(1);
      if (/^[0-9a-f-]{36}$/i.test(wanted)) select(wanted);
    });
    connect();
    schedulePoll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
