"""Who is online, and how many sockets each user holds.

Online: one Redis sorted set, user id -> the time their presence expires. A websocket marks its
user online for ``PRESENCE_TTL`` seconds as it opens, and its web process renews the marks of
all its users together while their sockets stay open (fanout.multicast.Registry), so a server
that crashes leaves no ghosts for longer than that. A user with two tabs is one member; the
later expiry wins (ZADD GT).

Sockets: one sorted set per user, channel name -> when it connected, so that one account cannot
hold any number of sockets (each costs memory in a web process and a subscription in Redis).
Past ``settings.SOCKETS_PER_USER`` the oldest are closed: the newest page is the one in use.
A socket of a crashed server stays listed until it is the oldest and is "closed", harmlessly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from redis import Redis

from fanout.connection import get_async_redis, get_redis

PRESENCE_KEY = "presence:online"
PRESENCE_TTL = 60
# Marks are renewed well inside the TTL, so one late renewal does not make a user look offline.
RENEW_EVERY = PRESENCE_TTL / 3
RENEW_CHUNK = 1000  # users per ZADD when a process renews its users' marks
# A user's socket list outlives its last socket by this much (then Redis drops it).
SOCKETS_KEY_TTL = 24 * 3600


async def mark_online(user_id: int) -> None:
    await get_async_redis().zadd(PRESENCE_KEY, {str(user_id): time.time() + PRESENCE_TTL}, gt=True)


async def mark_all_online(user_ids: Sequence[int]) -> None:
    """Renew many users' marks in one round trip (a ZADD per thousand)."""
    if not user_ids:
        return
    expires = time.time() + PRESENCE_TTL
    async with get_async_redis().pipeline(transaction=False) as pipe:
        for start in range(0, len(user_ids), RENEW_CHUNK):
            pipe.zadd(PRESENCE_KEY, {str(u): expires for u in user_ids[start : start + RENEW_CHUNK]}, gt=True)
        await pipe.execute()


def _sockets_key(user_id: int) -> str:
    return f"presence:sockets:{user_id}"


async def add_socket(user_id: int, channel_name: str, *, cap: int) -> list[str]:
    """List a new socket of the user; returns the channel names of the oldest beyond ``cap``."""
    key = _sockets_key(user_id)
    async with get_async_redis().pipeline(transaction=True) as pipe:
        pipe.zadd(key, {channel_name: time.time()})
        pipe.zrange(key, 0, -(cap + 1))  # all but the newest ``cap``
        pipe.expire(key, SOCKETS_KEY_TTL)
        _, oldest, _ = await pipe.execute()
    evicted = [name.decode() for name in oldest]
    if evicted:
        await get_async_redis().zrem(key, *evicted)
    return evicted


async def remove_socket(user_id: int, channel_name: str) -> None:
    await get_async_redis().zrem(_sockets_key(user_id), channel_name)


def online_among(user_ids: Sequence[int], *, redis: Redis | None = None) -> list[int]:
    """The subset of ``user_ids`` that is online now, in one round trip."""
    if not user_ids:
        return []
    redis = redis or get_redis()
    now = time.time()
    scores = redis.zmscore(PRESENCE_KEY, [str(u) for u in user_ids])
    return [u for u, expires in zip(user_ids, scores, strict=True) if expires is not None and expires > now]


def online_batches(size: int, *, redis: Redis | None = None) -> Iterator[list[int]]:
    """Everyone online now, ``size`` at a time (SCAN: someone who comes or goes meanwhile may be
    seen once, twice or not at all, which live push, best effort by design, can afford)."""
    redis = redis or get_redis()
    now, batch = time.time(), []
    for member, expires in redis.zscan_iter(PRESENCE_KEY, count=size):
        if expires > now:
            batch.append(int(member))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def prune(*, redis: Redis | None = None) -> int:
    """Drop expired marks (readers ignore them anyway; this keeps the set small)."""
    return int((redis or get_redis()).zremrangebyscore(PRESENCE_KEY, "-inf", time.time()))
