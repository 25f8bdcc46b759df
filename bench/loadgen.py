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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import Pool, header, new_sessions, percentile, post_request  # noqa: E402

TIMEOUT, CONN_ERROR = -2, -3  # pseudo-statuses of requests that got no answer
# A 503 is load shedding only with the "overloaded" code; "unavailable" means Redis failed.
UNAVAILABLE = 1503


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def p50_p99_max(values, scale=lambda v: v) -> dict:
    return {
        "p50": scale(percentile(values, 50)),
        "p99": scale(percentile(values, 99)),
        "max": scale(max(values, default=None)),
    }


# -- Django: sessions before the run, checks after it -----------------------------------------------


def users_to_post_as(args) -> list:
    """The named users, or the ``--users`` most-followed ones."""
    from django.contrib.auth import get_user_model
    from django.db.models import Count

    User = get_user_model()
    usernames = [u.strip() for u in args.usernames.split(",") if u.strip()]
    if usernames:
        chosen = list(User.objects.filter(username__in=usernames, is_active=True).order_by("pk"))
        missing = set(usernames) - {u.username for u in chosen}
        if missing:
            raise SystemExit(f"no such user(s): {', '.join(sorted(missing))}")
    else:
        # The most-followed users first, so that the posts make fan-out work (on the demo data:
        # celebrity, then alice, bob, carol, dave, then fans).
        users = User.objects.filter(is_active=True, is_staff=False).annotate(n=Count("follower_set"))
        chosen = list(users.order_by("-n", "pk")[: args.users])
    if not chosen:
        raise SystemExit("no users to post as: is this the right database?")
    return chosen


def staff_user(username: str):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=username, is_staff=True, is_active=True).first()
    if user is None:
        raise SystemExit(f"--depth-source stats needs a staff user; {username!r} is not one")
    return user


def log_in(users: list) -> list[dict]:
    keys = new_sessions(users, hours=6)
    return [{"user_id": u.pk, "username": u.username, "session": keys[u.pk]} for u in users]


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


def tweets_by_client_id(client_ids: list[str]) -> dict[str, int]:
    """The tweets the server made for these client_ids (whatever the client saw)."""
    from timeline.models import Tweet

    found: dict[str, int] = {}
    for i in range(0, len(client_ids), 500):
        rows = Tweet.objects.filter(client_id__in=client_ids[i : i + 500]).values_list("id", "client_id")
        found.update((str(client_id), tweet_id) for tweet_id, client_id in rows)
    return found


def wait_for_delivery(
    accepted: list[int], *, timeout: float, redis_url: str | None, t0_wall: float, depth: list
) -> tuple[float, dict[str, int]]:
    """Wait until every accepted tweet's fan-out is done, within ``timeout``; with ``redis_url``,
    the queue depth goes on being sampled meanwhile (the backlog draining)."""
    import redis as redis_lib

    from fanout.admission import QUEUE_KEY, RESERVATIONS_KEY
    from fanout.models import Fanout

    if not accepted:
        return 0.0, {}
    client = redis_lib.Redis.from_url(redis_url) if redis_url else None
    wanted = set(accepted)
    t0 = last_log = time.monotonic()
    while True:
        states: dict[str, int] = {}
        not_done = Fanout.objects.filter(tweet_id__gte=min(wanted)).exclude(state=Fanout.State.DONE)
        for tweet_id, state in not_done.values_list("tweet_id", "state"):
            if tweet_id in wanted:
                states[state] = states.get(state, 0) + 1
        waited = time.monotonic() - t0
        if client is not None:
            with contextlib.suppress(Exception):
                sample = DepthSample(
                    time.time() - t0_wall, int(client.llen(QUEUE_KEY)), int(client.zcard(RESERVATIONS_KEY))
                )
                depth.append(sample)
        if not states or waited > timeout:
            return waited, states
        if time.monotonic() - last_log > 5:
            print(
                f"  waiting for delivery: {sum(states.values())} fan-out(s) not done yet {states} ({waited:.0f}s)",
                flush=True,
            )
            last_log = time.monotonic()
        time.sleep(0.5)


def verify(accepted: list[int], *, redis_url: str) -> dict:
    """Check every accepted tweet in the database and the home timelines; see the module doc."""
    import redis as redis_lib
    from django.conf import settings

    from fanout import timelines
    from fanout.models import Fanout
    from timeline.models import Follow, Tweet

    counts = ("missing_in_db", "not_done", "delivered_short", "recipients_not_followers", "missing_from_timelines")
    result = {"accepted": len(accepted), **dict.fromkeys(counts, 0), "timeline_misses": 0, "timeline_checks": 0}
    result |= {"materialized_timelines": 0, "lost": 0}
    if not accepted:
        return result
    wanted, low = set(accepted), min(accepted)
    rows = {}
    phases: dict[str, list[float]] = {"enqueue": [], "queue_wait": [], "run": []}
    columns = ("tweet_id", "tweet__author_id", "tweet__created_at", "state", "delivered", "recipients")
    for tweet_id, author_id, created, state, delivered, recipients, enqueued, started, finished in (
        Fanout.objects.filter(tweet_id__gte=low)
        .values_list(*columns, "enqueued_at", "started_at", "finished_at")
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
            if members:  # else not materialized: rebuilt from the database on read, nothing to check
                ids = {int(m) for m in members} - {0}
                held[u] = (ids, min(ids) if ids and len(ids) >= settings.TIMELINE_CAP else None)
    result["materialized_timelines"] = len(held)

    lost_ids, details = set(), []  # the first few lost tweets, with what is wrong with them
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
            if u in held:
                result["timeline_checks"] += 1
                ids, oldest_kept = held[u]
                if tweet_id not in ids and (oldest_kept is None or tweet_id >= oldest_kept):
                    missing_here.append(u)  # neither there nor trimmed from a full timeline as too old
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
    result |= {"lost": len(lost_ids), "lost_sample": sorted(lost_ids)[:20], "lost_details": details}
    result["_accept_to_done"] = accept_to_done
    result["phases_s"] = {name: p50_p99_max(v) for name, v in phases.items()}
    return result


# -- the run ------------------------------------------------------------------------------------------


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
    *, source: str, redis_url: str, pool: Pool, stats_request: bytes | None, t0: float, end: float, samples: list
) -> None:
    """Sample the queue depth every 200 ms, from Redis or from /api/stats."""
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
            await asyncio.sleep(max(0.0, t0 + tick * 0.2 - loop.time()))
    finally:
        if client is not None:
            await client.aclose()


async def run_load(args, sessions: list[dict], staff: dict | None, redis_url: str) -> dict:
    parts = urlsplit(args.url)
    host, port = parts.hostname, parts.port or 80
    host_header = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    pool = Pool(host, port)
    rec = Record()
    in_flight = max_in_flight_seen = 0
    tasks: set[asyncio.Task] = set()
    run_tag = uuid.uuid4().hex[:6]

    async def one(i: int, sched: float, t_sched_abs: float) -> None:
        nonlocal in_flight
        client_id = str(uuid.uuid4())
        payload = {"body": f"load test {run_tag} #{i}", "client_id": client_id}
        data = post_request(host_header, sessions[i % len(sessions)]["session"], payload)
        sent = loop.time()
        status, tweet_id, retry_after = CONN_ERROR, 0, 0
        try:
            status, head, body = await pool.request(data, timeout=args.timeout)
            if status == 202:
                # The tweet's id is the first "id" in the answer: {"tweet": {"id": N, ...
                at = body.find(b'"id":') + 5
                tweet_id = int(body[at : body.find(b",", at)])
            elif status in (429, 503):
                retry_after = int(header(head, b"retry-after") or 0)
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

    # A person posts from a page they loaded, and the load (or logging in) put their session in
    # Redis's cache: so does each poster here, before the clock starts.
    warm = asyncio.Semaphore(8)

    async def load_page(session: str) -> None:
        request = (
            f"GET /api/timeline/home?limit=1 HTTP/1.1\r\nHost: {host_header}\r\nCookie: sessionid={session}\r\n\r\n"
        )
        async with warm:
            await pool.request(request.encode(), timeout=30)

    await asyncio.gather(*(load_page(s["session"]) for s in sessions))

    depth_samples: list[DepthSample] = []
    cpu0 = time.process_time()
    t0 = loop.time() + 0.2
    wall0 = time.time() + (t0 - loop.time())
    end = t0 + args.duration
    poller = None
    if args.depth_source != "none":
        stats = (
            f"GET /api/stats HTTP/1.1\r\nHost: {host_header}\r\nCookie: sessionid={staff['session']}\r\n\r\n"
            if staff
            else ""
        )
        poller = loop.create_task(
            poll_depth(
                source=args.depth_source,
                redis_url=redis_url,
                pool=Pool(host, port),
                stats_request=stats.encode() if staff else None,
                t0=t0,
                end=end + 0.5,
                samples=depth_samples,
            )
        )
    overflow_sched: list[float] = []
    if args.concurrency:  # closed model: K posters, each waits for its answer before the next
        counter = iter(range(10**9))

        async def poster() -> None:
            nonlocal in_flight, max_in_flight_seen
            while loop.time() < end:
                now = loop.time()
                in_flight += 1
                max_in_flight_seen = max(max_in_flight_seen, in_flight)
                await one(next(counter), now - t0, now)

        await asyncio.sleep(max(0.0, t0 - loop.time()))
        await asyncio.gather(*(poster() for _ in range(args.concurrency)))
        sent = len(rec.status)
    else:  # open model: request i is due at t0 + i / rate, sent then whatever else is going on
        total, i, sent = int(round(args.rate * args.duration)), 0, 0
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


# -- the report -------------------------------------------------------------------------------------


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
    shed_retry_after = [r for r, s in zip(rec.retry_after, rec.status, strict=True) if s == 503]
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
        "accepted_latency_ms": p50_p99_max(acc_lat, ms),
        "shed_latency_ms": p50_p99_max(shed_lat, ms),
        "retry_after_s": {"min": min(shed_retry_after, default=None), "max": max(shed_retry_after, default=None)},
        "depth_source": args.depth_source,
        "max_depth": max((d.depth for d in depths), default=None),
        "max_depth_plus_reserved": max((d.depth + d.reserved for d in depths), default=None),
        "drain_wait_s": None if drain_seconds is None else round(drain_seconds, 2),
        "not_done_after_wait": not_done,
        "accept_to_done_s": p50_p99_max(a2d),
    }
    if check is not None:
        summary["check"] = {k: v for k, v in check.items() if not k.startswith("_")}
    return summary


def time_series(args, run: dict, check: dict | None) -> list[dict]:
    """Per-second rows over the run (scheduled time), plus the drain seconds after it."""
    rec: Record = run["rec"]
    a2d = (check or {}).get("_accept_to_done", {})
    t0_wall = run["t0_wall"]
    done_at = [created - t0_wall + v for created, v in a2d.values()]
    horizon = max(int(math.ceil(args.duration)), int(max(done_at)) + 1 if done_at else 0)
    horizon = min(horizon, int(args.duration + args.drain_timeout + 60))
    counts = ("offered", "accepted", "shed", "other", "overflow", "fanout_done")
    rows = [
        {
            "t": s,
            **dict.fromkeys(counts, 0),
            "_acc": [],
            "_shed": [],
            "_a2d": [],
            "max_depth": None,
            "max_reserved": None,
        }
        for s in range(horizon)
    ]

    def row(t: float):
        return rows[int(t)] if 0 <= int(t) < horizon else None

    for t, lat, s in zip(rec.sched, rec.latency, rec.status, strict=True):
        if (r := row(t)) is not None:
            r["offered"] += 1
            kind = {202: ("accepted", "_acc"), 503: ("shed", "_shed")}.get(s)
            r[kind[0] if kind else "other"] += 1
            if kind:
                r[kind[1]].append(lat)
    for t in run["overflow_sched"]:
        if (r := row(t)) is not None:
            r["offered"] += 1
            r["overflow"] += 1
    for d in run["depth"]:
        if (r := row(d.t)) is not None and d.depth >= 0:
            r["max_depth"] = max(r["max_depth"] or 0, d.depth)
            r["max_reserved"] = max(r["max_reserved"] or 0, d.reserved)
    for created, v in a2d.values():
        if (r := row(created - t0_wall)) is not None:
            r["_a2d"].append(v)
        if (r := row(created - t0_wall + v)) is not None:
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
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def print_report(s: dict) -> None:
    acc, shed, a2d = s["accepted_latency_ms"], s["shed_latency_ms"], s["accept_to_done_s"]
    others = {k: v for k, v in s["statuses"].items() if k not in ("202", "503")}
    lines = [
        f"\n== load on {s['url']} ({s['model']}, {s['duration_s']} s, {s['users']} users)",
        f"offered     {s['offered']:>7}  ({s['offered_per_s']:.1f}/s; target {s['rate_target'] or '-'}/s)",
        f"accepted    {s['accepted']:>7}  ({s['accepted_per_s']:.1f}/s)  latency p50 {fmt(acc['p50'], ' ms')}, "
        f"p99 {fmt(acc['p99'], ' ms')}",
        f"shed (503)  {s['shed']:>7}  ({s['shed_per_s']:.1f}/s)  latency p50 {fmt(shed['p50'], ' ms')}, "
        f"p99 {fmt(shed['p99'], ' ms')}; Retry-After {s['retry_after_s']['min']}..{s['retry_after_s']['max']} s",
        f"other       {sum(others.values()):>7}  {others or ''}",
        f"overflow    {s['client_overflow']:>7}  (not sent: {s['max_in_flight']} requests already in flight)",
        f"client      send lag p99 {fmt(s['send_lag_p99_ms'], ' ms')}, max in flight {s['max_in_flight_seen']}, "
        f"{s['connections_opened']} connections, {s['client_cpu_s']:.1f} s of CPU",
        f"queue       max depth {s['max_depth']} (with reservations {s['max_depth_plus_reserved']}; "
        f"via {s['depth_source']})",
        f"fan-out     accept->done p50 {fmt(a2d['p50'], ' s', 2)}, p99 {fmt(a2d['p99'], ' s', 2)}, "
        f"max {fmt(a2d['max'], ' s', 2)}; drained {fmt(s['drain_wait_s'], ' s')} after the run",
    ]
    c = s.get("check")
    if c and c.get("phases_s"):
        phases = (
            f"{k.replace('_', ' ')} p50 {fmt(p['p50'], ' s', 3)} p99 {fmt(p['p99'], ' s', 3)}"
            for k, p in c["phases_s"].items()
        )
        lines.append("            of which " + ", ".join(phases))
    if c is not None:
        verdict = "zero accepted tweets lost" if c["lost"] == 0 else f"LOST {c['lost']} accepted tweet(s)"
        lines.append(
            f"check       {verdict}: {c['accepted']} accepted ({c['accepted_without_202_seen']} of them made by posts "
            f"whose 202 the client did not see); missing in db {c['missing_in_db']}, not done {c['not_done']}, "
            f"delivered < recipients {c['delivered_short']}, missing from timelines {c['missing_from_timelines']} "
            f"({c['timeline_checks']} timeline entries checked in {c['materialized_timelines']} materialized timelines); "
            f"503 answers that made a tweet anyway: {c['shed_but_made']}"
        )
    print("\n".join(lines))


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
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timeline.settings")
    import django

    django.setup()
    from django.conf import settings

    redis_url = args.redis_url or settings.REDIS_URL
    sessions = read_cookies(args.cookies_from) if args.cookies_from else log_in(users_to_post_as(args))
    staff = log_in([staff_user(args.staff_user)])[0] if args.depth_source == "stats" else None
    made = [s["session"] for s in [*([] if args.cookies_from else sessions), *([staff] if staff else [])]]
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
            answered = list(zip(rec.client_id, rec.status, strict=True))
            unseen = sorted({made_tweets[c] for c, s in answered if s != 202 and c in made_tweets} - set(accepted))
            drain, not_done = wait_for_delivery(
                accepted + unseen,
                timeout=args.drain_timeout,
                redis_url=redis_url if args.depth_source == "redis" else None,
                t0_wall=run["t0_wall"],
                depth=run["depth"],
            )
            check = verify(accepted + unseen, redis_url=redis_url)
            check["accepted_without_202_seen"] = len(unseen)
            # Not a loss, but a broken promise: reported on its own.
            check["shed_but_made"] = sum(1 for c, s in answered if s == 503 and c in made_tweets)
        summary = summarize(args, run, check, drain, not_done)
        print_report(summary)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            depth = [[round(d.t, 3), d.depth, d.reserved] for d in run["depth"]]
            series = time_series(args, run, check)
            args.json_out.write_text(json.dumps({"summary": summary, "series": series, "depth_samples": depth}))
        return 2 if check is not None and (check["lost"] or check["shed_but_made"]) else 0
    finally:
        if made:
            try:
                delete_sessions(made)
            except Exception as exc:  # the report is out; say so, but do not fail the run for it
                print(f"could not delete the {len(made)} session(s) this run made: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
