"""Timelines in Redis: home timelines, and the recent tweets of authors merged on read.

``tl:home:<user_id>``, one sorted set per user, score and member both the tweet id, so the set
is in posting order and a tweet added twice is still there once: delivery is at-least-once, and
this makes it idempotent. Each set is capped at ``TIMELINE_CAP`` entries (older pages come from
the database).

A timeline that is not in Redis is not empty, it is *not materialized*: it is rebuilt from the
database on the next read. Every materialized set therefore holds a sentinel member ``"0"``
with score 0, created *before* the rebuild reads the database. Fan-out only writes into sets
that exist, which closes the race with a rebuild in flight: either the fan-out sees the
sentinel and adds its tweet, or it ran before the sentinel was made, hence before the rebuild's
query, which then sees the committed tweet. Readers ask for scores above 0 and never see it.
Timelines nobody reads expire after ``TIMELINE_IDLE_DAYS`` (each read renews them), so fan-out
keeps writing only into the timelines of people who come back.

Authors with more followers than ``FANOUT_ON_READ_THRESHOLD`` are not fanned out on write
(fanout.delivery): their tweets go into ``tl:author:<author_id>`` alone, built and capped the
same way, and a reader's page merges its home timeline with the author timelines of the
merged-on-read authors it follows (``merged_authors``). ``tl:read_authors`` holds every author
ever merged on read; it only grows, so a tweet delivered that way stays reachable whatever the
author's followers or the threshold do later, and each addition bumps a version that makes
every reader's cached list of such authors stale.

All of these keys live on the timeline store (``fanout.connection.get_timeline_redis``): the
main Redis unless TIMELINE_REDIS_URL names another, or with TIMELINE_REDIS_CLUSTER a Redis
Cluster. A script there may only touch the keys of one slot, so a fan-out batch runs the add
script once per hash slot, the scripts of each master in one pipeline, the masters at once
(``_per_slot``); the pair of keys that one script updates together share a hash tag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from django.conf import settings
from redis import Redis, RedisCluster
from redis.cluster import ClusterNode
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from fanout.connection import get_timeline_redis

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

# Removes ARGV[1] from every set in KEYS; returns from how many.
_REMOVE_SCRIPT = """
local removed = 0
for i, key in ipairs(KEYS) do
  removed = removed + redis.call('ZREM', key, ARGV[1])
end
return removed
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


# One hash tag: the script below updates both, which on a cluster must share a slot.
READ_AUTHORS_KEY = "tl:{read_authors}"
READ_AUTHORS_VERSION_KEY = "tl:{read_authors}:version"

# Adds ARGV[1] to the set KEYS[1]; if it was not there, bumps the version in KEYS[2].
_MARK_READ_AUTHOR_SCRIPT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then redis.call('INCR', KEYS[2]) return 1 end
return 0
"""


def key(user_id: int) -> str:
    return f"tl:home:{user_id}"


def author_key(author_id: int) -> str:
    return f"tl:author:{author_id}"


def merged_key(user_id: int) -> str:
    return f"tl:merged:{user_id}"


def add(*, tweet_id: int, user_ids: Sequence[int], redis: Redis | None = None) -> int:
    """Add a tweet to the materialized home timelines among ``user_ids``; returns how many."""
    return _add(tweet_id, [key(u) for u in user_ids], redis)


def add_to_author(*, author_id: int, tweet_id: int, redis: Redis | None = None) -> int:
    """Add a tweet to its author's timeline, if materialized (else it is rebuilt on read)."""
    return _add(tweet_id, [author_key(author_id)], redis)


def retract(*, tweet_id: int, user_ids: Sequence[int], author_id: int | None = None, redis: Redis | None = None) -> int:
    """Remove a deleted tweet from the home timelines of ``user_ids`` (and from its author's
    timeline, which readers merge, if ``author_id``); returns from how many."""
    keys = [key(u) for u in user_ids] + ([author_key(author_id)] if author_id is not None else [])
    return _run(_REMOVE_SCRIPT, keys, [tweet_id], redis)


def _add(tweet_id: int, keys: list[str], redis: Redis | None) -> int:
    return _run(_ADD_SCRIPT, keys, [tweet_id, settings.TIMELINE_CAP], redis)


def _run(script: str, keys: list[str], args: list, redis: Redis | None) -> int:
    """Run a script over many keys (summing its answers): one call on one Redis, one per hash
    slot on a cluster."""
    if not keys:
        return 0
    client = redis or get_timeline_redis()
    if isinstance(client, RedisCluster):
        return sum(_per_slot(client, script, keys, args))
    return int(client.register_script(script)(keys=keys, args=args))


def _per_slot(cluster: RedisCluster, script: str, keys: list[str], args: list) -> list[int]:
    """Run ``script`` once for each hash slot among ``keys`` (a script may only touch one slot).

    Each master gets the scripts of its slots in one plain pipeline, the masters at once: a
    redis-py cluster pipeline costs the client about 0.1 ms a command, most of a fan-out batch
    (bench/timeline_store.py). The slot map used is the client's; a slot that answers MOVED or
    ASK (it moved), a master that lacks the script or cannot be reached, goes again through
    ``_through_cluster_pipeline``, which follows redirects, refreshes the map and loads the
    script. Every script here is idempotent, so running one twice is harmless.
    """
    by_slot: dict[int, list[str]] = {}
    for set_key in keys:
        by_slot.setdefault(cluster.keyslot(set_key), []).append(set_key)
    sha = hashlib.sha1(script.encode()).hexdigest()
    results: dict[int, int] = {}
    again: dict[int, list[str]] = {}
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    for slot, slot_keys in by_slot.items():
        try:
            node = cluster.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException:  # not in the client's map (yet): redis-py finds it
            again[slot] = slot_keys
        else:
            by_node.setdefault(node.name, (node, []))[1].append(slot)

    def run_on(node: ClusterNode, slots: list[int]) -> list:
        try:
            with cluster.get_redis_connection(node).pipeline(transaction=False) as pipe:
                for slot in slots:
                    pipe.execute_command("EVALSHA", sha, len(by_slot[slot]), *by_slot[slot], *args)
                return pipe.execute(raise_on_error=False)
        except RedisError as exc:  # the master is away: every slot of it goes again
            return [exc] * len(slots)

    shares = list(by_node.values())
    if len(shares) == 1:
        answers = [run_on(*shares[0])]
    else:
        answers = list(_node_pool().map(lambda share: run_on(*share), shares))
    for (_, slots), node_answers in zip(shares, answers, strict=True):
        for slot, answer in zip(slots, node_answers, strict=True):
            if isinstance(answer, Exception):
                again[slot] = by_slot[slot]
            else:
                results[slot] = int(answer)
    if again:
        rerun = _through_cluster_pipeline(cluster, script, sha, list(again.values()), args)
        results.update(zip(again, rerun, strict=True))
    return [results[slot] for slot in by_slot]


@cache
def _node_pool() -> ThreadPoolExecutor:
    # Threads only wait on sockets here: the masters work on their shares at once.
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="timeline-store")


def _through_cluster_pipeline(
    cluster: RedisCluster, script: str, sha: str, groups: list[list[str]], args: list
) -> list[int]:
    """Run ``script`` once for each group of keys (each of one slot) in one redis-py cluster
    pipeline, which follows MOVED and ASK; when a master lacks the script (new, failed over,
    flushed) it is loaded on every master and the whole pipeline runs again."""
    for attempt in range(2):
        with cluster.pipeline(transaction=False) as pipe:
            for slot_keys in groups:
                pipe.execute_command("EVALSHA", sha, len(slot_keys), *slot_keys, *args)
            results = pipe.execute(raise_on_error=False)
        if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
            cluster.script_load(script)  # on every master
            continue
        break
    for result in results:
        if isinstance(result, Exception):
            raise result
    return [int(r) for r in results]


def is_materialized(user_id: int, *, redis: Redis | None = None) -> bool:
    return bool((redis or get_timeline_redis()).exists(key(user_id)))


def not_materialized(user_ids: Sequence[int], *, redis: Redis | None = None) -> list[int]:
    """Those of ``user_ids`` whose home timeline is not in Redis, asked in one pipeline."""
    with (redis or get_timeline_redis()).pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.exists(key(user_id))
        found = pipe.execute()
    return [user_id for user_id, exists in zip(user_ids, found, strict=True) if not exists]


def begin_rebuild(user_id: int, *, redis: Redis | None = None) -> None:
    _begin(key(user_id), redis)


def finish_rebuild(user_id: int, tweet_ids: Iterable[int], *, redis: Redis | None = None) -> bool:
    return _finish(key(user_id), tweet_ids, redis)


def begin_author_rebuild(author_id: int, *, redis: Redis | None = None) -> None:
    _begin(author_key(author_id), redis)


def finish_author_rebuild(author_id: int, tweet_ids: Iterable[int], *, redis: Redis | None = None) -> bool:
    return _finish(author_key(author_id), tweet_ids, redis)


def _begin(set_key: str, redis: Redis | None) -> None:
    (redis or get_timeline_redis()).register_script(_BEGIN_SCRIPT)(keys=[set_key], args=[REBUILD_TTL_SECONDS])


def _finish(set_key: str, tweet_ids: Iterable[int], redis: Redis | None) -> bool:
    script = (redis or get_timeline_redis()).register_script(_MERGE_SCRIPT)
    return bool(script(keys=[set_key], args=[settings.TIMELINE_CAP, idle_seconds(), *tweet_ids]))


def idle_seconds() -> int:
    return settings.TIMELINE_IDLE_DAYS * 86400


def remove(user_id: int, tweet_ids: Iterable[int], *, authors: Iterable[int] = (), redis: Redis | None = None) -> None:
    """Drop tweet ids (of deleted tweets) from a home timeline and the author timelines it merges."""
    tweet_ids = list(tweet_ids)
    if tweet_ids:
        with (redis or get_timeline_redis()).pipeline(transaction=False) as pipe:
            for set_key in [key(user_id), *(author_key(a) for a in authors)]:
                pipe.zrem(set_key, *tweet_ids)
            pipe.execute()


def invalidate(user_ids: Iterable[int], *, redis: Redis | None = None) -> None:
    """Drop home timelines (and which merged-on-read authors they follow), to be rebuilt on read."""
    keys = [k for u in user_ids for k in (key(u), merged_key(u))]
    if keys:
        (redis or get_timeline_redis()).delete(*keys)


# -- authors merged on read ---------------------------------------------------------------------


def mark_read_author(author_id: int, *, redis: Redis | None = None) -> bool:
    """Note that this author's tweets are merged on read (for good); True if that is new."""
    script = (redis or get_timeline_redis()).register_script(_MARK_READ_AUTHOR_SCRIPT)
    return bool(script(keys=[READ_AUTHORS_KEY, READ_AUTHORS_VERSION_KEY], args=[author_id]))


def read_authors(*, redis: Redis | None = None) -> tuple[int, set[int]]:
    """The version, and every author ever merged on read."""
    with (redis or get_timeline_redis()).pipeline(transaction=False) as pipe:
        pipe.get(READ_AUTHORS_VERSION_KEY)
        pipe.smembers(READ_AUTHORS_KEY)
        version, members = pipe.execute()
    return int(version or 0), {int(m) for m in members}


def remember_merged(user_id: int, version: int, authors: Iterable[int], *, redis: Redis | None = None) -> None:
    """Cache which merged-on-read authors a user follows, as of ``version`` of the set of them."""
    value = f"{version}:" + ",".join(str(a) for a in sorted(authors))
    (redis or get_timeline_redis()).set(merged_key(user_id), value, ex=idle_seconds())


def merged_from(cached: bytes | None, version: bytes | None) -> list[int] | None:
    """The authors cached by ``remember_merged``, or None if missing or stale (the set grew since)."""
    if cached is None:
        return None
    stamp, _, authors = cached.decode().partition(":")
    if int(stamp) != int(version or 0):
        return None
    return [int(a) for a in authors.split(",") if a]


# -- reading ------------------------------------------------------------------------------------


def queue_page(pipe, user_id: int, *, limit: int, before: int | None = None, after: int | None = None) -> None:
    """Add to a pipeline (sync or async) the commands that read a page; see ``page``. A read
    also renews the timeline's idle lifetime: one nobody reads leaves Redis after
    TIMELINE_IDLE_DAYS, fan-out stops writing into it, and the next read rebuilds it."""
    _queue_range(pipe, key(user_id), limit=limit, before=before, after=after)


def queue_author_page(pipe, author_id: int, *, limit: int, before: int | None = None, after: int | None = None) -> None:
    _queue_range(pipe, author_key(author_id), limit=limit, before=before, after=after)


def _queue_range(pipe, set_key: str, *, limit: int, before: int | None, after: int | None) -> None:
    high = f"({before}" if before is not None else "+inf"
    low = f"({max(after or 0, 0)}"
    pipe.zrevrangebyscore(set_key, high, low, start=0, num=limit)
    pipe.zcard(set_key)
    pipe.expire(set_key, idle_seconds())


def page_from(ids: list[bytes], size: int, renewed: int = 0) -> tuple[list[int], int]:
    """The answers of ``queue_page``'s commands: the ids, and the set's size without the sentinel
    (-1 if the timeline is not materialized)."""
    return [int(i) for i in ids], size - 1


def page(
    user_id: int, *, limit: int, before: int | None = None, after: int | None = None, redis: Redis | None = None
) -> tuple[list[int], int]:
    """Tweet ids newest first with ``after < id < before``, and the set's size (sentinel excluded)."""
    with (redis or get_timeline_redis()).pipeline(transaction=False) as pipe:
        queue_page(pipe, user_id, limit=limit, before=before, after=after)
        ids, size = page_from(*pipe.execute())
    return ids, max(size, 0)
