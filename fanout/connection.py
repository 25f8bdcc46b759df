"""One Redis client (and connection pool) per process, shared by everything that talks to Redis.

django-rq's ``get_connection`` builds a new client, with a new pool, on every call; on the
hot paths (admission on every POST, the scripts of every fan-out batch) that meant a new TCP
connection each time. The pool is thread-safe and redis-py resets it after a fork.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from redis import Redis


@cache
def _client(url: str) -> Redis:
    return Redis.from_url(url, health_check_interval=30)


def get_redis() -> Redis:
    return _client(settings.REDIS_URL)
