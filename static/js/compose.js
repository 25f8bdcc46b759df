// Posting with optimistic rendering. The tweet is drawn at the top of the timeline at once,
// marked as sending, and reconciled with the server's answer by its client_id. The client_id is
// made once per tweet and reused by every retry, so a retry can never make a second tweet.

import { api, ApiError } from "./api.js";
import { delay } from "./backoff.js";
import { describeFanout, fillTweet, findTweetByClientId, findTweetById, renderTweet, setStatus } from "./tweets.js";

const form = document.getElementById("compose");
const timeline = document.getElementById("timeline");

const AUTO_RETRIES = 5; // automatic tries after a 503 or 429, then the Retry button
const BACKOFF = { base: 1000, cap: 60_000 };
const storageKey = `timeline:unsent:${form?.dataset.author ?? ""}`;

// Tweets the server has not yet accepted, by client_id: {body, created, timer, countdown}.
const unsent = new Map();

// -- tweets not yet accepted survive a reload: kept in localStorage until a 200/202 ------------

function readStored() {
  try {
    const list = JSON.parse(localStorage.getItem(storageKey) ?? "[]");
    return Array.isArray(list) ? list.filter((t) => t && typeof t.body === "string" && t.client_id) : [];
  } catch {
    return []; // storage disabled or corrupt: the page still works, only without this safety net
  }
}

function writeStored(list) {
  try {
    if (list.length) localStorage.setItem(storageKey, JSON.stringify(list));
    else localStorage.removeItem(storageKey);
  } catch {
    // private mode or full: nothing more to do
  }
}

function store(clientId, body, created) {
  const list = readStored().filter((t) => t.client_id !== clientId);
  list.push({ body, client_id: clientId, created });
  writeStored(list);
}

function unstore(clientId) {
  writeStored(readStored().filter((t) => t.client_id !== clientId));
}

// crypto.randomUUID exists only in secure contexts (https, localhost); the fallback builds the
// same version-4 UUID from getRandomValues, which exists everywhere.
function newClientId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
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

// -- sending ----------------------------------------------------------------------------------

function stopWaiting(entry) {
  clearTimeout(entry.timer);
  clearInterval(entry.countdown);
  entry.timer = entry.countdown = null;
}

function waitThenRetry(el, clientId, entry, error, attempt) {
  const wait = delay(attempt, { ...BACKOFF, floor: (error.retryAfter ?? 0) * 1000 });
  const due = Date.now() + wait;
  const label = error.status === 429 ? "Posting too fast" : "Server busy";
  const show = () => {
    const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
    setStatus(el, "backoff", `${label}, retrying in ${seconds} s…`);
  };
  show();
  entry.countdown = setInterval(show, 1000);
  entry.timer = setTimeout(() => {
    stopWaiting(entry);
    send(el, clientId, attempt + 1);
  }, wait);
}

// attempt counts the automatic retries made so far (0 for a first send or a manual Retry).
async function send(el, clientId, attempt = 0) {
  const entry = unsent.get(clientId);
  if (!entry) return;
  stopWaiting(entry);
  store(clientId, entry.body, entry.created);
  setStatus(el, "sending", "Sending…");
  let answer;
  try {
    answer = await api("/api/tweets", { method: "POST", body: { body: entry.body, client_id: clientId } });
  } catch (error) {
    const busy = error instanceof ApiError && (error.status === 503 || error.status === 429);
    if (busy && attempt < AUTO_RETRIES) {
      waitThenRetry(el, clientId, entry, error, attempt);
      return;
    }
    // A body the server refused can never be posted: do not resend it on the next page load.
    if (error instanceof ApiError && error.status === 400) unstore(clientId);
    setStatus(el, "failed", failureText(error));
    return;
  }
  unsent.delete(clientId);
  unstore(clientId);
  reconcile(el, answer.tweet, answer.fanout);
}

function reconcile(el, tweet, fanout) {
  // The same tweet may already be on the page (a retry after a lost answer, a live update).
  const twin = findTweetById(timeline, tweet.id);
  if (twin && twin !== el) twin.remove();
  fillTweet(el, tweet);
  const { state, text } = describeFanout(fanout);
  setStatus(el, state, text);
  // live.js applies delivery progress that arrived before this answer.
  timeline.dispatchEvent(new CustomEvent("tweet:posted", { detail: { id: tweet.id, el } }));
}

function draw(clientId, body, created) {
  const el = renderTweet({
    id: null,
    author: { username: form.dataset.author },
    body,
    created_at: created,
    client_id: clientId,
  });
  timeline.prepend(el);
  document.querySelector("[data-empty-state]")?.remove();
  unsent.set(clientId, { body, created, timer: null, countdown: null });
  return el;
}

// Tweets left unsent by an earlier page (closed, reloaded, offline): drawn again and resent
// with their own client_id, so one the server did take is not made twice.
function resendStored() {
  const stored = readStored().sort((a, b) => String(a.created).localeCompare(String(b.created)));
  for (const { body, client_id: clientId, created } of stored) {
    if (unsent.has(clientId)) continue;
    const shown = findTweetByClientId(timeline, clientId);
    if (shown?.dataset.tweetId) {
      unstore(clientId); // the server took it and the page already shows it
      continue;
    }
    const el = draw(clientId, body.normalize("NFC").trim(), created ?? new Date().toISOString());
    send(el, clientId);
  }
}

// -- scheduling: no optimistic drawing, the tweet is not on any timeline until it goes out -------

const SCHEDULE_MAX_DAYS = 30;
let scheduling = null; // {key, clientId} of a schedule whose answer was lost: its retry reuses the id

// A datetime-local input's value ("2026-12-01T09:30") for a Date, in the browser's zone.
function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function showNote(text, { error = false } = {}) {
  const note = form.querySelector("[data-compose-note]");
  note.textContent = text;
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
    showNote(`Scheduled for ${out.toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}.`);
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

    const clientId = newClientId();
    const el = draw(clientId, body.normalize("NFC").trim(), new Date().toISOString());
    textarea.value = "";
    updateCounter();
    textarea.focus();
    send(el, clientId);
  });

  textarea.addEventListener("input", updateCounter);
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  timeline.addEventListener("click", (event) => {
    const retry = event.target.closest(".tweet-retry");
    if (!retry) return;
    const el = retry.closest(".tweet");
    const clientId = el.dataset.clientId;
    if (unsent.has(clientId)) send(el, clientId);
  });

  updateCounter();
  resendStored();
}

if (form && timeline) init();
