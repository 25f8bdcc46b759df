"""One Redis client (and connection pool) per process, shared by everything that talks to Redis.

django-rq's ``get_connection`` builds a new client, with a new pool, on every call; on the
hot paths (admission on every POST, the scripts of every fan-out batch) that meant a new TCP
connection each time. The pool is thread-safe and redis-py resets it after a fork.

The pool is a blocking one with a bound: under overload a request waits a moment for a free
connection instead of failing at once because redis-py's default pool of 100 ran dry.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import cache

from django.conf import settings
from redis import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import RedisCluster as AsyncRedisCluster

MAX_CONNECTIONS = 64
POOL_TIMEOUT_SECONDS = 5
# With Redis away, a request must fail fast (a refused connection fails at once; a server that
# accepts but never answers, within these), so that posting answers 503 rather than hanging.
# No command we send runs long: fan-out scripts are bounded by the batch size.
CONNECT_TIMEOUT_SECONDS = 1
SOCKET_TIMEOUT_SECONDS = 5

# One async client per event loop (daphne runs one), for code running in that loop.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis] = weakref.WeakKeyDictionary()
_async_timeline_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis | AsyncRedisCluster] = (
    weakref.WeakKeyDictionary()
)


@cache
def _client(url: str) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT_SECONDS,
        health_check_interval=30,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
    )
    return Redis(connection_pool=pool)


def get_redis() -> Redis:
    return _client(settings.REDIS_URL)


def get_async_redis() -> AsyncRedis:
    """This event loop's client; its pool is bounded and blocking too, so a burst of commands
    (a thousand sockets connecting at once) waits its turn instead of failing."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = AsyncBlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_TIMEOUT_SECONDS,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
        )
        client = _async_clients[loop] = AsyncRedis(connection_pool=pool)
    return client


# -- the timeline store ----------------------------------------------------------------------------
# Home and author timelines (fanout.timelines) live on TIMELINE_REDIS_URL, by default the same
# Redis as everything else; with TIMELINE_REDIS_CLUSTER on a Redis Cluster, spread over its
# masters by key. RQ, the channel layer, admission, sessions and metrics stay on REDIS_URL.


def timelines_apart() -> bool:
    """Whether the timelines are on a store of their own (a round trip of their own)."""
    return settings.TIMELINE_REDIS_CLUSTER or settings.TIMELINE_REDIS_URL != settings.REDIS_URL


@cache
def _cluster_client(url: str) -> RedisCluster:
    # redis-py follows MOVED and ASK (a failed-over or resharded slot) and refreshes its map of
    # the slots; each master gets a pool of its own, bounded as the single client's is.
    return RedisCluster.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
    )


def get_timeline_redis() -> Redis | RedisCluster:
    if settings.TIMELINE_REDIS_CLUSTER:
        return _cluster_client(settings.TIMELINE_REDIS_URL)
    return _client(settings.TIMELINE_REDIS_URL)


def get_async_timeline_redis() -> AsyncRedis | AsyncRedisCluster:
    if not timelines_apart():
        return get_async_redis()
    loop = asyncio.get_running_loop()
    client = _async_timeline_clients.get(loop)
    if client is None:
        options = {"socket_connect_timeout": CONNECT_TIMEOUT_SECONDS, "socket_timeout": SOCKET_TIMEOUT_SECONDS}
        kind = AsyncRedisCluster if settings.TIMELINE_REDIS_CLUSTER else AsyncRedis
        client = _async_timeline_clients[loop] = kind.from_url(settings.TIMELINE_REDIS_URL, **options)
    return client
