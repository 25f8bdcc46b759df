// The follow button: the plain form posts to /u/<name>/follow without JavaScript; with it, the
// API is called and the counts change in place.

import { api } from "./api.js";

const form = document.querySelector(".follow-form");

function userPath(username) {
  return `/api/users/${encodeURIComponent(username)}`;
}

function showCount(name, count) {
  document.querySelector(`[data-count="${name}"]`).textContent = String(count);
  const label = document.querySelector(`[data-count-label="${name}"]`);
  if (label) label.textContent = count === 1 ? label.dataset.one : label.dataset.many;
}

// profile: the API's {user, followers, following, followed_by_me}
function showProfile(profile) {
  showCount("followers", profile.followers);
  showCount("following", profile.following);
  const button = form.querySelector("button");
  form.elements.action.value = profile.followed_by_me ? "unfollow" : "follow";
  button.textContent = profile.followed_by_me ? "Unfollow" : "Follow";
  button.classList.toggle("button-primary", !profile.followed_by_me);
  button.classList.toggle("button-secondary", profile.followed_by_me);
}

async function toggleFollow(event) {
  event.preventDefault();
  const button = form.querySelector("button");
  const error = document.querySelector("[data-follow-error]");
  const path = userPath(form.dataset.username);
  button.disabled = true;
  error.hidden = true;
  try {
    if (form.elements.action.value === "unfollow") {
      await api(`${path}/follow`, { method: "DELETE" }); // 204: no body, so read the counts again
      showProfile(await api(path));
    } else {
      showProfile(await api(`${path}/follow`, { method: "POST" }));
    }
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

if (form) form.addEventListener("submit", toggleFollow);

// One's own scheduled tweets: Cancel through the API (the plain form cancels without
// JavaScript), and each time in the browser's zone.
const scheduled = document.querySelector("[data-scheduled]");

function initScheduled() {
  for (const time of scheduled.querySelectorAll("time.scheduled-time")) {
    const at = new Date(time.dateTime);
    if (!Number.isNaN(at.getTime())) time.textContent = at.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }
  scheduled.addEventListener("submit", async (event) => {
    const cancel = event.target.closest(".scheduled-cancel");
    if (!cancel) return;
    event.preventDefault();
    const item = cancel.closest("[data-scheduled-id]");
    const button = cancel.querySelector("button");
    if (!window.confirm("Cancel this scheduled tweet? It will not go out.")) return;
    button.disabled = true;
    try {
      await api(`/api/tweets/${item.dataset.scheduledId}`, { method: "DELETE" });
    } catch (failure) {
      if (failure.status === 404) {
        // Not scheduled any more: it went out meanwhile (it is a tweet now, with an id of its own).
        const note = document.createElement("p");
        note.className = "scheduled-gone";
        note.setAttribute("role", "status");
        note.textContent = "This one has gone out already: reload to see it among your tweets.";
        cancel.replaceWith(note);
        return;
      }
      button.disabled = false;
      button.textContent = "Cancel (failed: try again)";
      button.title = failure.message;
      return;
    }
    item.remove();
    if (!scheduled.children.length) {
      document.getElementById("scheduled-title")?.remove();
      scheduled.remove();
    }
  });
}

if (scheduled) initScheduled();
