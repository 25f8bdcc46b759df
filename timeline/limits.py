"""A bound on the HTTP requests one web process works on at once: load shedding at the door.

Django's ASGI handler gives every request a thread of its own, and daphne accepts every
connection. Under overload, hundreds of requests would then run at once, fighting over the
GIL, SQLite's write lock and the Redis pool: every answer slows down, the fan-out workers on
the same cores starve, and even a 503 from the queue cap takes seconds to say. Past
``WEB_MAX_IN_FLIGHT`` requests this wrapper answers 503 with Retry-After itself, in the event
loop, before any thread or query, so shedding stays cheap exactly when it is needed.

Health checks, staff stats, metrics and static files are never shed: they are how overload is
seen. Home timelines answered from Redis (timeline.hot_reads) never reach the door: they take
no thread.

Logging in and signing up without a session are the cheapest requests to send and among the
costliest to answer (a password hash each), so they get a budget of their own, a small share of
the door: a flood of them is shed among themselves and cannot take the places of people who
are logged in. (Failed logins are throttled per account and per address as well; see
timeline.throttles.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

from fanout import metrics

logger = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/healthz", "/api/stats", "/metrics"})
EXEMPT_PREFIXES = ("/static/",)
ANONYMOUS_AUTH_PATHS = frozenset({"/api/auth/login", "/api/auth/signup", "/login/", "/signup/"})
# The anonymous auth budget, as a share of the door's limit (at least one request).
ANONYMOUS_AUTH_SHARE = 1 / 16
RETRY_AFTER_SECONDS = 1
_BODY = json.dumps(
    {
        "error": {
            "code": "overloaded",
            "message": "The server is busy; try again in a moment. Nothing was done.",
            "fields": {},
        }
    }
).encode()


class InFlightLimit:
    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit
        # Requests in progress, and the bound, for each budget: one event loop per process, no lock.
        self.limits = {"main": limit, "anonymous auth": max(1, int(limit * ANONYMOUS_AUTH_SHARE))}
        self.in_progress = dict.fromkeys(self.limits, 0)
        self.shed = ShedCounter()

    @property
    def in_flight(self) -> int:
        return self.in_progress["main"]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or _exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        anonymous_auth = scope["method"] == "POST" and scope["path"] in ANONYMOUS_AUTH_PATHS
        budget = "anonymous auth" if anonymous_auth else "main"
        if self.in_progress[budget] >= self.limits[budget]:
            await self._shed(send)
            return
        self.in_progress[budget] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress[budget] -= 1

    async def _shed(self, send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                    (b"content-length", str(len(_BODY)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
        self.shed.count("door")


class ShedCounter:
    """Requests shed in the event loop, counted for /ops/ a few times a second.

    Under overload most requests are shed, and one Redis round trip (and task) for each made
    counting them cost more than refusing them. Counts gather here and go to Redis together,
    FLUSH_SECONDS after the first of them: at most one round trip per interval, whatever the
    load, and the answer never waits for Redis. A count that cannot be written is dropped
    (it is a gauge for people, not a record).
    """

    FLUSH_SECONDS = 0.25

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.flushing: asyncio.Task | None = None

    def count(self, limit: str) -> None:
        self.counts[limit] += 1
        loop = asyncio.get_running_loop()
        if self.flushing is None or self.flushing.done() or self.flushing.get_loop() is not loop:
            # The task is held here until it ends: the loop keeps only a weak reference.
            self.flushing = loop.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.FLUSH_SECONDS)
        counts, self.counts = dict(self.counts), Counter()
        try:
            await metrics.record_shed_async(counts)
        except Exception:
            logger.debug("could not count %s requests shed", counts, exc_info=True)


def _exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


# -- the queue cap, remembered in the event loop ---------------------------------------------------

TWEETS_PATH = "/api/tweets"
# How long a post refused on the queue cap makes this process refuse the next ones itself.
QUEUE_FULL_MEMORY_SECONDS = 0.2
# The header the tweets view marks a queue-cap refusal with; this gate takes it off the answer.
SHED_MARK = b"x-shed-limit"


class QueueFullGate:
    """Posts refused at once, in the event loop, while the fan-out queue is known to be full.

    Under overload most posts are refused on the queue cap, and until now each refusal went
    the whole way through Django (session, CSRF, user, a Redis script) to say 503: at 3x
    capacity those refusals took the web processes' CPU, from the workers that drain the queue
    too. So when the view refuses a post on the cap (it marks the answer), this process refuses
    the posts that follow for QUEUE_FULL_MEMORY_SECONDS itself, with the same answer and
    Retry-After, for a fraction of the cost. The first post after that goes to Django, whose
    admission check is exact: a queue that drained is used again within that fraction of a
    second, and nothing is ever accepted past the cap.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.full_until = 0.0
        self.answer: tuple[list[tuple[bytes, bytes]], bytes] | None = None
        self.shed = ShedCounter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != TWEETS_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        if self.answer is not None and loop.time() < self.full_until:
            await self._refuse(send)
            return
        await self.app(scope, receive, self._watching(send, loop))

    def _watching(self, send, loop):
        marked: list[tuple[bytes, bytes]] | None = None  # this answer's headers, if a refusal

        async def watched(message) -> None:
            nonlocal marked
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if any(name.lower() == SHED_MARK for name, _ in headers):
                    marked = [(n, v) for n, v in headers if n.lower() != SHED_MARK]
                    message = {**message, "headers": marked}
            elif message["type"] == "http.response.body" and marked is not None:
                # Given to other people's posts: nothing of this person's (a cookie) goes with it.
                shared = [(n, v) for n, v in marked if n.lower() != b"set-cookie"]
                self.answer = (shared, message.get("body", b""))
                self.full_until = loop.time() + QUEUE_FULL_MEMORY_SECONDS
            await send(message)

        return watched

    async def _refuse(self, send) -> None:
        headers, body = self.answer
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.shed.count("queue")
