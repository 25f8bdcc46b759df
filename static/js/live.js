// The live timeline: a websocket to /ws/timeline/ that brings followed users' new tweets and
// the delivery progress of one's own. It reconnects by itself (backoff with full jitter), and
// after every (re)connection fills the gap from the home timeline API, so a tweet missed while
// offline is shown, and a tweet already shown is never shown twice.

import { api } from "./api.js";
import { delay } from "./backoff.js";
import {
  findTweetByClientId,
  findTweetById,
  isDeleted,
  localizeTimes,
  removeTweet,
  renderTweet,
  showFanout,
} from "./tweets.js";

const PING_EVERY_MS = 25_000;
const RECONNECT = { base: 1000, cap: 30_000 };
const NEAR_TOP_PX = 120;
const GAP_PAGE_SIZE = 100;
const GAP_MAX_PAGES = 10;
const GAP_TRIES = 8;
const GAP_RETRY = { base: 500, cap: 8000 };
const LABELS = {
  connected: "Live",
  connecting: "Connecting…",
  offline: "Offline",
  ended: "Signed out",
  replaced: "Paused: open in another page",
};
// Close codes after which reconnecting cannot help (timeline/consumers.py).
const CLOSE_UNAUTHENTICATED = 4401; // logged out, the session ended or expired, the password changed
const CLOSE_REPLACED = 4409; // this account opened too many sockets; this page's was the oldest

const timeline = document.getElementById("timeline");
const me = document.getElementById("compose")?.dataset.author;
// On an older page (/?before=) new tweets do not belong in the list: only the bar shows them.
const viewingOlder = new URLSearchParams(location.search).has("before");

let socket = null;
let attempt = 0;
// A socket closed with 4401 tries once more at once: its session may have been replaced by the
// one the browser now holds (a login over it, a change of one's own password). A socket that
// has heard from the server since is owed that try again.
let triedAfterEnd = false;
let reconnectTimer = null;
let pingTimer = null;
let paused = false; // set by the test hook: no reconnecting until resumed
let held = []; // tweets that arrived while the reader was scrolled down, any order
const earlyFanout = new Map(); // tweet_id -> the newest fanout event for a tweet not yet on the page

// -- the status dot ---------------------------------------------------------------------------

const indicator = document.createElement("span");
indicator.className = "live-status";
indicator.setAttribute("role", "status");
const dot = document.createElement("span");
dot.className = "live-dot";
dot.setAttribute("aria-hidden", "true");
const label = document.createElement("span");
label.className = "live-label";
indicator.append(dot, label);

function showState(state) {
  indicator.dataset.liveState = state;
  label.textContent = LABELS[state];
  indicator.title = `Live updates: ${LABELS[state].toLowerCase()}`;
}

// -- what a screen reader hears: arrivals and the bar, said politely -------------------------

const announcer = document.createElement("p");
announcer.className = "visually-hidden";
announcer.setAttribute("aria-live", "polite");
announcer.dataset.announcer = "";

function announce(text) {
  // Emptied first: the same words twice in a row are said twice.
  announcer.textContent = "";
  setTimeout(() => {
    announcer.textContent = text;
  }, 50);
}

function describeArrivals(tweets) {
  if (tweets.length === 1) return `New tweet from ${tweets[0].author?.username ?? "someone"}`;
  return `${tweets.length.toLocaleString()} new tweets`;
}

// -- the "N new tweets" bar -------------------------------------------------------------------

const bar = document.createElement("button");
bar.type = "button";
bar.className = "new-tweets-bar";
bar.hidden = true;
bar.addEventListener("click", () => {
  if (viewingOlder) {
    location.assign("/");
    return;
  }
  const tweets = held;
  held = [];
  updateBar();
  insertAtTop(tweets, { animate: false });
  window.scrollTo({ top: 0, behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth" });
});

function updateBar() {
  bar.hidden = held.length === 0;
  bar.textContent = `${held.length.toLocaleString()} new ${held.length === 1 ? "tweet" : "tweets"}`;
}

// -- tweets -----------------------------------------------------------------------------------

function isShown(tweet) {
  return Boolean(
    findTweetById(timeline, tweet.id) ||
      (tweet.client_id && findTweetByClientId(timeline, tweet.client_id)) ||
      held.some((t) => t.id === tweet.id),
  );
}

function newestShownId() {
  let newest = 0;
  for (const el of timeline.querySelectorAll(".tweet[data-tweet-id]")) {
    const id = Number(el.dataset.tweetId);
    if (Number.isInteger(id) && id > newest) newest = id;
  }
  for (const t of held) newest = Math.max(newest, t.id);
  return newest;
}

// Tweets are newest first on the page; each new one goes above every older one it meets,
// though below the author's own tweets still being sent (they have no id yet).
function insertAtTop(tweets, { animate }) {
  const fresh = tweets.filter((t) => !findTweetById(timeline, t.id)).sort((a, b) => a.id - b.id);
  for (const tweet of fresh) {
    if (tweet.client_id && findTweetByClientId(timeline, tweet.client_id)) continue;
    const el = renderTweet(tweet);
    if (animate) {
      el.classList.add("is-arriving");
      el.addEventListener("animationend", () => el.classList.remove("is-arriving"), { once: true });
    }
    const older = [...timeline.children].find((child) => Number(child.dataset.tweetId) < tweet.id && child.dataset.tweetId);
    timeline.insertBefore(el, older ?? null);
    applyEarlyFanout(tweet.id, el);
  }
  if (fresh.length) document.querySelector("[data-empty-state]")?.remove();
  localizeTimes(timeline);
}

function nearTop() {
  return window.scrollY <= NEAR_TOP_PX;
}

function arrive(tweets) {
  const fresh = tweets.filter((t) => t && Number.isInteger(t.id) && !isShown(t) && !isDeleted(t.id));
  if (!fresh.length) return;
  if (!viewingOlder && nearTop() && held.length === 0) {
    insertAtTop(fresh, { animate: true });
    const others = fresh.filter((t) => t.author?.username !== me); // one's own are not news
    if (others.length) announce(describeArrivals(others));
  } else {
    held.push(...fresh);
    updateBar();
    announce(`${bar.textContent}: the button above the timeline shows them`);
  }
}

// A tweet deleted (here, in another page, or by its author): off the page, and out of the bar.
function forget(id) {
  if (!Number.isInteger(id)) return;
  removeTweet(timeline, id);
  const before = held.length;
  held = held.filter((t) => t.id !== id);
  if (held.length !== before) updateBar();
}

// The trends panel, from a trends.updated event: [{tag, count}], most used first.
function showTrends(trends) {
  const list = document.querySelector("[data-trends]");
  if (!list || !Array.isArray(trends)) return;
  list.replaceChildren(
    ...trends.map(({ tag, count }) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = `/tags/${encodeURIComponent(tag)}/`;
      link.textContent = `#${tag}`;
      const number = document.createElement("span");
      number.className = "trends-count";
      number.textContent = String(count);
      item.append(link, " ", number);
      return item;
    }),
  );
  document.querySelector("[data-trends-empty]").hidden = trends.length > 0;
}

// A tweet that mentions the reader: a line above the timeline, read out, linking to it.
function noteMention(tweet) {
  if (!tweet || !Number.isInteger(tweet.id) || isDeleted(tweet.id)) return;
  let notice = document.querySelector("[data-mentions]");
  if (!notice) {
    notice = document.createElement("p");
    notice.className = "mention-notice";
    notice.dataset.mentions = "";
    notice.setAttribute("role", "status");
    timeline.before(notice);
  }
  const link = document.createElement("a");
  link.href = `/t/${encodeURIComponent(tweet.id)}/`;
  link.textContent = `${tweet.author.username} mentioned you`;
  notice.replaceChildren(link);
}

// -- delivery progress of one's own tweets ----------------------------------------------------

function applyFanout(el, event) {
  const current = el.querySelector(".tweet-status")?.dataset.state;
  // Events can overtake each other; progress never undoes a finished delivery.
  if (current === "done" && event.state !== "done") return;
  showFanout(el, event);
}

function applyEarlyFanout(id, el) {
  const event = earlyFanout.get(Number(id));
  if (!event) return;
  earlyFanout.delete(Number(id));
  applyFanout(el, event);
}

function onFanout(event) {
  const el = findTweetById(timeline, event.tweet_id);
  if (el) {
    applyFanout(el, event);
    return;
  }
  // The POST answer (which gives the element its id) has not come yet: keep the newest event.
  const kept = earlyFanout.get(event.tweet_id);
  if (!kept || kept.state !== "done" || event.state === "done") earlyFanout.set(event.tweet_id, event);
  if (earlyFanout.size > 200) earlyFanout.delete(earlyFanout.keys().next().value);
}

timeline.addEventListener("tweet:posted", (event) => applyEarlyFanout(event.detail.id, event.detail.el));

// -- filling the gap after a (re)connection ---------------------------------------------------

// Tweets do not reach a timeline in id order (two fan-outs run at once), so "after the newest
// shown" could skip an older tweet that arrived while the socket was down. The server's low
// watermark (fanout/watermark.py) is the id at or below which everything had arrived when it
// last spoke to this page: asking after the lower of the two misses nothing, and the few tweets
// fetched twice are dropped by arrive().
let watermark = Number.parseInt(timeline?.dataset.watermark ?? "", 10);

function noteWatermark(value) {
  if (Number.isInteger(value)) watermark = value;
}

async function fillGap(after) {
  const found = [];
  let before = null;
  let heard = null;
  for (let page = 0; page < GAP_MAX_PAGES; page += 1) {
    const query = new URLSearchParams({ after: String(after), limit: String(GAP_PAGE_SIZE) });
    if (before != null) query.set("before", String(before));
    const answer = await api(`/api/timeline/home?${query}`);
    heard ??= answer.watermark; // the first page's, read before any of the pages
    found.push(...answer.tweets);
    if (answer.next_before == null) break;
    before = answer.next_before;
  }
  arrive(found);
  return heard;
}

// After each (re)connection the gap is filled before anything else moves the watermark: a pong
// on the new socket says what the server has pushed to *this* socket, not what the page missed
// while it had none. A fill that fails (the API away for a moment, a balancer still sending it
// to a server that just died) is tried again, with the same `after`, while the socket stays
// open; if it keeps failing, the socket is dropped, so that the next connection tries anew.
let gapFilled = false;

async function fillGapForConnection(ws) {
  gapFilled = false;
  if (viewingOlder) {
    gapFilled = true;
    return;
  }
  const newest = newestShownId();
  const after = Number.isInteger(watermark) ? Math.min(newest, watermark) : newest;
  for (let tries = 0; tries < GAP_TRIES; tries += 1) {
    if (socket !== ws) return;
    try {
      noteWatermark(await fillGap(after));
      gapFilled = true;
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, delay(tries, GAP_RETRY)));
    }
  }
  if (socket === ws) ws.close();
}

// -- the socket -------------------------------------------------------------------------------

function connect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  if (paused || socket) return;
  showState("connecting");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/timeline/`);
  socket = ws;

  ws.addEventListener("open", () => {
    attempt = 0;
    showState("connected");
    pingTimer = setInterval(() => ws.send(JSON.stringify({ type: "ping" })), PING_EVERY_MS);
    fillGapForConnection(ws);
  });
  ws.addEventListener("message", (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    triedAfterEnd = false;
    if (indicator.dataset.liveState !== "connected") showState("connected"); // it is live after all
    if (event.type === "tweet.new") arrive([event.tweet]);
    else if (event.type === "tweet.deleted") forget(event.tweet_id);
    else if (event.type === "mention.new") noteMention(event.tweet);
    else if (event.type === "trends.updated") showTrends(event.trends);
    else if (event.type === "fanout.progress" || event.type === "fanout.done") onFanout(event);
    else if (event.type === "pong" && gapFilled) noteWatermark(event.watermark);
  });
  ws.addEventListener("close", (closed) => {
    clearInterval(pingTimer);
    if (socket === ws) socket = null;
    if (closed.code === CLOSE_UNAUTHENTICATED && !triedAfterEnd && !paused) {
      triedAfterEnd = true;
      connect();
      return;
    }
    if (closed.code === CLOSE_UNAUTHENTICATED || closed.code === CLOSE_REPLACED) {
      // Stay away: a new socket would be refused again, or would push out another page's.
      paused = true;
      showState(closed.code === CLOSE_REPLACED ? "replaced" : "ended");
      return;
    }
    showState(paused ? "offline" : "connecting");
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  if (paused || reconnectTimer) return;
  const wait = delay(attempt, RECONNECT);
  attempt += 1;
  showState(navigator.onLine === false ? "offline" : "connecting");
  reconnectTimer = setTimeout(connect, wait);
}

function init() {
  showState("connecting");
  document.body.append(announcer);
  const header = document.querySelector(".site-header-inner");
  (header?.querySelector(".site-nav") ?? timeline).before(indicator);
  timeline.before(bar);
  // The label follows the socket: the browser's offline and online events only say what the
  // network did, and a socket may outlive a short drop (tweets keep coming: it is live).
  window.addEventListener("online", () => {
    attempt = 0;
    if (socket?.readyState === WebSocket.OPEN) showState("connected");
    else if (!socket) connect();
  });
  window.addEventListener("offline", () => {
    if (socket?.readyState !== WebSocket.OPEN) showState("offline");
  });
  // For tests and for the curious: drop the socket and stay away, then come back.
  window.timelineLive = {
    disconnect() {
      paused = true;
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
      socket?.close();
      showState("offline");
    },
    connect() {
      paused = false;
      attempt = 0;
      connect();
    },
  };
  connect();
}

if (timeline) init();
