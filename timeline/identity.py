"""Who a session belongs to, kept in Redis, so that the hot reads need no SQL to authenticate.

Django authenticates a request by loading its user and checking that the session's hash still
matches the user's password (a password change ends other sessions). The hot reads
(timeline.hot_reads) check the same thing against ``user:<id>:auth`` in Redis: whether the user
is active, and the hashes their sessions may carry. Entries are written whenever Django loads a
user for a request (the authentication backend below) and dropped whenever a user is saved or
deleted (timeline.apps), and expire after ``TTL_SECONDS`` in any case, so even a change made
behind Django's back (an UPDATE in a shell) holds for at most that long.

The same rule closes a user's open sockets when their account changes: the websocket consumer
keeps its session's hash and is told the hashes that still count (timeline.apps).
"""

from __future__ import annotations

import json
import logging

from django.contrib.auth.backends import ModelBackend
from django.utils.crypto import constant_time_compare
from redis.exceptions import RedisError

from fanout import push
from fanout.connection import get_redis
from timeline import throttles

logger = logging.getLogger(__name__)

TTL_SECONDS = 300


def key(user_id: int) -> str:
    return f"user:{user_id}:auth"


def session_hashes(user) -> list[str]:
    """The session hashes that authenticate ``user`` now, as Django's ``get_user`` accepts them:
    the one made with SECRET_KEY, then those made with SECRET_KEY_FALLBACKS."""
    return [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]


def vouches(entry: dict, session_hash: str | None) -> bool:
    """Whether ``entry`` ({"active", "session_hashes"}, as remembered or as sent to sockets)
    says that a session carrying ``session_hash`` is still logged in."""
    hashes = entry.get("session_hashes") or []
    return (
        bool(entry.get("active")) and bool(session_hash) and any(constant_time_compare(session_hash, h) for h in hashes)
    )


def entry_for(user) -> dict:
    return {"active": user.is_active, "session_hashes": session_hashes(user)}


# What a deleted account's sockets are told: nothing authenticates it any more.
GONE = {"active": False, "session_hashes": []}


def announce_change(user_id: int, entry: dict) -> None:
    """Tell the user's open sockets what authenticates the account now (``entry_for``): each
    whose session it no longer vouches for closes (timeline.consumers)."""
    try:
        push.send_control([(user_id, push.user_changed(**entry))])
    except RedisError as exc:  # Redis away: no socket hears anything meanwhile either
        logger.warning("the sockets of user %s were not told of a change to the account (%s)", user_id, exc)


def remember(user) -> None:
    try:
        get_redis().set(key(user.pk), json.dumps(entry_for(user)), ex=TTL_SECONDS)
    except RedisError:
        pass  # a miss later means the request goes through Django, which is always right


def forget(user_id: int) -> None:
    get_redis().delete(key(user_id))


class RememberingModelBackend(ModelBackend):
    """Django's ModelBackend, which also remembers each user it loads for a request, and which
    every login form passes through (the API's, the login page's, the admin's): so it is where
    failed logins are throttled (timeline.throttles), before any password is hashed."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None or password is None:
            return super().authenticate(request, username, password, **kwargs)
        address = throttles.client_address(request) if request is not None else "unknown"
        throttles.check_login(username=username, address=address)  # Throttled: the form says so
        user = super().authenticate(request, username, password, **kwargs)
        if user is None:
            throttles.login_failed(username=username, address=address)
        return user

    def get_user(self, user_id):
        user = super().get_user(user_id)
        if user is not None:
            remember(user)
        return user
