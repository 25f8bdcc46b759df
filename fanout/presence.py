"""Who is online: one Redis sorted set, user id -> the time their presence expires.

Each open websocket marks its user online for ``PRESENCE_TTL`` seconds and renews the mark
while it stays open, so a server that crashes leaves no ghosts for longer than that. A user
with two tabs is one member; the later expiry wins (ZADD GT).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis import Redis

from fanout.connection import get_async_redis, get_redis

PRESENCE_KEY = "presence:online"
PRESENCE_TTL = 60
# Sockets renew well inside the TTL, so one late renewal does not make a user look offline.
RENEW_EVERY = PRESENCE_TTL / 3


async def mark_online(user_id: int) -> None:
    await get_async_redis().zadd(PRESENCE_KEY, {str(user_id): time.time() + PRESENCE_TTL}, gt=True)


def online_among(user_ids: Sequence[int], *, redis: Redis | None = None) -> list[int]:
    """The subset of ``user_ids`` that is online now, in one round trip."""
    if not user_ids:
        return []
    redis = redis or get_redis()
    now = time.time()
    scores = redis.zmscore(PRESENCE_KEY, [str(u) for u in user_ids])
    return [u for u, expires in zip(user_ids, scores, strict=True) if expires is not None and expires > now]


def prune(*, redis: Redis | None = None) -> int:
    """Drop expired marks (readers ignore them anyway; this keeps the set small)."""
    return int((redis or get_redis()).zremrangebyscore(PRESENCE_KEY, "-inf", time.time()))
