"""Sessions in the database, read from Redis: Django's cached_db engine on our own Redis client.

Every authenticated request reads its session, and Django's database engine makes that a SQL
query each time. Django's cached_db engine puts a cache in front, but its Redis cache backend
pickles what it stores and has no asynchronous client (its "async" methods run the sync ones in
a thread), and the hot reads in timeline.hot_reads run in the event loop. So this engine is
cached_db with the cache replaced: session dicts as JSON under ``session:<key>`` in Redis, with
the session's own expiry, through the app's sync and async Redis clients.

The database stays the source of truth. A read that misses Redis, or finds it away, reads the
database (and puts the session back). A write goes to the database and then to Redis; if Redis
is away the copy is simply not written. A delete (logout) must reach Redis, or the session
would live on there: with Redis away, logging out fails with 503 and can be tried again.

However a session ends (logged out, replaced by a login over it, deleted in bulk or in the
admin), ``ended`` runs once it is gone from the database (timeline.apps): it drops the copy and
closes the sockets opened with the session (timeline.consumers).
"""

from __future__ import annotations

import json
import logging

from django.contrib.sessions.backends import cached_db
from redis.exceptions import RedisError

from fanout import push
from fanout.connection import get_async_redis, get_redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "session:"


class RedisSessionCache:
    """The slice of Django's cache API that cached_db uses, over the app's Redis clients."""

    def get(self, key: str):
        raw = get_redis().get(key)
        return json.loads(raw) if raw is not None else None

    def set(self, key: str, value: dict, timeout: int) -> None:
        try:
            if timeout > 0:
                get_redis().set(key, json.dumps(value, separators=(",", ":")), ex=timeout)
        except RedisError as exc:
            logger.warning("session not cached in Redis (%s); the database has it", exc)

    def delete(self, key: str) -> None:
        get_redis().delete(key)

    def __contains__(self, key: str) -> bool:
        try:
            return bool(get_redis().exists(key))
        except RedisError:
            return False  # the database is asked next

    async def aget(self, key: str):
        raw = await get_async_redis().get(key)
        return json.loads(raw) if raw is not None else None

    async def aset(self, key: str, value: dict, timeout: int) -> None:
        try:
            if timeout > 0:
                await get_async_redis().set(key, json.dumps(value, separators=(",", ":")), ex=timeout)
        except RedisError as exc:
            logger.warning("session not cached in Redis (%s); the database has it", exc)

    async def adelete(self, key: str) -> None:
        await get_async_redis().delete(key)


class SessionStore(cached_db.SessionStore):
    cache_key_prefix = KEY_PREFIX

    def __init__(self, session_key=None) -> None:
        super().__init__(session_key)
        self._cache = RedisSessionCache()


async def cached_session(session_key: str) -> dict | None:
    """The session's data if Redis has it (None otherwise: the caller asks Django)."""
    return await RedisSessionCache().aget(KEY_PREFIX + session_key)


def ended(session_key: str, user_id: int | None) -> None:
    """A session is gone from the database: drop its copy in Redis, and close its sockets."""
    get_redis().delete(KEY_PREFIX + session_key)
    if user_id is not None:
        try:
            push.send_control([(user_id, push.session_ended(session_key))])
        except RedisError as exc:  # Redis away: no socket hears anything meanwhile either
            logger.warning("the sockets of an ended session were not told (%s)", exc)
