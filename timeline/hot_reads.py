"""The hottest read, ``GET /api/timeline/home``, answered from Redis in the event loop.

A timeline is read far more often than it is written, and Django's fixed cost per request
(its middleware, each hook run in a worker thread from async code, a SQL query for the session
and one for the user, the hop into the one thread that sync views share) is many times what
the read itself needs. Everything this read needs is already in Redis: the session
(timeline.sessions), what authenticates it (timeline.identity), the low watermark
(fanout.watermark), the timeline's ids (fanout.timelines, on the timeline store) and the tweets as JSON (timeline.tweet_cache).

So this ASGI app answers the request itself when, and only when, Redis has all of it: a session
that is logged in, an active user whose password has not changed since, a materialized
timeline, and every tweet of the page. Anything else (a miss, an id gone, a page that needs the
database, Redis away) goes to Django unchanged, which answers as it always does and fills the
copies on the way, so the next read is fast. The rules are Django's, not a second set: the
host is checked against ALLOWED_HOSTS, the session's hash against the user's, the query with
timeline.validation, and the answer carries the headers Django's middleware would add.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host
from redis.exceptions import RedisError

from fanout import timelines, watermark
from fanout.connection import get_async_redis, get_async_timeline_redis
from timeline import identity, selectors, sessions, tweet_cache, validation
from timeline.middleware import json_error_body, security_headers

logger = logging.getLogger(__name__)

PATH = "/api/timeline/home"


class HotReads:
    def __init__(self, app) -> None:
        self.app = app
        self.headers = security_headers()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "GET":
            try:
                answer = await self._answer(scope)
            except (RedisError, OSError) as exc:  # Django reads the database instead
                logger.debug("hot read passed to Django: %s", exc)
                answer = None
            if answer is not None:
                status, body = answer
                await send({"type": "http.response.start", "status": status, "headers": self._headers(body)})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        return [*self.headers, (b"content-length", str(len(body)).encode())]

    async def _answer(self, scope) -> tuple[int, bytes] | None:
        """(status, body), or None to let Django answer."""
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
            return None
        if settings.SECURE_SSL_REDIRECT and not _secure(scope, headers):
            return None  # Django redirects it to https
        session_key = parse_cookie(headers.get(b"cookie", b"").decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
        if not session_key:
            return 401, json_error_body("unauthenticated", "Log in first.")
        query = _query(scope)
        if query is None:
            return None  # Django says what is wrong with it
        limit, before, after = query
        session = await sessions.cached_session(session_key)
        if not session or SESSION_KEY not in session:
            return None
        user_id = int(session[SESSION_KEY])
        bounds = {"limit": limit + 1, "before": before, "after": after}
        redis, store = get_async_redis(), get_async_timeline_redis()

        def queue_timeline(pipe) -> None:
            pipe.get(timelines.merged_key(user_id))
            pipe.get(timelines.READ_AUTHORS_VERSION_KEY)
            timelines.queue_page(pipe, user_id, **bounds)

        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(identity.key(user_id))
            pipe.get(watermark.KEY)  # before the timeline: see fanout.watermark
            if store is redis:
                queue_timeline(pipe)
            auth, low_watermark, *timeline = await pipe.execute()
        if store is not redis:  # timelines on a store of their own: a second round trip, after
            async with store.pipeline(transaction=False) as pipe:
                queue_timeline(pipe)
                timeline = await pipe.execute()
        merged, version, *home = timeline
        if auth is None or low_watermark is None:
            return None
        if not identity.vouches(json.loads(auth), session.get(HASH_SESSION_KEY)):
            return None
        authors = timelines.merged_from(merged, version)
        if authors is None:
            return None  # which merged-on-read authors this reader follows: Django finds out
        pages = [timelines.page_from(*home)]
        if authors:
            async with store.pipeline(transaction=False) as pipe:
                for author_id in authors:
                    timelines.queue_author_page(pipe, author_id, **bounds)
                results = await pipe.execute()
            pages += [timelines.page_from(*results[i : i + 3]) for i in range(0, len(results), 3)]
        for page_ids, size in pages:
            if size < 0 or (len(page_ids) <= limit and size >= settings.TIMELINE_CAP):
                return None  # not materialized, or the page runs past a capped set into the database
        ids = sorted({i for page_ids, _ in pages for i in page_ids}, reverse=True)[: limit + 1]
        tweets = await tweet_cache.get_many_async(ids)
        if any(t is None for t in tweets):
            return None  # a tweet not cached yet, or deleted: Django hydrates (and drops) it
        next_before = ids[limit - 1] if len(ids) > limit else None
        body = b'{"tweets":[%s],"next_before":%s,"watermark":%d}' % (
            b",".join(tweets[:limit]),
            b"null" if next_before is None else str(next_before).encode(),
            int(low_watermark),
        )
        return 200, body


def _query(scope) -> tuple[int, int | None, int | None] | None:
    raw = scope.get("query_string", b"").decode("latin-1")
    try:
        params = dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw)))
    except ValueError:
        return None
    if set(params) - {"limit", "before", "after"}:
        return None
    try:
        limit = (
            validation.parse_int(params["limit"], low=1, high=selectors.MAX_PAGE_SIZE) if "limit" in params else None
        )
        before = validation.parse_int(params["before"], low=1) if "before" in params else None
        after = validation.parse_int(params["after"], low=0) if "after" in params else None
    except ValueError:
        return None
    return limit or selectors.DEFAULT_PAGE_SIZE, before, after


def _secure(scope, headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") == "https":
        return True
    if settings.SECURE_PROXY_SSL_HEADER:
        header, value = settings.SECURE_PROXY_SSL_HEADER
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode()
        return headers.get(name, b"").decode("latin-1") == value
    return False
