"""Home timelines in Redis: one sorted set per user, ``tl:home:<user_id>``.

Score and member are both the tweet id, so the set is in posting order and a tweet added twice
is still there once: delivery is at-least-once, and this makes it idempotent. Each set is
capped at ``TIMELINE_CAP`` entries (older pages come from the database).

A timeline that is not in Redis is not empty, it is *not materialized*: it is rebuilt from the
database on the next read. Timelines nobody reads expire after ``TIMELINE_IDLE_DAYS`` (each read
renews them), so fan-out keeps writing only into the timelines of people who come back. Every materialized set therefore holds a sentinel member ``"0"``
with score 0, created *before* the rebuild reads the database. Fan-out only writes into sets
that exist, which closes the race with a rebuild in flight: either the fan-out sees the
sentinel and adds its tweet, or it ran before the sentinel was made, hence before the rebuild's
query, which then sees the committed tweet. Readers ask for scores above 0 and never see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.conf import settings
from redis import Redis

from fanout.connection import get_redis

SENTINEL = b"0"
# A rebuild that dies between making the sentinel and filling the set must not leave a
# half-built timeline forever: until it finishes, the set expires after this many seconds.
REBUILD_TTL_SECONDS = 60

# Adds ARGV[1] to every timeline in KEYS that exists, then trims each to ARGV[2] tweets.
# Rank 0 is the sentinel (score 0), so the trim keeps it and drops the oldest tweets.
_ADD_SCRIPT = """
local added = 0
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', key, ARGV[1], ARGV[1])
    redis.call('ZREMRANGEBYRANK', key, 1, -(tonumber(ARGV[2]) + 1))
    added = added + 1
  end
end
return added
"""

# Creates KEYS[1] holding only the sentinel, expiring in ARGV[1] seconds, unless it exists.
# (A script rather than EXPIRE NX, which Redis 6.2, the bundled fallback server, lacks.)
_BEGIN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 0, '0')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

# Merges the tweet ids in ARGV[3..] into KEYS[1] if it still exists (a follow or unfollow
# may have dropped it meanwhile: then the rebuilt list is stale and must not be written),
# trims it to ARGV[1] tweets, and gives it the idle lifetime ARGV[2] (seconds).
_MERGE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 1, -(tonumber(ARGV[1]) + 1))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def key(user_id: int) -> str:
    return f"tl:home:{user_id}"


def add(*, tweet_id: int, user_ids: Sequence[int], redis: Redis | None = None) -> int:
    """Add a tweet to the materialized timelines among ``user_ids``; returns how many."""
    if not user_ids:
        return 0
    redis = redis or get_redis()
    script = redis.register_script(_ADD_SCRIPT)
    return int(script(keys=[key(u) for u in user_ids], args=[tweet_id, settings.TIMELINE_CAP]))


def is_materialized(user_id: int, *, redis: Redis | None = None) -> bool:
    return bool((redis or get_redis()).exists(key(user_id)))


def begin_rebuild(user_id: int, *, redis: Redis | None = None) -> None:
    redis = redis or get_redis()
    redis.register_script(_BEGIN_SCRIPT)(keys=[key(user_id)], args=[REBUILD_TTL_SECONDS])


def finish_rebuild(user_id: int, tweet_ids: Iterable[int], *, redis: Redis | None = None) -> bool:
    redis = redis or get_redis()
    script = redis.register_script(_MERGE_SCRIPT)
    return bool(script(keys=[key(user_id)], args=[settings.TIMELINE_CAP, idle_seconds(), *tweet_ids]))


def idle_seconds() -> int:
    return settings.TIMELINE_IDLE_DAYS * 86400


def remove(user_id: int, tweet_ids: Iterable[int], *, redis: Redis | None = None) -> None:
    """Drop tweet ids (of deleted tweets) from one timeline."""
    tweet_ids = list(tweet_ids)
    if tweet_ids:
        (redis or get_redis()).zrem(key(user_id), *tweet_ids)


def invalidate(user_ids: Iterable[int], *, redis: Redis | None = None) -> None:
    keys = [key(u) for u in user_ids]
    if keys:
        (redis or get_redis()).delete(*keys)


def queue_page(pipe, user_id: int, *, limit: int, before: int | None = None, after: int | None = None) -> None:
    """Add to a pipeline (sync or async) the commands that read a page; see ``page``. A read
    also renews the timeline's idle lifetime: one nobody reads leaves Redis after
    TIMELINE_IDLE_DAYS, fan-out stops writing into it, and the next read rebuilds it."""
    high = f"({before}" if before is not None else "+inf"
    low = f"({max(after or 0, 0)}"
    pipe.zrevrangebyscore(key(user_id), high, low, start=0, num=limit)
    pipe.zcard(key(user_id))
    pipe.expire(key(user_id), idle_seconds())


def page_from(ids: list[bytes], size: int, renewed: int = 0) -> tuple[list[int], int]:
    """The answers of ``queue_page``'s commands: the ids, and the set's size without the sentinel
    (-1 if the timeline is not materialized)."""
    return [int(i) for i in ids], size - 1


def page(
    user_id: int, *, limit: int, before: int | None = None, after: int | None = None, redis: Redis | None = None
) -> tuple[list[int], int]:
    """Tweet ids newest first with ``after < id < before``, and the set's size (sentinel excluded)."""
    with (redis or get_redis()).pipeline(transaction=False) as pipe:
        queue_page(pipe, user_id, limit=limit, before=before, after=after)
        ids, size = page_from(*pipe.execute())
    return ids, max(size, 0)
