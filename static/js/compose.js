// Posting with optimistic rendering, through an outbox. The tweet is drawn at the top of the
// timeline at once, marked as sending, and reconciled with the server's answer by its client_id.
// The client_id is made once per tweet and reused by every retry, so a retry can never make a
// second tweet.
//
// Until the server has taken it, a tweet lives in the outbox (static/js/outbox.js: IndexedDB),
// shared by every tab of the user, so nothing is lost to a reload, a closed tab or a dropped
// network. One tab at a time sends (a Web Lock); the others draw the same tweets and their state
// from the outbox, told of each change by a BroadcastChannel message.
// A busy server (503, 429) is tried again after its Retry-After plus a random share of a
// doubling window (static/js/backoff.js), for as long as it takes; a tweet written offline is
// sent when the browser is back online. "Retry now" sends at once.

import { api, ApiError, newClientId } from "./api.js";
import { delay } from "./backoff.js";
import { openOutbox } from "./outbox.js";
import { fillTweet, findTweetByClientId, findTweetById, renderTweet, setStatus, showFanout } from "./tweets.js";

const form = document.getElementById("compose");
const timeline = document.getElementById("timeline");

const BACKOFF = { base: 1000, cap: 60_000 };
const author = form?.dataset.author ?? "";
const lockName = `timeline:outbox:${author}`;
// Tabs of the same user tell each other of their posts (the socket does not echo one's own)
// and of every change to the outbox.
const tabs = "BroadcastChannel" in window ? new BroadcastChannel(`timeline:tabs:${author}`) : null;

// -- the outbox: {client_id, body, created, state, due, attempt, note} by client_id ------------
// state: "sending", "backoff" (due at `due`, ms since the epoch), "offline" (sent when online),
// "failed" (refused for good, or an error a person should look at: sent again by Retry).

const outbox = openOutbox(`timeline:outbox:${author}`, `timeline:unsent:${author}`);
let latest = []; // the entries as last read, for the countdowns

async function readStored() {
  const list = await (await outbox).list();
  return list.filter((t) => t && typeof t.body === "string" && t.client_id);
}

async function stored(clientId) {
  return (await readStored()).find((t) => t.client_id === clientId);
}

// Each change is committed before the other tabs are told, and then drawn here.
async function changed() {
  tabs?.postMessage({ type: "outbox" });
  await showEntries();
}

async function store(entry) {
  await (await outbox).put(entry);
  await changed();
}

async function update(clientId, changes) {
  await (await outbox).patch(clientId, changes);
  await changed();
}

async function unstore(clientId) {
  await (await outbox).remove(clientId);
  tabs?.postMessage({ type: "outbox" });
}

// Counted as the server counts: NFC-normalized, trimmed, in code points (not UTF-16 units).
function tweetLength(text) {
  return Array.from(text.normalize("NFC").trim()).length;
}

function failureText(error) {
  if (!(error instanceof ApiError)) return "Not posted. Something went wrong in this page.";
  if (error.status === 401) return "Not posted. You are logged out: log in again in another tab, then retry.";
  let message = error.message;
  if (error.status === 400) {
    message = error.fields.body ?? error.fields.client_id ?? Object.values(error.fields)[0] ?? message;
  } else if (error.retryAfter && !/try again/i.test(message)) {
    message += ` Try again in ${error.retryAfter} s.`;
  }
  // The server's 503 says itself that nothing was posted.
  return /not posted|nothing was posted/i.test(message) ? message : `Not posted. ${message}`;
}

// -- what each tab shows ---------------------------------------------------------------------

function statusOf(entry) {
  if (entry.state === "backoff") {
    const seconds = Math.max(0, Math.ceil((entry.due - Date.now()) / 1000));
    return ["backoff", `${entry.note}, retrying in ${seconds} s…`];
  }
  if (entry.state === "offline") return ["offline", "Offline: it will be sent when you are back online."];
  if (entry.state === "failed") return ["failed", entry.note];
  return ["sending", "Sending…"];
}

// Every tweet in the outbox is drawn, in every tab, with its state; one that left the outbox
// (sent, by this tab or another) stops being drawn as unsent: its answer or the other tab's
// message has made it a tweet with an id, or, if neither came, it is taken off.
async function showEntries() {
  if (!timeline) return;
  latest = await readStored();
  const entries = [...latest].sort((a, b) => String(a.created).localeCompare(String(b.created)));
  for (const entry of entries) {
    let el = findTweetByClientId(timeline, entry.client_id);
    if (el?.dataset.tweetId) continue; // the server took it; the storage is behind
    el ??= draw(entry);
    const [state, text] = statusOf(entry);
    setStatus(el, state, text);
  }
  const kept = new Set(entries.map((t) => t.client_id));
  for (const el of timeline.querySelectorAll('.tweet[data-tweet-id=""]')) {
    const id = el.dataset.clientId;
    if (id && !kept.has(id) && !sending.has(id) && !("refused" in el.dataset)) el.remove();
  }
}

function draw(entry) {
  const el = renderTweet({
    id: null,
    author: { username: author },
    body: entry.body,
    created_at: entry.created,
    client_id: entry.client_id,
  });
  timeline.prepend(el);
  document.querySelector("[data-empty-state]")?.remove();
  return el;
}

function reconcile(tweet, fanout) {
  const el = findTweetByClientId(timeline, tweet.client_id) ?? renderTweet(tweet);
  // The same tweet may already be on the page (a retry after a lost answer, a live update).
  const twin = findTweetById(timeline, tweet.id);
  if (twin && twin !== el) twin.remove();
  if (!el.isConnected) timeline.prepend(el);
  fillTweet(el, tweet);
  showFanout(el, fanout);
  document.querySelector("[data-empty-state]")?.remove();
  // live.js applies delivery progress that arrived before this answer.
  timeline.dispatchEvent(new CustomEvent("tweet:posted", { detail: { id: tweet.id, el } }));
}

// -- sending: one tab at a time --------------------------------------------------------------

const sending = new Set(); // client_ids this tab has a request out for
let pumping = false;
let pumpTimer = null;

// Tabs take turns (each reads the outbox afresh once it has the lock, so a tweet another tab
// sent meanwhile is not sent again). Without Web Locks every tab sends: the client_id keeps it once.
function withOutboxLock(work) {
  return navigator.locks ? navigator.locks.request(lockName, work) : work();
}

function isDue(entry, now) {
  if (entry.state === "failed") return false;
  if (entry.state === "offline") return navigator.onLine !== false;
  if (entry.state === "backoff") return entry.due <= now;
  return true; // "sending" left by a tab that was closed mid-request
}

async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    await withOutboxLock(async () => {
      for (;;) {
        const now = Date.now();
        const next = (await readStored())
          .filter((t) => isDue(t, now) && !sending.has(t.client_id))
          .sort((a, b) => String(a.created).localeCompare(String(b.created)))[0];
        if (!next) return;
        await send(next);
      }
    });
  } finally {
    pumping = false;
    schedulePump();
  }
}

async function schedulePump() {
  const dues = (await readStored()).filter((t) => t.state === "backoff").map((t) => t.due);
  clearTimeout(pumpTimer);
  if (dues.length) pumpTimer = setTimeout(pump, Math.max(0, Math.min(...dues) - Date.now()));
}

async function send(entry) {
  const clientId = entry.client_id;
  sending.add(clientId);
  let answer;
  try {
    await update(clientId, { state: "sending" });
    answer = await api("/api/tweets", { method: "POST", body: { body: entry.body, client_id: clientId } });
  } catch (error) {
    if (error instanceof ApiError && error.status === 400) {
      // A body the server refused can never be posted: shown here, not kept for another load.
      const el = findTweetByClientId(timeline, clientId);
      await unstore(clientId);
      if (el) {
        el.dataset.refused = "";
        setStatus(el, "failed", failureText(error));
      }
    } else {
      await update(clientId, nextTry(entry, error));
    }
    return;
  } finally {
    sending.delete(clientId);
  }
  reconcile(answer.tweet, answer.fanout);
  tabs?.postMessage({ type: "posted", tweet: answer.tweet, fanout: answer.fanout });
  await unstore(clientId);
  await showEntries();
}

// What becomes of an entry after a failed try: waits for the server or the network, or stops.
function nextTry(entry, error) {
  const attempt = (entry.attempt ?? 0) + 1;
  const busy = error instanceof ApiError && (error.status === 503 || error.status === 429);
  if (busy) {
    const wait = delay(attempt - 1, { ...BACKOFF, floor: (error.retryAfter ?? 0) * 1000 });
    const note = error.status === 429 ? "Posting too fast" : "Server busy";
    return { state: "backoff", due: Date.now() + wait, attempt, note };
  }
  if (!(error instanceof ApiError) || error.status === 0) {
    // No answer at all: the network, or a server that is not there.
    if (navigator.onLine === false) return { state: "offline", attempt };
    const wait = delay(attempt - 1, BACKOFF);
    return { state: "backoff", due: Date.now() + wait, attempt, note: "Could not reach the server" };
  }
  return { state: "failed", attempt, note: failureText(error) };
}

async function sendNow(clientId) {
  await update(clientId, { state: "backoff", due: 0 });
  pump();
}

// -- scheduling: no optimistic drawing, the tweet is not on any timeline until it goes out -------

const SCHEDULE_MAX_DAYS = 30;
let scheduling = null; // {key, clientId} of a schedule whose answer was lost: its retry reuses the id

// A datetime-local input's value ("2026-12-01T09:30") for a Date, in the browser's zone.
function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function showNote(text, { error = false, link = null } = {}) {
  const note = form.querySelector("[data-compose-note]");
  note.textContent = text;
  if (link) {
    const anchor = document.createElement("a");
    [anchor.href, anchor.textContent] = link;
    note.append(anchor);
  }
  note.classList.toggle("is-error", error);
  note.hidden = !text;
}

async function schedule(body, when) {
  const at = new Date(when.value); // a datetime-local value is read in the browser's zone
  if (Number.isNaN(at.getTime())) {
    showNote("Pick a date and a time.", { error: true });
    return false;
  }
  const publishAt = at.toISOString();
  const key = `${publishAt} ${body}`;
  if (scheduling?.key !== key) scheduling = { key, clientId: newClientId() };
  try {
    const answer = await api("/api/tweets", {
      method: "POST",
      body: { body, client_id: scheduling.clientId, publish_at: publishAt },
    });
    scheduling = null;
    const out = new Date(answer.tweet.publish_at ?? answer.tweet.created_at);
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const when = out.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    showNote(`Scheduled for ${when}${zone ? ` (${zone})` : ""}. `, { link: [`/u/${encodeURIComponent(author)}/`, "See it on your profile"] });
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status < 500) scheduling = null; // refused: nothing stored
    const fields = error instanceof ApiError ? error.fields : {};
    showNote(fields.publish_at ?? fields.body ?? failureText(error), { error: true });
    return false;
  }
}

function initSchedule(button) {
  const when = form.elements.publish_at;
  if (!when) return null;
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const label = form.querySelector("[data-schedule-zone]");
  if (label && zone) label.textContent = `(${zone})`;
  const bounds = () => {
    const now = new Date();
    when.min = localInputValue(new Date(now.getTime() + 60_000));
    when.max = localInputValue(new Date(now.getTime() + SCHEDULE_MAX_DAYS * 86_400_000));
  };
  const relabel = () => {
    button.textContent = when.value ? "Schedule" : "Post";
  };
  when.addEventListener("focus", bounds);
  when.addEventListener("input", relabel);
  bounds();
  relabel();
  return { when, relabel };
}

function init() {
  const textarea = form.elements.body;
  const button = form.querySelector('button[type="submit"]');
  const counter = form.querySelector("[data-counter]");
  const max = Number(form.dataset.maxLength);
  const scheduler = initSchedule(button);

  function updateCounter() {
    const length = tweetLength(textarea.value);
    const left = max - length;
    counter.hidden = length === 0;
    counter.textContent = left >= 0 ? String(left) : `−${-left}`;
    counter.title = left >= 0 ? `${left} characters left` : `${-left} characters too many`;
    counter.classList.toggle("is-near", left >= 0 && left <= 20);
    counter.classList.toggle("is-over", left < 0);
    button.disabled = length === 0 || left < 0;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = textarea.value;
    const length = tweetLength(body);
    if (length === 0 || length > max) return;

    // Errors from a post made without JavaScript no longer apply.
    form.querySelector("#compose-errors")?.remove();
    textarea.removeAttribute("aria-invalid");
    textarea.removeAttribute("aria-describedby");
    showNote("");

    if (scheduler?.when.value) {
      button.disabled = true;
      const done = await schedule(body.normalize("NFC").trim(), scheduler.when);
      if (done) {
        textarea.value = "";
        scheduler.when.value = "";
        scheduler.when.closest("details").open = false;
        scheduler.relabel();
      }
      updateCounter();
      return;
    }

    const entry = { client_id: newClientId(), body: body.normalize("NFC").trim(), created: new Date().toISOString(), state: "sending" };
    textarea.value = "";
    updateCounter();
    textarea.focus();
    try {
      await store(entry);
    } catch {
      // The browser would not keep it (storage full or closed): the text goes back to the box.
      textarea.value ||= body;
      updateCounter();
      showNote("Not posted: this browser could not keep the tweet. Try again.", { error: true });
      return;
    }
    pump();
  });

  textarea.addEventListener("input", updateCounter);
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  timeline.addEventListener("click", async (event) => {
    const retry = event.target.closest(".tweet-retry");
    if (!retry) return;
    const clientId = retry.closest(".tweet").dataset.clientId;
    if (await stored(clientId)) sendNow(clientId);
  });

  // Another tab changed the outbox, or posted a tweet.
  tabs?.addEventListener("message", ({ data }) => {
    if (data?.type === "outbox") {
      showEntries();
      schedulePump();
    }
    if (data?.type === "posted" && data.tweet && !findTweetById(timeline, data.tweet.id)) reconcile(data.tweet, data.fanout);
  });
  window.addEventListener("online", async () => {
    for (const entry of await readStored()) {
      if (entry.state === "offline") await update(entry.client_id, { state: "backoff", due: 0 });
    }
    pump();
  });
  window.addEventListener("offline", showEntries);
  setInterval(() => {
    if (latest.some((t) => t.state === "backoff")) showEntries(); // the countdowns
  }, 1000);

  updateCounter();
  form.dataset.enhanced = ""; // the plain form is ours now (tests wait for this before posting)
  resume();
}

// Tweets left unsent by an earlier page (closed, reloaded, offline) or another tab: drawn, and
// sent (with their own client_id, so one the server did take is not made twice); a new page
// tries once more even those that had failed.
async function resume() {
  for (const entry of await readStored()) {
    if (entry.state === "failed") await (await outbox).patch(entry.client_id, { state: "backoff", due: 0 });
  }
  await showEntries();
  pump();
}

if (form && timeline) init();
