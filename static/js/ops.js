// The queue dashboard (templates/_queue_dashboard.html), on the staff ops page and on the
// lesson page: polls the stats (GET /api/stats, or /api/lesson/stats for the lesson's visitors)
// once a second and draws the fan-out queue; staff also get the levers.
//
// One request at a time: the next poll is scheduled only when the last one has finished.
// When the stats cannot be read, the page says so, keeps the last numbers (marked stale),
// and tries again with exponential backoff. Text is only ever set with textContent.

import { api } from "./api.js";
import { LineChart } from "./charts.js";

const POLL_MS = 1000;
const MAX_BACKOFF_MS = 30_000;
const REQUEST_TIMEOUT_MS = 5000;
const HISTORY_SECONDS = 120;

const root = document.getElementById("ops");
const STATS_URL = root.dataset.statsUrl || "/api/stats";
const pageCap = Number(root.dataset.cap);
const locale = document.documentElement.lang || undefined;

// -- formatting ------------------------------------------------------------------------------

const wholeFormat = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });
const formats = [0, 1, 2].map((digits) => new Intl.NumberFormat(locale, { maximumFractionDigits: digits }));

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

function whole(v) {
  return isNumber(v) ? wholeFormat.format(v) : "–";
}

/** A number with as many decimals as its size deserves: 0.25, 3.2, 140. */
function decimal(v) {
  if (!isNumber(v)) return "–";
  const size = Math.abs(v);
  return formats[size === 0 || size >= 100 ? 0 : size >= 10 ? 1 : 2].format(v);
}

const perSecond = (v) => (isNumber(v) ? `${decimal(v)} /s` : "–");
// Under a second in milliseconds: a wait of 4 ms is not "0 s".
const seconds = (v) => (!isNumber(v) ? "–" : Math.abs(v) < 1 ? `${whole(v * 1000)} ms` : `${decimal(v)} s`);

// -- the page's parts ------------------------------------------------------------------------

const $ = (selector) => root.querySelector(selector);
const stat = (name) => root.querySelector(`[data-stat="${name}"]`);
const banner = $("#ops-banner");
const status = $("#ops-status");
const statusText = $("#ops-status-text");
const updated = $("#ops-updated");
const retryButton = $("#ops-retry");
const capNote = $("#ops-cap-note");

const charts = {
  depth: new LineChart($("#chart-depth .chart-plot"), {
    title: "Queue depth against the cap",
    description: "Fan-out jobs waiting in the queue each second over the last two minutes, " +
      "with the cap as a dashed line.",
    yLabel: "jobs waiting",
    integer: true,
    format: whole,
    series: [{ key: "depth", label: "depth (jobs waiting)", className: "series-depth", area: true }],
    legendExtra: [{ key: "cap", label: "cap", className: "chart-ref series-cap" }],
    empty: "No depth samples yet",
  }),
  rates: new LineChart($("#chart-rates .chart-plot"), {
    title: "Arrival rate and drain rate",
    description: "Tweets admitted to the queue (lambda) and jobs leaving it for a worker (mu), per second.",
    yLabel: "per second",
    format: decimal,
    minTop: 1,
    series: [
      { key: "arrivals", label: "λ arrivals (admitted /s)", className: "series-arrivals" },
      { key: "drain", label: "μ drain (jobs started /s)", className: "series-drain" },
    ],
  }),
  wait: new LineChart($("#chart-wait .chart-plot"), {
    title: "Mean wait in the queue",
    description: "The mean time jobs that started in each second had waited in the queue, in seconds.",
    yLabel: "seconds",
    format: decimal,
    minTop: 0.1, // a wait of a few milliseconds still gets readable ticks
    series: [{ key: "wait", label: "W mean wait (s)", className: "series-wait" }],
    empty: "No job left the queue in the last 2 minutes",
  }),
  shed: new LineChart($("#chart-shed .chart-plot"), {
    title: "Posts shed with 503",
    description:
      "Posts refused with 503 and Retry-After, per second, by the limit that refused them: " +
      "the fan-out queue's cap, or a web process's in-flight bound at the door.",
    yLabel: "503s per second",
    format: decimal,
    minTop: 1,
    series: [
      { key: "queue", label: "queue cap (503 /s)", className: "series-shed", area: true },
      { key: "door", label: "web door (503 /s)", className: "series-shed-door" },
    ],
  }),
};

// -- drawing ---------------------------------------------------------------------------------

/** The last non-null value of a series, or null. */
function latest(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (isNumber(values[i])) return values[i];
  return null;
}

function peak(values) {
  const numbers = values.filter(isNumber);
  return numbers.length ? Math.max(...numbers) : null;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/**
 * Whether new posts are being refused. Admission counts waiting jobs plus the slots reserved
 * by posts being saved against the cap, so the page does too; a cap of 0 turns it off.
 */
function isAtCap(queue) {
  return queue.cap > 0 && isNumber(queue.depth) && queue.depth + (queue.reserved ?? 0) >= queue.cap;
}

function drawCharts(stats) {
  const { history } = stats;
  const cap = stats.queue.cap;
  const depth = stats.queue.depth;
  const atCap = isAtCap(stats.queue);
  const end = isNumber(stats.time) ? stats.time : Date.now() / 1000;
  const frame = { start: end - HISTORY_SECONDS, end, t: history.t };

  root.classList.toggle("is-at-cap", atCap);
  charts.depth.showLegend("cap", cap > 0);
  charts.depth.update({
    ...frame,
    values: { depth: history.depth },
    refLines: cap > 0 ? [{ value: cap, label: `cap ${whole(cap)}`, className: "series-cap" }] : [],
    summary: `Now ${whole(depth)} jobs waiting, ${cap > 0 ? `cap ${whole(cap)}` : "cap off"}; ` +
      `highest in the last two minutes ${whole(peak(history.depth))}.`,
  });
  charts.rates.update({
    ...frame,
    values: { arrivals: history.arrivals, drain: history.drain },
    summary: `Over the last ${stats.rates.window_seconds} seconds: arrivals ${perSecond(stats.rates.arrival)}, ` +
      `drain ${perSecond(stats.rates.drain)}.`,
  });
  charts.wait.update({
    ...frame,
    values: { wait: history.wait_seconds },
    summary: `Latest mean wait ${seconds(latest(history.wait_seconds))}.`,
  });
  charts.shed.update({
    ...frame,
    values: { queue: history.shed_queue, door: history.shed_door },
    summary: `Shed over the last ${stats.rates.window_seconds} seconds: ${shedNote(stats.rates)}; ` +
      `${whole(stats.shed_total)} in total.`,
  });
}

/** How fast posts are shed now, and by which limit. */
function shedNote(rates) {
  const by = rates.shed_by ?? {};
  if (!(rates.shed > 0)) return "none";
  return `${perSecond(rates.shed)} (queue cap ${perSecond(by.queue ?? 0)}, web door ${perSecond(by.door ?? 0)})`;
}

const LAW_TOLERANCE = 0.25;

/** What the two sides of L = λ × W say, in words. */
function lawNote({ law, waitKnown, idle, window }) {
  if (idle) return `nothing arrived or waited in the ${window}`;
  if (!waitKnown) return "not checkable now: no job left the queue, so W is unknown";
  const predicted = law.lambda_x_w;
  const measured = law.measured_depth;
  const larger = Math.max(predicted, measured);
  const gap = Math.abs(predicted - measured);
  // Relative: within a quarter of the larger side (both under 0.05 jobs count as empty, alike).
  if (larger < 0.05) return `both about zero: nothing waits (${window})`;
  if (gap <= LAW_TOLERANCE * larger) return `they agree, within ${LAW_TOLERANCE * 100}% (${window})`;
  return `they differ by ${Math.round((100 * gap) / larger)}%: expected while the queue fills or drains; the law holds over a steady stretch (${window})`;
}

function drawNumbers(stats) {
  const { queue, rates, workers, littles_law: law } = stats;
  const window = `last ${whole(rates.window_seconds)} s`;
  const capOff = !(queue.cap > 0);
  // W is measured on the jobs that started in the window: none started, no W.
  const waitKnown = rates.drain > 0;

  setText(stat("depth"), `${whole(queue.depth)} / ${capOff ? "cap off" : whole(queue.cap)}`);
  const atCap = isAtCap(queue);
  const free = Math.max(0, queue.cap - queue.depth - queue.reserved);
  const depthNote = capOff ? "the cap is off: nothing is shed" : atCap ? "at the cap" : `${whole(free)} free`;
  setText(stat("depth-note"), depthNote);
  setText(stat("reserved"), whole(queue.reserved));
  setText(stat("arrival"), perSecond(rates.arrival));
  setText(stat("arrival-note"), `admitted, ${window}`);
  setText(stat("drain"), perSecond(rates.drain));
  setText(stat("drain-note"), `jobs started, ${window}`);
  setText(stat("wait"), waitKnown ? seconds(stats.wait_seconds) : "–");
  setText(stat("wait-note"), waitKnown ? `in the queue, ${window}` : `no job started in the ${window}`);

  const idle = rates.arrival === 0 && law.measured_depth === 0;
  setText(stat("law-predicted"), `L = λ × W = ${waitKnown || idle ? decimal(law.lambda_x_w) : "–"}`);
  setText(stat("law-measured"), `measured L = ${decimal(law.measured_depth)}`);
  setText(stat("law-note"), lawNote({ law, waitKnown, idle, window }));

  setText(stat("shed-total"), whole(stats.shed_total));
  setText(stat("shed-note"), rates.shed > 0 ? `${shedNote(rates)} now` : "posts refused with 503");
  setText(stat("workers"), `${whole(workers.busy)} / ${whole(workers.total)}`);
  setText(stat("workers-note"), workers.total === 0 ? "no worker running: nothing drains" : "taking jobs from the queue");

  if (atCap !== !banner.hidden) {
    banner.hidden = !atCap;
    // Set the text as it appears, so that screen readers announce the alert.
    banner.textContent = atCap ? "AT CAP: shedding load (503)" : "";
  }
  setText(capNote, capOff ? "cap off" : `cap ${whole(queue.cap)}`);
}

// An empty frame, so that the axes and "no samples" notes show before the first answer.
function emptyStats() {
  const now = Math.floor(Date.now() / 1000);
  const t = Array.from({ length: HISTORY_SECONDS }, (_, i) => now - HISTORY_SECONDS + i);
  const nothing = t.map(() => null);
  return {
    time: now,
    queue: { depth: null, reserved: null, cap: pageCap },
    rates: { arrival: null, drain: null, shed: null, shed_by: {}, window_seconds: 10 },
    shed_total: null,
    history: {
      t,
      depth: nothing,
      arrivals: nothing,
      drain: nothing,
      shed: nothing,
      shed_queue: nothing,
      shed_door: nothing,
      wait_seconds: nothing,
    },
  };
}

// -- polling ---------------------------------------------------------------------------------

class StatsError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

function looksLikeStats(data) {
  return Boolean(data?.queue && data?.rates && data?.history && Array.isArray(data.history.t) &&
    data?.workers && data?.littles_law);
}

async function fetchStats() {
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(STATS_URL, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
      signal: controller.signal,
    });
  } catch (error) {
    throw new StatsError(error.name === "AbortError" ? "the server took too long to answer" :
      "the server could not be reached");
  } finally {
    clearTimeout(timeout);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: said below
  }
  if (response.status === 401) throw new StatsError("you are logged out; log in again", 401);
  if (response.status === 403) throw new StatsError("only staff may read them", 403);
  if (!response.ok) {
    // The server's own words, without a final full stop: the sentence goes on after them.
    const detail = typeof data?.error?.message === "string" ? `: ${data.error.message.trim().replace(/\.+$/, "")}` : "";
    throw new StatsError(`the server answered HTTP ${response.status}${detail}`, response.status);
  }
  if (!looksLikeStats(data)) throw new StatsError("the answer was not the expected stats");
  return data;
}

let failures = 0;
let everRead = false;
let timer = null;
let inFlight = false;
let waitingForVisible = false;
let lastStatus = "";

function showStatus(kind, text) {
  root.dataset.state = kind;
  root.classList.toggle("is-stale", kind === "error");
  retryButton.hidden = kind !== "error";
  // Only changes are written, so that the live region speaks when the state changes.
  if (text !== lastStatus) {
    statusText.textContent = text;
    lastStatus = text;
  }
  status.classList.toggle("is-error", kind === "error");
}

function schedule(delay) {
  clearTimeout(timer);
  timer = null;
  if (document.hidden) {
    waitingForVisible = true; // a hidden tab does not poll; it catches up when shown
    return;
  }
  timer = setTimeout(poll, delay);
}

async function poll() {
  clearTimeout(timer);
  timer = null;
  if (inFlight) return;
  inFlight = true;
  const started = performance.now();
  let delay;
  try {
    const stats = await fetchStats();
    failures = 0;
    everRead = true;
    drawCharts(stats);
    drawNumbers(stats);
    drawControls(stats);
    const at = isNumber(stats.time) ? new Date(stats.time * 1000) : new Date();
    updated.dateTime = at.toISOString();
    updated.textContent = at.toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    showStatus("live", "Live: updating every second.");
    delay = Math.max(0, POLL_MS - (performance.now() - started));
  } catch (error) {
    failures += 1;
    delay = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** failures);
    const reason = error instanceof StatsError ? error.message : "the page could not read them";
    showStatus("error", `Stats unavailable: ${reason}. Trying again in ${Math.round(delay / 1000)} s; ` +
      (everRead ? "the numbers below are the last ones read." : "nothing has been read yet."));
    if (!(error instanceof StatsError)) console.error(error);
  } finally {
    inFlight = false;
  }
  schedule(delay);
}

// -- staff's levers: pause the workers, set the cap (PUT /api/ops/controls) ----------------------

// Found in the whole page: the lesson page puts them beside its burst, outside the dashboard.
const pauseButton = document.getElementById("ops-pause");
const capForm = document.getElementById("ops-cap-form");
const capInput = document.getElementById("ops-cap-input");
const controlsError = document.getElementById("ops-controls-error");

function drawControls(stats) {
  if (!pauseButton) return; // not staff: no levers on the page
  const paused = Boolean(stats.workers?.paused);
  pauseButton.dataset.paused = String(paused);
  pauseButton.textContent = paused ? "Resume the workers" : "Pause the workers";
  setText(document.getElementById("ops-pause-note"), paused ? "paused: they take no job, and the queue fills" : "workers take jobs as they come");
  if (document.activeElement !== capInput && isNumber(stats.queue?.cap)) capInput.value = String(stats.queue.cap);
}

async function control(body) {
  controlsError.hidden = true;
  try {
    const stats = await api("/api/ops/controls", { method: "PUT", body });
    drawNumbers(stats);
    drawControls(stats);
  } catch (error) {
    controlsError.textContent = `Not changed: ${Object.values(error.fields ?? {})[0] ?? error.message}`;
    controlsError.hidden = false;
  }
}

if (pauseButton) {
  pauseButton.addEventListener("click", () => control({ workers_paused: pauseButton.dataset.paused !== "true" }));
  capForm.addEventListener("submit", (event) => {
    event.preventDefault();
    control({ cap: Number(capInput.value) });
  });
  document.getElementById("ops-cap-reset").addEventListener("click", () => control({ cap: null }));
}

retryButton.addEventListener("click", () => {
  if (!inFlight) poll();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && waitingForVisible) {
    waitingForVisible = false;
    if (!inFlight) poll();
  }
});

drawCharts(emptyStats());
showStatus("loading", "Loading the stats…");
poll();
