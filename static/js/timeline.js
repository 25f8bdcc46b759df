// The list of tweets: times shown relative and in the reader's zone, and "Older tweets" paging
// through the JSON API. Without JavaScript the home page's "Older" link loads /?before=<id>.

import { api } from "./api.js";
import { enableDeleting, findTweetById, isDeleted, localizeTimes, renderTweet, showDeliveries } from "./tweets.js";

const REFRESH_TIMES_MS = 60_000;

const timeline = document.getElementById("timeline");
const older = document.querySelector("[data-older]");

async function loadOlder(event) {
  event.preventDefault();
  if (older.getAttribute("aria-busy") === "true") return;
  const error = older.parentElement.querySelector("[data-older-error]");
  const label = older.textContent;
  older.setAttribute("aria-busy", "true");
  older.textContent = "Loading…";
  error.hidden = true;
  try {
    const query = new URLSearchParams({ before: older.dataset.before });
    const page = await api(`${older.dataset.source}?${query}`);
    for (const tweet of page.tweets) {
      // A tweet can be both on the page and in the next page (posted or delivered meanwhile).
      if (!findTweetById(timeline, tweet.id) && !isDeleted(tweet.id)) timeline.append(renderTweet(tweet));
    }
    if (page.next_before == null) {
      older.parentElement.remove();
      return;
    }
    older.dataset.before = page.next_before;
    if (older.href) {
      const url = new URL(older.href);
      url.searchParams.set("before", page.next_before);
      older.href = url;
    }
  } catch (failure) {
    error.textContent = `Could not load older tweets. ${failure.message}`;
    error.hidden = false;
  } finally {
    older.removeAttribute("aria-busy");
    older.textContent = label;
  }
}

if (timeline) {
  enableDeleting(timeline);
  showDeliveries(timeline);
  localizeTimes(timeline);
  setInterval(() => localizeTimes(timeline), REFRESH_TIMES_MS);
}
if (timeline && older) {
  older.hidden = false;
  older.addEventListener("click", loadOlder);
}
