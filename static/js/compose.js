// Posting with optimistic rendering. The tweet is drawn at the top of the timeline at once,
// marked as sending, and reconciled with the server's answer by its client_id. The client_id is
// made once per tweet and reused by every retry, so a retry can never make a second tweet.

import { api, ApiError } from "./api.js";
import { describeFanout, fillTweet, findTweetById, renderTweet, setStatus } from "./tweets.js";

const form = document.getElementById("compose");
const timeline = document.getElementById("timeline");

// Bodies of tweets the server has not yet accepted, by client_id, for the Retry button.
const unsent = new Map();

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

async function send(el, body, clientId) {
  unsent.set(clientId, body);
  setStatus(el, "sending", "Sending…");
  let answer;
  try {
    answer = await api("/api/tweets", { method: "POST", body: { body, client_id: clientId } });
  } catch (error) {
    // A 503 carries Retry-After: automatic backoff will hook in here.
    setStatus(el, "failed", failureText(error));
    return;
  }
  unsent.delete(clientId);
  reconcile(el, answer.tweet, answer.fanout);
}

function reconcile(el, tweet, fanout) {
  // The same tweet may already be on the page (a retry after a lost answer, a live update).
  const twin = findTweetById(timeline, tweet.id);
  if (twin && twin !== el) twin.remove();
  fillTweet(el, tweet);
  const { state, text } = describeFanout(fanout);
  setStatus(el, state, text);
}

function init() {
  const textarea = form.elements.body;
  const button = form.querySelector('button[type="submit"]');
  const counter = form.querySelector("[data-counter]");
  const max = Number(form.dataset.maxLength);

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

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = textarea.value;
    const length = tweetLength(body);
    if (length === 0 || length > max) return;

    // Errors from a post made without JavaScript no longer apply.
    form.querySelector("#compose-errors")?.remove();
    textarea.removeAttribute("aria-invalid");
    textarea.removeAttribute("aria-describedby");

    const clientId = newClientId();
    const el = renderTweet({
      id: null,
      author: { username: form.dataset.author },
      body: body.normalize("NFC").trim(),
      created_at: new Date().toISOString(),
      client_id: clientId,
    });
    timeline.prepend(el);
    document.querySelector("[data-empty-state]")?.remove();
    textarea.value = "";
    updateCounter();
    textarea.focus();
    send(el, body, clientId);
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
    if (unsent.has(clientId)) send(el, unsent.get(clientId), clientId);
  });

  updateCounter();
}

if (form && timeline) init();
