// A tweet element: built from the page's <template id="tweet-template"> (the same markup the
// server renders from templates/timeline/_tweet.html), found again by id or client_id, and
// given a status line. Everything from the server goes in through textContent.

import { api } from "./api.js";

const TEMPLATE_ID = "tweet-template";

export function profileUrl(username) {
  return `/u/${encodeURIComponent(username)}/`;
}

// payload: {id, author: {username}, body, created_at, client_id}; id may be null for a tweet
// drawn before the server has answered.
export function renderTweet(payload) {
  const template = document.getElementById(TEMPLATE_ID);
  const el = template.content.firstElementChild.cloneNode(true);
  fillTweet(el, payload);
  return el;
}

export function fillTweet(el, payload) {
  el.dataset.tweetId = payload.id ?? "";
  el.dataset.clientId = payload.client_id ?? "";
  const author = el.querySelector(".tweet-author");
  author.textContent = payload.author.username;
  author.href = profileUrl(payload.author.username);
  fillBody(el.querySelector(".tweet-body"), payload);
  setTime(el.querySelector(".tweet-time"), payload.created_at);
  const permalink = el.querySelector(".tweet-permalink");
  if (payload.id != null) permalink.href = `/t/${encodeURIComponent(payload.id)}/`;
  else permalink.removeAttribute("href");
  // One's own tweet, once the server has given it an id, can be deleted.
  const remove = el.querySelector(".tweet-delete");
  const mine = payload.id != null && payload.author.username === document.body.dataset.username;
  remove.hidden = !mine;
  if (mine) remove.action = `/tweets/${encodeURIComponent(payload.id)}/delete`;
}

// -- deleting ---------------------------------------------------------------------------------

// Tweets deleted while this page is open: one that arrives later (a fan-out that raced the
// delete, a page of older tweets read before the delete) is not shown again.
const deleted = new Set();

export function isDeleted(id) {
  return deleted.has(Number(id));
}

// The tweet leaves this page (a delete here, or a tweet.deleted event from another page).
export function removeTweet(root, id) {
  deleted.add(Number(id));
  findTweetById(root, id)?.remove();
}

// The delete buttons of the tweets in root: confirm, DELETE through the API, and the tweet
// leaves the page. Without JavaScript the same button posts its form.
export function enableDeleting(root) {
  root.addEventListener("submit", async (event) => {
    const form = event.target.closest(".tweet-delete");
    if (!form) return;
    event.preventDefault();
    const el = form.closest(".tweet");
    const id = el?.dataset.tweetId;
    if (!id || !window.confirm("Delete this tweet? This cannot be undone.")) return;
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await api(`/api/tweets/${encodeURIComponent(id)}`, { method: "DELETE" });
      removeTweet(root, id);
    } catch (failure) {
      button.disabled = false;
      setStatus(el, "delete-failed", `Not deleted. ${failure.message}`);
    }
  });
}

// The body from the server's parts (timeline/text.py: the same tokenizer as the page the server
// renders), as elements and text nodes: nothing from the tweet is ever parsed as HTML.
const LINK_REL = "nofollow noopener noreferrer";
const SHOWN_URL_LENGTH = 40;

function fillBody(el, payload) {
  if (!Array.isArray(payload.parts)) {
    el.textContent = payload.body ?? "";
    return;
  }
  el.replaceChildren(
    ...payload.parts.map(([kind, value, key]) => {
      if (kind === "text") return document.createTextNode(value);
      const a = document.createElement("a");
      if (kind === "mention") {
        a.className = "mention";
        a.href = profileUrl(value);
        a.textContent = `@${value}`;
      } else if (kind === "tag") {
        a.className = "tag";
        a.href = `/tags/${encodeURIComponent(key ?? value)}/`;
        a.textContent = `#${value}`;
      } else if (kind === "url" && /^https?:\/\//i.test(value)) {
        a.href = value;
        a.rel = LINK_REL;
        const shown = Array.from(value.split("://").slice(1).join("://")); // code points, as the server counts
        a.textContent = shown.length <= SHOWN_URL_LENGTH ? shown.join("") : `${shown.slice(0, SHOWN_URL_LENGTH - 1).join("")}…`;
      } else {
        return document.createTextNode(String(value));
      }
      return a;
    }),
  );
}

export function findTweetById(root, id) {
  return root.querySelector(`.tweet[data-tweet-id="${CSS.escape(String(id))}"]`);
}

export function findTweetByClientId(root, clientId) {
  return root.querySelector(`.tweet[data-client-id="${CSS.escape(String(clientId))}"]`);
}

// The one place a tweet's status line changes: posting (compose.js) now, live delivery progress
// later. state is "" (no status), "sending", "backoff" (server busy, an automatic retry is
// due), "failed" (the server did not take the tweet), "delete-failed", or a
// fan-out state: "pending", "queued", "running", "done", "delivery-failed".
export function setStatus(el, state, text = "") {
  const status = el.querySelector(".tweet-status");
  status.dataset.state = state;
  status.querySelector(".tweet-status-text").textContent = text;
  // Waiting to be sent again (server busy, offline): "Retry now"; given up on: "Retry".
  const waiting = state === "backoff" || state === "offline";
  const retry = status.querySelector(".tweet-retry");
  retry.hidden = !(waiting || state === "failed");
  retry.textContent = waiting ? "Retry now" : "Retry";
  el.classList.toggle("is-sending", state === "sending" || waiting);
  el.classList.toggle("is-failed", state === "failed");
  if (state !== "running") status.querySelector(".tweet-progress")?.setAttribute("hidden", "");
  if (state === "sending" || waiting) el.setAttribute("aria-busy", "true");
  else el.removeAttribute("aria-busy");
}

// A fan-out's state on the tweet: the status line, and while it runs, a progress bar.
export function showFanout(el, fanout) {
  const { state, text } = describeFanout(fanout);
  setStatus(el, state, text);
  const bar = el.querySelector(".tweet-progress");
  if (!bar) return;
  const recipients = Number(fanout?.recipients ?? 0);
  bar.hidden = !(fanout?.state === "running" && recipients > 0);
  if (!bar.hidden) {
    bar.max = recipients;
    bar.value = Math.min(Number(fanout.delivered ?? 0), recipients);
  }
}

// The delivery of one's own tweets as the server rendered it (data-fanout), so a reload keeps it.
export function showDeliveries(root) {
  for (const status of root.querySelectorAll(".tweet-status[data-fanout]")) {
    try {
      showFanout(status.closest(".tweet"), JSON.parse(status.dataset.fanout));
    } catch {
      // not JSON: leave the line empty
    }
    status.removeAttribute("data-fanout");
  }
}

function plural(count, one, many) {
  return `${count.toLocaleString()} ${count === 1 ? one : many}`;
}

// A fan-out (as in the API: {state, recipients, delivered, ...}, or a live fanout.progress /
// fanout.done event) as a status state and text.
export function describeFanout(fanout) {
  if (!fanout) return { state: "", text: "" };
  const delivered = Number(fanout.delivered ?? 0);
  const recipients = Number(fanout.recipients ?? 0);
  switch (fanout.state) {
    case "pending":
    case "queued":
      return { state: fanout.state, text: "Posted · queued for delivery" };
    case "running":
      return {
        state: "running",
        text: `Posted · delivering ${delivered.toLocaleString()}/${recipients.toLocaleString()}`,
      };
    case "done":
      if (recipients === 0) return { state: "done", text: "Posted · no followers to deliver to yet" };
      if (fanout.mode === "read") {
        // A big account: written once, merged into each follower's timeline when they read it.
        const live = Number(fanout.live ?? 0);
        const later = Math.max(0, recipients - live);
        return {
          state: "done",
          text: `Posted · delivered live to ${plural(live, "online follower", "online followers")}; ` +
            `${later.toLocaleString()} will read it on demand`,
        };
      }
      return { state: "done", text: `Posted · delivered to ${plural(delivered, "follower", "followers")}` };
    case "failed":
      return { state: "delivery-failed", text: "Posted · delivery to followers failed; it will be retried" };
    default:
      return { state: String(fanout.state), text: `Posted · ${fanout.state}` };
  }
}

// -- times ----------------------------------------------------------------------------------

const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const dayYearFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });

function shortTime(date, now = new Date()) {
  const seconds = (now - date) / 1000;
  if (seconds < 45) return "just now"; // also covers a client clock a little behind the server's
  if (seconds < 3600) return `${Math.max(1, Math.round(seconds / 60))}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
  return (date.getFullYear() === now.getFullYear() ? dayFormat : dayYearFormat).format(date);
}

export function setTime(timeEl, iso) {
  timeEl.dateTime = iso ?? "";
  showTime(timeEl);
}

function showTime(timeEl) {
  const date = new Date(timeEl.dateTime);
  if (!timeEl.dateTime || Number.isNaN(date.getTime())) {
    timeEl.textContent = "";
    timeEl.removeAttribute("title");
    return;
  }
  timeEl.textContent = shortTime(date);
  timeEl.title = fullFormat.format(date);
}

// Server-rendered times are absolute and in UTC; show them relative, in the reader's zone.
export function localizeTimes(root = document) {
  root.querySelectorAll("time.tweet-time").forEach(showTime);
}
