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
