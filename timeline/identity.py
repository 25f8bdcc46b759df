"""Who a session belongs to, kept in Redis, so that the hot reads need no SQL to authenticate.

Django authenticates a request by loading its user and checking that the session's hash still
matches the user's password (a password change ends other sessions). The hot reads
(timeline.hot_reads) check the same thing against ``user:<id>:auth`` in Redis: whether the user
is active, and the hash their sessions must carry. Entries are written whenever Django loads a
user for a request (the authentication backend below) and dropped whenever a user is saved or
deleted (timeline.apps), and expire after ``TTL_SECONDS`` in any case, so even a change made
behind Django's back (an UPDATE in a shell) holds for at most that long.
"""

from __future__ import annotations

import json

from django.contrib.auth.backends import ModelBackend
from redis.exceptions import RedisError

from fanout.connection import get_redis

TTL_SECONDS = 300


def key(user_id: int) -> str:
    return f"user:{user_id}:auth"


def remember(user) -> None:
    entry = {"active": user.is_active, "hash": user.get_session_auth_hash()}
    try:
        get_redis().set(key(user.pk), json.dumps(entry), ex=TTL_SECONDS)
    except RedisError:
        pass  # a miss later means the request goes through Django, which is always right


def forget(user_id: int) -> None:
    get_redis().delete(key(user_id))


class RememberingModelBackend(ModelBackend):
    """Django's ModelBackend, which also remembers each user it loads for a request."""

    def get_user(self, user_id):
        user = super().get_user(user_id)
        if user is not None:
            remember(user)
        return user
