// The lesson page (templates/timeline/lesson.html): one message posted two ways side by side,
// and a burst through the queue whose tries are plotted. The queue itself is drawn by ops.js.
//
// Every post goes to POST /api/lesson/posts with its own client_id. One refused for now (503
// with Retry-After, 429, or no answer) is tried again with the same client_id after
// backoff.delay: at least the server's Retry-After, plus a random share, so nothing is posted
// twice and refused clients come back spread out. When a queued post reached every timeline
// is the server's figure (delivered_after_ms, from its clock), asked for until the fan-out is
// done; the answer times are measured here, as a user waits for them.

import { api, newClientId } from "./api.js";
import { delay as backoffDelay } from "./backoff.js";
import { LineChart, niceTicks } from "./charts.js";

const root = document.getElementById("lesson");
const form = document.getElementById("lesson-form");
const bodyInput = document.getElementById("lesson-body");
const postButton = document.getElementById("lesson-post");
const burstButton = document.getElementById("lesson-burst");
const errorBox = document.getElementById("lesson-error");
const burstSummary = document.getElementById("lesson-burst-summary");
const burstWait = document.getElementById("lesson-burst-wait");

const BURST = 20;
const TRIED_AGAIN = new Set([0, 429, 503]); // 0: the server was not reached
const POLL_MS = [100, 200, 400, 800, 1000]; // asking for a queued post's delivery, then every second
const locale = document.documentElement.lang || undefined;
const wholeFormat = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });
const secondsFormat = new Intl.NumberFormat(locale, { maximumFractionDigits: 1 });

const whole = (v) => (Number.isFinite(v) ? wholeFormat.format(v) : "–");
const ms = (v) => (Number.isFinite(v) ? `${whole(v)} ms` : "–");
const secs = (v) => `${secondsFormat.format(v / 1000)} s`;
const sleep = (wait) => new Promise((resolve) => setTimeout(resolve, wait));

function panel(way) {
  const el = root.querySelector(`[data-way="${way}"]`);
  const field = (name) => el.querySelector(`[data-field="${name}"]`);
  return { el, answer: field("answer"), delivered: field("delivered"), state: field("state") };
}
const panels = { inline: panel("inline"), queued: panel("queued") };

// -- posting -----------------------------------------------------------------------------------

/**
 * Post once, trying again while the server says "not now". Calls onTry({ at, accepted, attempt })
 * for every try (at: performance.now(); attempt: 0 for the first) and onWait(error, wait) before each wait.
 * Resolves to { data, took } with the accepted try's round trip in milliseconds.
 */
async function post(body, way, { onTry = () => {}, onWait = () => {} } = {}) {
  const clientId = newClientId();
  for (let attempt = 0; ; attempt += 1) {
    const started = performance.now();
    try {
      const data = await api("/api/lesson/posts", { method: "POST", body: { body, way, client_id: clientId } });
      const took = performance.now() - started;
      onTry({ at: started, accepted: true, attempt });
      return { data, took };
    } catch (error) {
      onTry({ at: started, accepted: false, attempt });
      if (!TRIED_AGAIN.has(error.status)) throw error;
      const wait = backoffDelay(attempt, { floor: (error.retryAfter ?? 0) * 1000 });
      onWait(error, wait);
      await sleep(wait);
    }
  }
}

/** Ask for a queued post until its fan-out is done; resolves to the answer with delivered_after_ms. */
async function delivered(tweetId, onProgress) {
  for (let i = 0; ; i += 1) {
    try {
      const data = await api(`/api/lesson/posts/${tweetId}`);
      if (data.delivered_after_ms !== null) return data;
      onProgress(data.fanout);
    } catch (error) {
      if (error.status === 404) return null; // deleted meanwhile (by its author's admin)
    }
    await sleep(POLL_MS[Math.min(i, POLL_MS.length - 1)]);
  }
}

function progressText(fanout) {
  if (!fanout || fanout.state === "pending" || fanout.state === "queued") return "Saved, waiting in the queue for a worker…";
  if (fanout.state === "failed") return "A delivery try failed; it will be tried again…";
  if (!fanout.recipients) return "A worker is delivering it…";
  return `A worker is delivering it: ${whole(fanout.delivered)} of ${whole(fanout.recipients)} timelines…`;
}

function refusedText(error, wait) {
  const why = error.status === 503 ? "Refused (503): the queue is full" :
    error.status === 429 ? "Refused (429): posting too fast" : "The server could not be reached";
  return `${why}. Trying again in ${secs(wait)} (Retry-After ${error.retryAfter ?? 0} s, plus a random share).`;
}

// -- the two ways, side by side ------------------------------------------------------------------

const samples = []; // { inline, queuedAnswer, queuedDelivered } in ms, one per "Post both ways"

const latencyChart = new LineChart(document.querySelector("#lesson-latency .chart-plot"), {
  title: "Latency, post by post",
  description: "For each post, milliseconds until the answer in the request and through the queue, and until " +
    "the queued post was in every follower's timeline.",
  yLabel: "milliseconds",
  xLabel: "post number",
  format: whole,
  minTop: 10,
  xTickLabel: (x) => String(Math.round(x)),
  series: [
    { key: "inline", label: "in the request: answer", className: "series-drain" },
    { key: "queuedAnswer", label: "through the queue: answer", className: "series-arrivals" },
    { key: "queuedDelivered", label: "through the queue: in every timeline, after saving", className: "series-wait" },
  ],
  empty: "Post to see the two latencies",
});

function drawLatency() {
  const n = samples.length;
  const end = Math.max(10, n);
  const last = samples[n - 1];
  latencyChart.options.xTicks = Math.max(1, Math.ceil((end - 1) / 5));
  latencyChart.update({
    start: 1,
    end,
    t: samples.map((_, i) => i + 1),
    values: {
      inline: samples.map((s) => s.inline),
      queuedAnswer: samples.map((s) => s.queuedAnswer),
      queuedDelivered: samples.map((s) => s.queuedDelivered),
    },
    summary: last ? `Post ${n}: in the request ${ms(last.inline)}; through the queue, answered in ` +
      `${ms(last.queuedAnswer)} and in every timeline after ${ms(last.queuedDelivered)}.` : "",
  });
  root.dataset.samples = String(n);
}

function showAnswer(way, { data, took }) {
  const p = panels[way];
  p.answer.textContent = ms(took);
  const after = data.delivered_after_ms;
  p.delivered.textContent = ms(after);
  p.state.textContent = after !== null
    ? `Delivered to ${whole(data.fanout.delivered)} timelines before the answer came.`
    : progressText(data.fanout);
}

async function postBothWays(body) {
  for (const p of Object.values(panels)) {
    p.answer.textContent = "…";
    p.delivered.textContent = "…";
    p.state.textContent = "Posting…";
  }
  const wait = (way) => (error, delay) => { panels[way].state.textContent = refusedText(error, delay); };

  // One after the other, so that neither slows the other down.
  const inline = await post(body, "inline", { onWait: wait("inline") });
  const sample = { inline: inline.took, queuedAnswer: null, queuedDelivered: null };
  samples.push(sample);
  showAnswer("inline", inline);
  drawLatency();

  const queued = await post(body, "queued", { onWait: wait("queued") });
  sample.queuedAnswer = queued.took;
  sample.queuedDelivered = queued.data.delivered_after_ms;
  showAnswer("queued", queued);
  drawLatency();
  // Followed without holding the form: with the workers paused it may take a while.
  if (sample.queuedDelivered === null) followDelivery(sample, queued.data.tweet.id);
}

async function followDelivery(sample, tweetId) {
  const current = () => samples[samples.length - 1] === sample; // the panel shows the latest post only
  const done = await delivered(tweetId, (fanout) => {
    if (current()) panels.queued.state.textContent = progressText(fanout);
  });
  if (!done) return;
  sample.queuedDelivered = done.delivered_after_ms;
  drawLatency();
  if (current()) {
    panels.queued.delivered.textContent = ms(done.delivered_after_ms);
    panels.queued.state.textContent = `Delivered to ${whole(done.fanout.delivered)} timelines by a worker, ` +
      `${ms(done.delivered_after_ms)} after it was saved.`;
  }
}

// -- a burst through the queue, and its retries ----------------------------------------------------

const burstChart = new LineChart(document.querySelector("#lesson-retries .chart-plot"), {
  title: "The burst's tries",
  description: "Each try of the burst's posts, by post number and seconds since the burst began: " +
    "hollow dots were refused with 503, filled dots accepted.",
  yLabel: "post",
  xLabel: "seconds since the burst began",
  integer: true,
  format: whole,
  minTop: BURST + 1, // the top post's dot clear of the edge
  dotRadius: 3,
  xTickLabel: (x) => String(Math.round(x)),
  series: [
    { key: "refused", label: "refused (503), tried again", className: "series-refused", dots: true },
    { key: "accepted", label: "accepted", className: "series-arrivals", dots: true },
  ],
  empty: "No burst yet",
});

let burst = null; // { started, tries: [{ post, at, accepted, retry }], due: Map(post -> next try), finished }

function drawBurst() {
  if (!burst) {
    burstChart.options.xTicks = 2;
    burstChart.update({ start: -0.5, end: 10, t: [], values: {} });
    return;
  }
  const now = burst.finished ?? performance.now();
  // Ticks at round seconds from the start: the axis ends at a round number.
  const { top: end, step } = niceTicks(Math.max(10, (now - burst.started) / 1000));
  // Each try is a dot of its own: a null after every point keeps the chart from joining them.
  const t = [];
  const refused = [];
  const accepted = [];
  for (const tr of [...burst.tries].sort((a, b) => a.at - b.at)) {
    const x = (tr.at - burst.started) / 1000;
    t.push(x, x);
    refused.push(tr.accepted ? null : tr.post, null);
    accepted.push(tr.accepted ? tr.post : null, null);
  }
  burstChart.options.xTicks = step;
  // A little room left of 0, where the first tries of all twenty sit.
  burstChart.update({ start: -end / 50, end, t, values: { refused, accepted }, summary: burstSummary.textContent });
}

function describeBurst() {
  const refusals = burst.tries.filter((tr) => !tr.accepted);
  const retried = new Set(refusals.map((tr) => tr.post));
  const acceptedCount = burst.tries.filter((tr) => tr.accepted).length;
  const retryTimes = burst.tries.filter((tr) => tr.retry).map((tr) => (tr.at - burst.started) / 1000);
  let text = `${acceptedCount} of ${BURST} accepted`;
  if (retried.size) {
    text += `; ${retried.size} refused at first, with ${refusals.length} refusals in all`;
    if (retryTimes.length) {
      text += `; their retries came between ${secondsFormat.format(Math.min(...retryTimes))} s and ` +
        `${secondsFormat.format(Math.max(...retryTimes))} s after the burst began`;
    }
  }
  // Only a change is written: the summary is a live region, read out when it changes.
  if (burstSummary.textContent !== `${text}.`) burstSummary.textContent = `${text}.`;
  const now = performance.now();
  const waits = [...burst.due.values()].filter((due) => due > now).map((due) => Math.ceil((due - now) / 1000));
  burstWait.textContent = waits.length
    ? `${waits.length} waiting to try again (the server's Retry-After plus a random share): ` +
      `the next in ${Math.min(...waits)} s, the last in ${Math.max(...waits)} s.`
    : "";
  root.dataset.burstAccepted = String(acceptedCount);
  root.dataset.burstRefusals = String(refusals.length);
}

async function postBurst(body) {
  burst = { started: performance.now(), tries: [], due: new Map(), finished: null };
  const ticker = setInterval(() => {
    describeBurst();
    drawBurst();
  }, 1000);
  burstSummary.textContent = "";
  try {
    await Promise.all(Array.from({ length: BURST }, (_, i) =>
      post(`${body} (${i + 1} of ${BURST})`, "queued", {
        onWait: (_error, wait) => burst.due.set(i + 1, performance.now() + wait),
        onTry: ({ at, accepted, attempt }) => {
          burst.due.delete(i + 1);
          burst.tries.push({ post: i + 1, at, accepted, retry: attempt > 0 });
          describeBurst();
          drawBurst();
        },
      })));
  } finally {
    clearInterval(ticker);
    burst.finished = performance.now();
    describeBurst();
    drawBurst();
  }
}

// -- the form ------------------------------------------------------------------------------------

function busy(on) {
  postButton.disabled = on;
  burstButton.disabled = on;
  root.dataset.busy = String(on);
}

async function run(task) {
  errorBox.hidden = true;
  const body = bodyInput.value.trim();
  if (!body) {
    errorBox.textContent = "Write something first.";
    errorBox.hidden = false;
    bodyInput.focus();
    return;
  }
  busy(true);
  try {
    await task(body);
  } catch (error) {
    const field = Object.values(error.fields ?? {})[0];
    errorBox.textContent = `Not posted: ${field ?? error.message}`;
    errorBox.hidden = false;
  } finally {
    busy(false);
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  run(postBothWays);
});
burstButton.addEventListener("click", () => run(postBurst));

drawLatency();
drawBurst();
root.dataset.ready = "true";
