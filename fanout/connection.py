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
from redis import BlockingConnectionPool, Redis
from redis.asyncio import Redis as AsyncRedis

MAX_CONNECTIONS = 64
POOL_TIMEOUT_SECONDS = 5
# With Redis away, a request must fail fast (a refused connection fails at once; a server that
# accepts but never answers, within these), so that posting answers 503 rather than hanging.
# No command we send runs long: fan-out scripts are bounded by the batch size.
CONNECT_TIMEOUT_SECONDS = 1
SOCKET_TIMEOUT_SECONDS = 5

# One async client per event loop (daphne runs one), for code running in that loop.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis] = weakref.WeakKeyDictionary()


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
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = AsyncRedis.from_url(
            settings.REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=SOCKET_TIMEOUT_SECONDS
        )
    return client
