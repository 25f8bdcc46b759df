#!/usr/bin/env python
"""An open-model load generator for POST /api/tweets, with a check that no accepted tweet is lost.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000 --rate 200 --duration 60 [--users 200]

Open model: request i is due at t0 + i/rate and is sent then, whether or not earlier requests
have been answered, so a slow server cannot slow the arrivals down (no coordinated omission).
Latency is measured from the *scheduled* send time to the end of the answer, so any delay the
client itself adds shows up in the figures instead of hiding. In-flight requests are capped
(``--max-in-flight``): a request that is due while the cap is reached is not sent and is
counted as "client overflow". ``--concurrency K`` runs a closed model instead (K posters, each
sending its next request as soon as the last one is answered), which measures throughput.

It posts as many users at once, round-robin. Their sessions are made directly in the database
through Django (the same settings, hence the same DATABASE_URL and SECRET_KEY as the server: run
it from the project with the server's environment), and deleted again at the end; or they are
read from ``--cookies-from`` (JSON ``{"sessions": [{"session": KEY, ...}]}`` or one session key
a line). CSRF is the cookie + header pair a browser sends.

While it runs it samples the fan-out queue depth every 200 ms, from Redis directly (LLEN of the
queue and ZCARD of the admission reservations) or with ``--depth-source stats`` from GET
/api/stats as a staff user. After the run it waits (``--drain-timeout``) for every accepted
tweet's fan-out to finish and checks in the database and in Redis that each one was delivered:
its Fanout row is done with delivered == recipients, and every materialized home timeline of
the author's followers (and the author's own) holds it, unless the capped timeline has since
dropped it as too old. It prints a report and, with ``--json-out``, writes the report plus a
per-second time series.

Against ``make run`` (its defaults: var/db.sqlite3, the Redis socket in var/redis/), with the
demo data, a person can watch /ops/ while this runs::

    .venv/bin/python bench/loadgen.py --rate 100 --duration 30

``make run`` keeps the per-author rate limit (60 tweets a minute): start it with
``TWEET_RATE_LIMIT=0 make run`` to see back pressure (503) rather than the rate limit (429).
Every loop here is bounded in count and time; it talks to the given URL only (use 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

CSRF_TOKEN = "b" * 32  # any 32 characters: Django compares the cookie with the header
OVERFLOW, TIMEOUT, CONN_ERROR = -1, -2, -3  # pseudo-statuses of requests that got no answer
# A 503 is load shedding only with the "overloaded" code; "unavailable" means Redis failed.
UNAVAILABLE = 1503


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# -- Django: sessions before the run, checks after it ---------------------------------------------


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timeline.settings")
    import django

    django.setup()


def new_session(user) -> str:
    """Log a user in by writing a session row (what django.contrib.auth.login stores)."""
    from datetime import timedelta

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
    data = {
        SESSION_KEY: str(user.pk),
        BACKEND_SESSION_KEY: settings.AUTHENTICATION_BACKENDS[0],
        HASH_SESSION_KEY: user.get_session_auth_hash(),
    }
    Session.objects.create(
        session_key=key, session_data=SessionStore().encode(data), expire_date=timezone.now() + timedelta(hours=6)
    )
    return key


def make_sessions(*, users: int, usernames: list[str] | None) -> list[dict]:
    """Sessions for the users to post as: the named ones, or the ``users`` most-followed."""
    from django.contrib.auth import get_user_model
    from django.db.models import Count

    User = get_user_model()
    if usernames:
        chosen = list(User.objects.filter(username__in=usernames, is_active=True).order_by("pk"))
        missing = set(usernames) - {u.username for u in chosen}
        if missing:
            raise SystemExit(f"no such user(s): {', '.join(sorted(missing))}")
    else:
        # The most-followed users first, so that the posts make fan-out work (on the demo data:
        # celebrity, then alice, bob, carol, dave, then fans).
        chosen = list(
            User.objects.filter(is_active=True, is_staff=False)
            .annotate(n=Count("follower_set"))
            .order_by("-n", "pk")[:users]
        )
    if not chosen:
        raise SystemExit("no users to post as: is this the right database?")
    return [{"user_id": u.pk, "username": u.username, "session": new_session(u)} for u in chosen]


def staff_session(username: str) -> dict:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=username, is_staff=True, is_active=True).first()
    if user is None:
        raise SystemExit(f"--depth-source stats needs a staff user; {username!r} is not one")
    return {"user_id": user.pk, "username": user.username, "session": new_session(user)}


def delete_sessions(keys: list[str]) -> None:
    from django.contrib.sessions.models import Session

    for i in range(0, len(keys), 500):
        Session.objects.filter(session_key__in=keys[i : i + 500]).delete()


def read_cookies(path: Path) -> list[dict]:
    text = path.read_text().strip()
    if text.startswith("{"):
        return json.loads(text)["sessions"]
    keys = [line.strip().removeprefix("sessionid=") for line in text.splitlines() if line.strip()]
    return [{"user_id": None, "username": None, "session": k} for k in keys]


def redis_url_from_settings() -> str:
    from django.conf import settings

    return settings.REDIS_URL


def tweets_by_client_id(client_ids: list[str]) -> dict[str, int]:
    """The tweets the server made for these client_ids (whatever the client saw)."""
    from timeline.models import Tweet

    found: dict[str, int] = {}
    for i in range(0, len(client_ids), 500):
        for tweet_id, client_id in Tweet.objects.filter(client_id__in=client_ids[i : i + 500]).values_list(
            "id", "client_id"
        ):
            found[str(client_id)] = tweet_id
    return found


def wait_for_delivery(
    accepted: list[int],
    *,
    timeout: float,
    log,
    redis_url: str | None = None,
    t0_wall: float = 0.0,
    depth: list | None = None,
) -> tuple[float, dict[str, int]]:
    """Wait until every accepted tweet's fan-out is done (or failed for good), within ``timeout``.

    With ``depth``, the queue depth goes on being sampled meanwhile (the backlog draining)."""
    import redis as redis_lib

    from fanout.admission import QUEUE_KEY, RESERVATIONS_KEY
    from fanout.models import Fanout

    client = redis_lib.Redis.from_url(redis_url) if (redis_url and depth is not None) else None

    if not accepted:
        return 0.0, {}
    wanted = set(accepted)
    t0 = time.monotonic()
    last_log = t0
    states: dict[str, int] = {}
    while True:
        rows = (
            Fanout.objects.filter(tweet_id__gte=min(wanted))
            .exclude(state=Fanout.State.DONE)
            .values_list("tweet_id", "state")
        )
        states = {}
        for tweet_id, state in rows:
            if tweet_id in wanted:
                states[state] = states.get(state, 0) + 1
        waited = time.monotonic() - t0
        if client is not None:
            with contextlib.suppress(Exception):
                depth.append(
                    DepthSample(time.time() - t0_wall, int(client.llen(QUEUE_KEY)), int(client.zcard(RESERVATIONS_KEY)))
                )
        if not states or waited > timeout:
            return waited, states
        if time.monotonic() - last_log > 5:
            log(f"  waiting for delivery: {sum(states.values())} fan-out(s) not done yet {states} ({waited:.0f}s)")
            last_log = time.monotonic()
        time.sleep(0.5)


def verify(accepted: list[int], *, redis_url: str) -> dict:
    """Check every accepted tweet in the database and the home timelines; see the module doc."""
    import redis as redis_lib
    from django.conf import settings

    from fanout import timelines
    from fanout.models import Fanout
    from timeline.models import Follow, Tweet

    result = {
        "accepted": len(accepted),
        "missing_in_db": 0,
        "not_done": 0,
        "delivered_short": 0,
        "recipients_not_followers": 0,
        "missing_from_timelines": 0,
        "timeline_misses": 0,
        "timeline_checks": 0,
        "materialized_timelines": 0,
        "lost": 0,
    }
    if not accepted:
        return result
    wanted = set(accepted)
    rows = {}
    low = min(wanted)
    phases: dict[str, list[float]] = {"enqueue": [], "queue_wait": [], "run": []}
    for tweet_id, author_id, created, state, delivered, recipients, enqueued, started, finished in (
        Fanout.objects.filter(tweet_id__gte=low)
        .values_list(
            "tweet_id",
            "tweet__author_id",
            "tweet__created_at",
            "state",
            "delivered",
            "recipients",
            "enqueued_at",
            "started_at",
            "finished_at",
        )
        .iterator(chunk_size=2000)
    ):
        if tweet_id in wanted:
            rows[tweet_id] = (author_id, created, state, delivered, recipients, finished)
            if enqueued and started and finished:
                # Where the time to delivery goes: the request (tweet made -> job queued), the
                # wait in the queue, and the job itself (the last attempt's, if it was retried).
                phases["enqueue"].append((enqueued - created).total_seconds())
                phases["queue_wait"].append((started - enqueued).total_seconds())
                phases["run"].append((finished - started).total_seconds())
    tweets_in_db = set(Tweet.objects.filter(id__gte=low).values_list("id", flat=True))
    authors = {r[0] for r in rows.values()}
    followers: dict[int, list[int]] = {a: [] for a in authors}
    for followee, follower in Follow.objects.filter(followee_id__in=authors).values_list("followee_id", "follower_id"):
        followers[followee].append(follower)
    # Every timeline that could hold one of these tweets, read whole (at most TIMELINE_CAP + 1 each).
    users = sorted(authors | {f for fs in followers.values() for f in fs})
    client = redis_lib.Redis.from_url(redis_url)
    held: dict[int, tuple[set[int], int | None]] = {}
    for i in range(0, len(users), 200):
        chunk = users[i : i + 200]
        with client.pipeline(transaction=False) as pipe:
            for u in chunk:
                pipe.zrange(timelines.key(u), 0, -1)
            answers = pipe.execute()
        for u, members in zip(chunk, answers, strict=True):
            if not members:
                continue  # not materialized: rebuilt from the database on read, nothing to check
            ids = {int(m) for m in members} - {0}
            full = len(ids) >= settings.TIMELINE_CAP
            held[u] = (ids, min(ids) if full and ids else None)
    result["materialized_timelines"] = len(held)

    lost_ids = set()
    details: list[dict] = []  # the first few lost tweets, with what is wrong with them
    accept_to_done: dict[int, tuple[float, float]] = {}
    for tweet_id in accepted:
        row = rows.get(tweet_id)
        if row is None or tweet_id not in tweets_in_db:
            result["missing_in_db"] += 1
            lost_ids.add(tweet_id)
            continue
        author_id, created, state, delivered, recipients, finished = row
        if state != Fanout.State.DONE:
            result["not_done"] += 1
            lost_ids.add(tweet_id)
            continue
        if delivered != recipients:
            result["delivered_short"] += 1
            lost_ids.add(tweet_id)
        if recipients != len(followers[author_id]):
            result["recipients_not_followers"] += 1  # follows changed during the run; not a loss
        accept_to_done[tweet_id] = (created.timestamp(), (finished - created).total_seconds())
        missing_here = []
        for u in (author_id, *followers[author_id]):
            entry = held.get(u)
            if entry is None:
                continue
            result["timeline_checks"] += 1
            ids, oldest_kept = entry
            if tweet_id in ids or (oldest_kept is not None and tweet_id < oldest_kept):
                continue  # there, or trimmed from a full timeline as older than all it keeps
            missing_here.append(u)
        if missing_here:
            result["timeline_misses"] += len(missing_here)
            result["missing_from_timelines"] += 1
            lost_ids.add(tweet_id)
            if len(details) < 20:
                details.append(
                    {
                        "tweet_id": tweet_id,
                        "author_id": author_id,
                        "missing_in": missing_here[:10],
                        "missing_count": len(missing_here),
                        "author_timeline_missing": author_id in missing_here,
                        "timeline_sizes": [len(held[u][0]) for u in missing_here[:10]],
                    }
                )
    result["lost"] = len(lost_ids)
    result["lost_sample"] = sorted(lost_ids)[:20]
    result["lost_details"] = details
    result["_accept_to_done"] = accept_to_done
    result["phases_s"] = {
        name: {"p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v, default=None)}
        for name, v in phases.items()
    }
    return result


# -- the HTTP client: HTTP/1.1 with keep-alive on asyncio streams ---------------------------------


class HTTPConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, data: bytes) -> tuple[int, bytes, bytes]:
        """Send one whole request; return (status, header block, body)."""
        self.used += 1
        self.writer.write(data)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.find(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(lower[at + 17 : end]))
        elif b"transfer-encoding: chunked" in lower:
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            self.close()
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, head, body

    @property
    def closed(self) -> bool:
        return self.writer is None or self.writer.is_closing()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Pool:
    """Idle keep-alive connections; a request takes one or opens one, and gives it back."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[HTTPConnection] = []
        self.opened = 0

    async def request(self, data: bytes, *, timeout: float) -> tuple[int, bytes, bytes]:
        # A kept-alive connection may have been closed by the server just before we use it; the
        # POST is then sent again once on a fresh one (safe: the client_id makes it idempotent).
        for attempt in range(2):
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else HTTPConnection(self.host, self.port)
            try:
                async with asyncio.timeout(timeout):
                    if not reused:
                        self.opened += 1
                        await conn.open()
                    answer = await conn.request(data)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if reused and attempt == 0 and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if not conn.closed:
                self.idle.append(conn)
            return answer
        raise ConnectionError("unreachable")

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def build_post(host_header: str, session: str, client_id: str, text: str) -> bytes:
    body = json.dumps({"body": text, "client_id": client_id}).encode()
    return (
        f"POST /api/tweets HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCookie: sessionid={session}; csrftoken={CSRF_TOKEN}\r\n"
        f"X-CSRFToken: {CSRF_TOKEN}\r\n\r\n"
    ).encode() + body


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Record:
    """One request, in arrays (cheap to append to at a few thousand a second)."""

    sched: list[float] = field(default_factory=list)  # scheduled send, seconds after t0
    sent_lag: list[float] = field(default_factory=list)  # actual send - scheduled
    latency: list[float] = field(default_factory=list)  # answer complete - scheduled
    status: list[int] = field(default_factory=list)
    tweet_id: list[int] = field(default_factory=list)
    retry_after: list[int] = field(default_factory=list)
    client_id: list[str] = field(default_factory=list)


@dataclass
class DepthSample:
    t: float
    depth: int
    reserved: int


async def poll_depth(
    *,
    source: str,
    redis_url: str | None,
    pool: Pool | None,
    stats_request: bytes | None,
    t0: float,
    end: float,
    samples: list[DepthSample],
    every: float = 0.2,
) -> None:
    loop = asyncio.get_running_loop()
    client = None
    if source == "redis":
        import redis.asyncio as aredis

        from fanout.admission import QUEUE_KEY, RESERVATIONS_KEY

        client = aredis.Redis.from_url(redis_url)
    try:
        tick = 0
        while loop.time() < end:
            try:
                if client is not None:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.llen(QUEUE_KEY)
                        pipe.zcard(RESERVATIONS_KEY)
                        depth, reserved = await pipe.execute()
                else:
                    status, _, body = await pool.request(stats_request, timeout=5)
                    queue = json.loads(body)["queue"] if status == 200 else {"depth": -1, "reserved": -1}
                    depth, reserved = queue["depth"], queue["reserved"]
                samples.append(DepthSample(loop.time() - t0, int(depth), int(reserved)))
            except Exception as exc:  # a sample lost is not worth stopping the run
                samples.append(DepthSample(loop.time() - t0, -1, -1))
                if tick == 0:
                    print(f"  depth sampling failed: {exc!r}", file=sys.stderr)
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * every - loop.time()))
    finally:
        if client is not None:
            await client.aclose()


async def run_load(args, sessions: list[dict], staff: dict | None, redis_url: str | None) -> dict:
    parts = urlsplit(args.url)
    host, port = parts.hostname, parts.port or 80
    host_header = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    pool = Pool(host, port)
    rec = Record()
    in_flight = 0
    max_in_flight_seen = 0
    tasks: set[asyncio.Task] = set()
    run_tag = uuid.uuid4().hex[:6]

    async def one(i: int, sched: float, t_sched_abs: float) -> None:
        nonlocal in_flight
        session = sessions[i % len(sessions)]["session"]
        client_id = str(uuid.uuid4())
        data = build_post(host_header, session, client_id, f"load test {run_tag} #{i}")
        sent = loop.time()
        status, tweet_id, retry_after = CONN_ERROR, 0, 0
        try:
            status, head, body = await pool.request(data, timeout=args.timeout)
            if status == 202:
                # The tweet's id is the first "id" in the answer: {"tweet": {"id": N, ...
                at = body.find(b'"id":') + 5
                tweet_id = int(body[at : body.find(b",", at)])
            elif status in (429, 503):
                at = head.lower().find(b"\r\nretry-after:")
                if at >= 0:
                    retry_after = int(head[at + 14 : head.find(b"\r\n", at + 2)])
                if status == 503 and b'"overloaded"' not in body:
                    status = UNAVAILABLE
        except TimeoutError:
            status = TIMEOUT
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = CONN_ERROR
        finally:
            in_flight -= 1
        rec.sched.append(sched)
        rec.sent_lag.append(sent - t_sched_abs)
        rec.latency.append(loop.time() - t_sched_abs)
        rec.status.append(status)
        rec.tweet_id.append(tweet_id)
        rec.retry_after.append(retry_after)
        rec.client_id.append(client_id)

    def launch(i: int, sched: float, t_abs: float) -> None:
        nonlocal in_flight, max_in_flight_seen
        in_flight += 1
        max_in_flight_seen = max(max_in_flight_seen, in_flight)
        task = loop.create_task(one(i, sched, t_abs))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    depth_samples: list[DepthSample] = []
    cpu0 = time.process_time()
    t0 = loop.time() + 0.2
    wall0 = time.time() + (t0 - loop.time())
    end = t0 + args.duration
    stats_request = None
    if args.depth_source == "stats":
        stats_request = (
            f"GET /api/stats HTTP/1.1\r\nHost: {host_header}\r\nCookie: sessionid={staff['session']}\r\n\r\n"
        ).encode()
    poller = None
    if args.depth_source != "none":
        poller = loop.create_task(
            poll_depth(
                source=args.depth_source,
                redis_url=redis_url,
                pool=Pool(host, port),
                stats_request=stats_request,
                t0=t0,
                end=end + 0.5,
                samples=depth_samples,
            )
        )
    overflow_sched: list[float] = []
    sent = 0
    if args.concurrency:  # closed model: K posters, each waits for its answer before the next
        counter = iter(range(10**9))

        async def poster() -> None:
            nonlocal in_flight
            while loop.time() < end:
                i = next(counter)
                now = loop.time()
                in_flight += 1
                await one(i, now - t0, now)

        await asyncio.sleep(max(0.0, t0 - loop.time()))
        await asyncio.gather(*(poster() for _ in range(args.concurrency)))
        sent = len(rec.status)
    else:  # open model: request i is due at t0 + i / rate, sent then whatever else is going on
        total = int(round(args.rate * args.duration))
        i = 0
        while i < total:
            now = loop.time()
            while i < total and t0 + i / args.rate <= now:
                t_abs = t0 + i / args.rate
                if in_flight >= args.max_in_flight:
                    overflow_sched.append(t_abs - t0)
                else:
                    launch(i, t_abs - t0, t_abs)
                    sent += 1
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, t0 + i / args.rate - loop.time()))
        # Answers still on their way: bounded by the request timeout.
        if tasks:
            await asyncio.wait(set(tasks), timeout=args.timeout + 5)
    finished = loop.time()
    client_cpu = time.process_time() - cpu0
    for task in list(tasks):
        task.cancel()
    if poller is not None:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    pool.close()
    return {
        "rec": rec,
        "overflow_sched": overflow_sched,
        "depth": depth_samples,
        "t0_wall": wall0,
        "elapsed": finished - t0,
        "sent": sent,
        "connections_opened": pool.opened,
        "client_cpu_s": client_cpu,
        "max_in_flight_seen": max_in_flight_seen,
    }


# -- the report -----------------------------------------------------------------------------------


def summarize(args, run: dict, check: dict | None, drain_seconds: float | None, not_done: dict | None) -> dict:
    rec: Record = run["rec"]
    duration = args.duration
    statuses: dict[str, int] = {}
    for s in rec.status:
        name = {TIMEOUT: "timeout", CONN_ERROR: "connection_error", UNAVAILABLE: "503_unavailable"}.get(s, str(s))
        statuses[name] = statuses.get(name, 0) + 1
    overflow = len(run["overflow_sched"])
    acc_lat = [lat for lat, s in zip(rec.latency, rec.status, strict=True) if s == 202]
    shed_lat = [lat for lat, s in zip(rec.latency, rec.status, strict=True) if s == 503]
    depths = [d for d in run["depth"] if d.depth >= 0 and d.t <= duration + 1]
    offered = len(rec.status) + overflow
    a2d = sorted(v for _, v in (check or {}).get("_accept_to_done", {}).values())
    summary = {
        "url": args.url,
        "model": f"closed, {args.concurrency} posters" if args.concurrency else "open",
        "rate_target": None if args.concurrency else args.rate,
        "duration_s": duration,
        "users": run["users"],
        "offered": offered,
        "offered_per_s": offered / duration,
        "accepted": statuses.get("202", 0),
        "accepted_per_s": statuses.get("202", 0) / duration,
        "shed": statuses.get("503", 0),
        "shed_per_s": statuses.get("503", 0) / duration,
        "statuses": statuses,
        "client_overflow": overflow,
        "max_in_flight": args.max_in_flight,
        "max_in_flight_seen": run["max_in_flight_seen"],
        "connections_opened": run["connections_opened"],
        "client_cpu_s": round(run["client_cpu_s"], 2),
        "send_lag_p99_ms": ms(percentile(rec.sent_lag, 99)),
        "send_lag_max_ms": ms(max(rec.sent_lag, default=None)),
        "accepted_latency_ms": {
            "p50": ms(percentile(acc_lat, 50)),
            "p99": ms(percentile(acc_lat, 99)),
            "max": ms(max(acc_lat, default=None)),
        },
        "shed_latency_ms": {
            "p50": ms(percentile(shed_lat, 50)),
            "p99": ms(percentile(shed_lat, 99)),
            "max": ms(max(shed_lat, default=None)),
        },
        "retry_after_s": {
            "min": min((r for r, s in zip(rec.retry_after, rec.status, strict=True) if s == 503), default=None),
            "max": max((r for r, s in zip(rec.retry_after, rec.status, strict=True) if s == 503), default=None),
        },
        "depth_source": args.depth_source,
        "max_depth": max((d.depth for d in depths), default=None),
        "max_depth_plus_reserved": max((d.depth + d.reserved for d in depths), default=None),
        "drain_wait_s": None if drain_seconds is None else round(drain_seconds, 2),
        "not_done_after_wait": not_done,
        "accept_to_done_s": {"p50": percentile(a2d, 50), "p99": percentile(a2d, 99), "max": a2d[-1] if a2d else None},
    }
    if check is not None:
        summary["check"] = {k: v for k, v in check.items() if not k.startswith("_")}
    return summary


def time_series(args, run: dict, check: dict | None) -> list[dict]:
    """Per-second rows over the run (scheduled time), plus the drain seconds after it."""
    rec: Record = run["rec"]
    a2d = (check or {}).get("_accept_to_done", {})
    t0_wall = run["t0_wall"]
    horizon = int(math.ceil(args.duration))
    done_at = [created - t0_wall + v for created, v in a2d.values()]
    if done_at:
        horizon = max(horizon, int(max(done_at)) + 1)
    horizon = min(horizon, int(args.duration + args.drain_timeout + 60))
    rows = [
        {
            "t": s,
            "offered": 0,
            "accepted": 0,
            "shed": 0,
            "other": 0,
            "overflow": 0,
            "_acc": [],
            "_shed": [],
            "max_depth": None,
            "max_reserved": None,
            "fanout_done": 0,
            "_a2d": [],
        }
        for s in range(horizon)
    ]

    def row(t: float):
        s = int(t)
        return rows[s] if 0 <= s < horizon else None

    for t, lat, s in zip(rec.sched, rec.latency, rec.status, strict=True):
        r = row(t)
        if r is None:
            continue
        r["offered"] += 1
        if s == 202:
            r["accepted"] += 1
            r["_acc"].append(lat)
        elif s == 503:
            r["shed"] += 1
            r["_shed"].append(lat)
        else:
            r["other"] += 1
    for t in run["overflow_sched"]:
        r = row(t)
        if r is not None:
            r["offered"] += 1
            r["overflow"] += 1
    for d in run["depth"]:
        r = row(d.t)
        if r is not None and d.depth >= 0:
            r["max_depth"] = max(r["max_depth"] or 0, d.depth)
            r["max_reserved"] = max(r["max_reserved"] or 0, d.reserved)
    for created, v in a2d.values():
        r = row(created - t0_wall)
        if r is not None:
            r["_a2d"].append(v)
        r = row(created - t0_wall + v)
        if r is not None:
            r["fanout_done"] += 1
    for r in rows:
        r["accepted_p99_ms"] = ms(percentile(r.pop("_acc"), 99))
        r["shed_p99_ms"] = ms(percentile(r.pop("_shed"), 99))
        values = r.pop("_a2d")
        r["accept_to_done_p50_s"] = percentile(values, 50)
        r["accept_to_done_p99_s"] = percentile(values, 99)
        r["accept_to_done_max_s"] = max(values, default=None)
    return rows


def fmt(value, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def print_report(s: dict) -> None:
    print(f"\n== load on {s['url']} ({s['model']}, {s['duration_s']} s, {s['users']} users)")
    print(f"offered     {s['offered']:>7}  ({s['offered_per_s']:.1f}/s; target {s['rate_target'] or '-'}/s)")
    print(
        f"accepted    {s['accepted']:>7}  ({s['accepted_per_s']:.1f}/s)  latency p50 {fmt(s['accepted_latency_ms']['p50'], ' ms')}, "
        f"p99 {fmt(s['accepted_latency_ms']['p99'], ' ms')}"
    )
    print(
        f"shed (503)  {s['shed']:>7}  ({s['shed_per_s']:.1f}/s)  latency p50 {fmt(s['shed_latency_ms']['p50'], ' ms')}, "
        f"p99 {fmt(s['shed_latency_ms']['p99'], ' ms')}; Retry-After {s['retry_after_s']['min']}..{s['retry_after_s']['max']} s"
    )
    others = {k: v for k, v in s["statuses"].items() if k not in ("202", "503")}
    print(f"other       {sum(others.values()):>7}  {others or ''}")
    print(f"overflow    {s['client_overflow']:>7}  (not sent: {s['max_in_flight']} requests already in flight)")
    print(
        f"client      send lag p99 {fmt(s['send_lag_p99_ms'], ' ms')}, max in flight {s['max_in_flight_seen']}, "
        f"{s['connections_opened']} connections, {s['client_cpu_s']:.1f} s of CPU"
    )
    print(
        f"queue       max depth {s['max_depth']} (with reservations {s['max_depth_plus_reserved']}; via {s['depth_source']})"
    )
    a2d = s["accept_to_done_s"]
    print(
        f"fan-out     accept->done p50 {fmt(a2d['p50'], ' s', 2)}, p99 {fmt(a2d['p99'], ' s', 2)}, max {fmt(a2d['max'], ' s', 2)}; "
        f"drained {fmt(s['drain_wait_s'], ' s')} after the run"
    )
    phases = (s.get("check") or {}).get("phases_s")
    if phases:
        print(
            "            of which "
            + ", ".join(
                f"{name.replace('_', ' ')} p50 {fmt(p['p50'], ' s', 3)} p99 {fmt(p['p99'], ' s', 3)}"
                for name, p in phases.items()
            )
        )
    c = s.get("check")
    if c is not None:
        verdict = "zero accepted tweets lost" if c["lost"] == 0 else f"LOST {c['lost']} accepted tweet(s)"
        print(
            f"check       {verdict}: {c['accepted']} accepted ({c['accepted_without_202_seen']} of them made by posts "
            f"whose 202 the client did not see); missing in db {c['missing_in_db']}, not done {c['not_done']}, "
            f"delivered < recipients {c['delivered_short']}, missing from timelines {c['missing_from_timelines']} "
            f"({c['timeline_checks']} timeline entries checked in {c['materialized_timelines']} materialized timelines); "
            f"503 answers that made a tweet anyway: {c['shed_but_made']}"
        )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second (open model)")
    p.add_argument("--concurrency", type=int, default=0, help="closed model with this many posters instead of --rate")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    p.add_argument("--users", type=int, default=200, help="post as this many users (the most-followed first)")
    p.add_argument("--usernames", default="", help="comma-separated users to post as, instead of --users")
    p.add_argument("--cookies-from", type=Path, help="session keys to use instead of making sessions")
    p.add_argument("--max-in-flight", type=int, default=256, help="cap on requests awaiting an answer")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as timed out")
    p.add_argument("--depth-source", choices=("redis", "stats", "none"), default="redis")
    p.add_argument("--staff-user", default="admin", help="staff user for --depth-source stats")
    p.add_argument("--redis-url", default="", help="default: REDIS_URL from the Django settings")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for delivery after the run")
    p.add_argument("--no-check", action="store_true", help="skip the wait for delivery and the loss check")
    p.add_argument("--json-out", type=Path, help="write the report and a per-second series here")
    args = p.parse_args(argv)
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        p.error("--url must be on this machine (127.0.0.1)")
    if args.rate <= 0 and not args.concurrency:
        p.error("--rate must be positive")
    if not 0 < args.duration <= 3600:
        p.error("--duration must be within (0, 3600] seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    django_setup()
    redis_url = args.redis_url or redis_url_from_settings()
    made: list[str] = []  # sessions this run made, deleted at the end
    if args.cookies_from:
        sessions = read_cookies(args.cookies_from)
    else:
        usernames = [u.strip() for u in args.usernames.split(",") if u.strip()] or None
        sessions = make_sessions(users=args.users, usernames=usernames)
        made += [s["session"] for s in sessions]
    staff = None
    if args.depth_source == "stats":
        staff = staff_session(args.staff_user)
        made.append(staff["session"])
    try:
        what = f"{args.concurrency} closed-loop posters" if args.concurrency else f"{args.rate:g}/s"
        print(f"loadgen: {what} for {args.duration:g} s on {args.url} as {len(sessions)} users", flush=True)
        run = asyncio.run(run_load(args, sessions, staff, redis_url))
        run["users"] = len(sessions)
        print(f"load over after {run['elapsed']:.1f} s; waiting for delivery and checking", flush=True)
        rec = run["rec"]
        accepted = [t for t, s in zip(rec.tweet_id, rec.status, strict=True) if s == 202]
        check = drain = not_done = None
        if not args.no_check:
            # The server's view: a post whose answer the client never saw (a timeout, a dropped
            # connection) may still have made a tweet, which is then accepted and must be delivered
            # too; a post answered 503 must have made nothing.
            made_tweets = tweets_by_client_id(rec.client_id)
            seen = set(accepted)
            unseen = sorted(
                {
                    made_tweets[c]
                    for c, s in zip(rec.client_id, rec.status, strict=True)
                    if s != 202 and c in made_tweets
                }
                - seen
            )
            shed_made = sum(1 for c, s in zip(rec.client_id, rec.status, strict=True) if s == 503 and c in made_tweets)
            drain, not_done = wait_for_delivery(
                accepted + unseen,
                timeout=args.drain_timeout,
                log=lambda m: print(m, flush=True),
                redis_url=redis_url if args.depth_source == "redis" else None,
                t0_wall=run["t0_wall"],
                depth=run["depth"],
            )
            check = verify(accepted + unseen, redis_url=redis_url)
            check["accepted_without_202_seen"] = len(unseen)
            check["shed_but_made"] = shed_made  # not a loss, but a broken promise: reported on its own
        summary = summarize(args, run, check, drain, not_done)
        print_report(summary)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            series = time_series(args, run, check)
            depth = [[round(d.t, 3), d.depth, d.reserved] for d in run["depth"]]
            args.json_out.write_text(json.dumps({"summary": summary, "series": series, "depth_samples": depth}))
        if check is not None and (check["lost"] or check["shed_but_made"]):
            return 2
        return 0
    finally:
        if made:
            try:
                delete_sessions(made)
            except Exception as exc:  # the report is out; say so, but do not fail the run for it
                print(f"could not delete the {len(made)} session(s) this run made: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
