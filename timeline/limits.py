"""A bound on the HTTP requests one web process works on at once: load shedding at the door.

Django's ASGI handler gives every request a thread of its own, and daphne accepts every
connection. Under overload, hundreds of requests would then run at once, fighting over the
GIL, SQLite's write lock and the Redis pool: every answer slows down, the fan-out workers on
the same cores starve, and even a 503 from the queue cap takes seconds to say. Past
``WEB_MAX_IN_FLIGHT`` requests this wrapper answers 503 with Retry-After itself, in the event
loop, before any thread or query, so shedding stays cheap exactly when it is needed.

Of the requests let in, only ``WEB_THREADS`` run in Django at once; the others wait their turn
here, in the event loop, holding no thread, for at most ``THREAD_WAIT_SECONDS``: when Django's
threads are all stuck (the database away, each request waiting out its connection timeout),
the requests queued behind them are answered 503 at once rather than after the whole queue. Django's work is mostly CPU under one GIL, so
threads past a few finish nothing sooner: they make each request slower and take the GIL from
the event loop, which answers the 503s, the hot reads and the websockets. Too few starve Django
of the waits it overlaps (a query, a round trip): 8 served more than 3 or an unbounded number,
and took the 503's p99 at 3x overload from 100-430 ms to about 70 (docs/benchmarks.md).

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

from django.conf import settings
from django.http.cookie import parse_cookie
from redis.exceptions import RedisError

from fanout import admission, metrics
from timeline import sessions
from timeline.middleware import json_error_body, security_headers

logger = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/healthz", "/api/stats", "/metrics"})
EXEMPT_PREFIXES = ("/static/",)
ANONYMOUS_AUTH_PATHS = frozenset({"/api/auth/login", "/api/auth/signup", "/login/", "/signup/", "/admin/login/"})
# The anonymous auth budget, as a share of the door's limit (at least one request).
ANONYMOUS_AUTH_SHARE = 1 / 16
RETRY_AFTER_SECONDS = 1
# How long a request let in may wait for one of Django's threads. In normal overload the wait is
# the door's limit over the threads times a request's few milliseconds; only threads stuck on
# something (a database that is down, settings.DATABASE_WAIT_SECONDS each) make it longer.
THREAD_WAIT_SECONDS = 1.0
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
    def __init__(self, app, limit: int, running: int = 0, wait: float = THREAD_WAIT_SECONDS) -> None:
        self.app = app
        self.limit = limit
        self.wait = wait
        # Of the requests let in, how many run in Django at once (0: all); the rest wait here.
        self.running = asyncio.Semaphore(running) if running > 0 else None
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
            if self.running is None:
                await self.app(scope, receive, send)
                return
            try:
                async with asyncio.timeout(self.wait):
                    await self.running.acquire()
            except TimeoutError:
                await self._shed(send)
                return
            try:
                await self.app(scope, receive, send)
            finally:
                self.running.release()
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


# -- the queue cap, in the event loop ---------------------------------------------------------------

TWEETS_PATH = "/api/tweets"
# Where an admitted post's reserved queue slot goes in the ASGI scope, for the tweets view.
SLOT = "timeline.queue_slot"
# How long a refusal on the queue cap makes this process refuse the next posts without asking.
QUEUE_FULL_MEMORY_SECONDS = 0.1
# How long a measured drain rate serves the Retry-After of the refusals that follow.
DRAIN_MEMORY_SECONDS = 1.0


class QueueAdmission:
    """The fan-out queue's cap, applied to posts in the event loop, before any thread or query.

    Under overload most posts are refused on the cap. Each refusal used to go the whole way
    through Django (session, CSRF, user, a Redis script) to say 503, behind the posts being
    accepted, and at 3x capacity those refusals took the web processes' CPU from the workers
    that drain the queue. So a post from a logged-in session (its session cached in Redis) asks
    for its queue slot here: the reservation Django's admission makes (fanout.admission), with
    the session checked in the same Lua script, one round trip. Refused, it is answered 503 with the Retry-After Django would give, without
    reaching Django; admitted, it goes on with the slot in its scope, and the view uses that slot
    rather than asking again (the author's rate limit, and everything else, is still Django's).
    Whatever Django answers, the slot is given back afterwards: a post that was made spent it
    when its job was queued, and one that was not (bad input, the rate limit, a scheduled tweet,
    the door) must not hold it.

    A post this cannot place (no cached session, Redis away) goes to Django, which admits it as
    before.

    Once the queue has refused a post, the posts with a session that follow in the next
    ``remember`` seconds are refused at once, without the round trip: at 3x capacity that was
    most of the web processes' work in refusing, CPU the workers need. The queue stays full all
    the same (a slot freed meanwhile waits at most that long), so nothing drains more slowly.
    """

    def __init__(self, app, *, remember: float = QUEUE_FULL_MEMORY_SECONDS) -> None:
        self.app = app
        self.remember = remember
        self.full: tuple[float, int] = (0.0, 0)  # (refusing until, the depth seen)
        self.shed = ShedCounter()
        self.headers = security_headers()  # what Django's 503 carries
        self.drain: tuple[float, float, int] | None = None  # (measured at, drain rate, workers)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != TWEETS_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self.full[0] and _session_key(scope):
            await self._refuse(send, self.full[1])
            return
        try:
            slot = await self._reserve(scope)
        except (RedisError, OSError) as exc:
            logger.debug("post passed to Django to admit: %s", exc)
            slot = None
        if slot is None:
            await self.app(scope, receive, send)
            return
        ticket, depth = slot
        if ticket is None:
            self.full = (loop.time() + self.remember, depth)
            await self._refuse(send, depth)
            return
        try:
            await self.app({**scope, SLOT: ticket}, receive, send)
        finally:
            try:
                await admission.release_async(ticket)
            except (RedisError, OSError):
                pass  # the reservation expires by itself (admission.RESERVATION_TTL)

    async def _reserve(self, scope) -> tuple[admission.Ticket | None, int] | None:
        """(a ticket or None when refused, the depth), or None to leave the post to Django."""
        session_key = _session_key(scope)
        if not session_key:
            return None  # Django says that nobody is logged in
        return await admission.reserve_for_session(sessions.KEY_PREFIX + session_key)

    async def _refuse(self, send, depth: int) -> None:
        now = asyncio.get_running_loop().time()
        if self.drain is None or now - self.drain[0] > DRAIN_MEMORY_SECONDS:
            try:
                self.drain = (now, *await admission.drain_and_workers_async())
            except (RedisError, OSError):
                self.drain = (now, 0.0, 0)
        retry_after = admission.retry_after_from(depth, drain=self.drain[1], workers=self.drain[2])
        body = json_error_body("overloaded", queue_full_message(retry_after))
        headers = [*self.headers, (b"retry-after", b"%d" % retry_after), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.shed.count("queue")


def _session_key(scope) -> str | None:
    cookies = parse_cookie(dict(scope["headers"]).get(b"cookie", b"").decode("latin-1"))
    return cookies.get(settings.SESSION_COOKIE_NAME)


def queue_full_message(retry_after: int) -> str:
    return f"Busy delivering other tweets; try again in {retry_after} s. Nothing was posted."


def reserved_slot(request) -> admission.Ticket | None:
    """The queue slot QueueAdmission reserved for this post, if it did."""
    return getattr(request, "scope", {}).get(SLOT)


# -- request bodies ----------------------------------------------------------------------------------


def too_large_response() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The 413 for a body larger than any route takes: status, headers and body."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json_error_body(
        "too_large", f"The body is larger than {limit} bytes, which no request needs. Nothing was done."
    )
    return 413, [*security_headers(), (b"content-length", b"%d" % len(body))], body


class _TooLarge(Exception):
    pass


class BodyLimit:
    """A request body larger than ``settings.DATA_UPLOAD_MAX_MEMORY_SIZE`` is answered 413 before
    the application reads it: at once when its Content-Length says so, or as soon as a streamed
    body passes it. Under timeline.serve the server has refused it already, before reading it;
    this is the same bound for any other server, which may have read the body by now."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._refuse(send)
            return
        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, bounded_receive, send)
        except _TooLarge:  # raised while the body was read, before any answer began
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        status, headers, body = too_large_response()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
