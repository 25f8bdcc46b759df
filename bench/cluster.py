#!/usr/bin/env python
"""A multi-host run: the app on hosts that share nothing but PostgreSQL and Redis.

    .venv/bin/python bench/cluster.py [--timeout 300] [--cap 10] [--posts 150] [--unplug-first]

The README says the app scales past one machine by pointing web and worker processes on many
hosts at one PostgreSQL and one Redis. This shows it on one machine (as root), each host a
network namespace on a private bridge (bench/netns.py; the machine's own network is left alone):
data 10.77.0.2 (PostgreSQL, Redis), lb .10 (HAProxy on port 80), web1 .11 and web2 .12 (daphne
on 8000), workers .20 (fanout_worker x2, fanout_cron), client .100 (this script: the people,
their pages and sockets). Each host has its own VAR_DIR; all share one secret key, as a
deployment must. Each check prints PASS or FAIL (exit 1 if any fails); then the figures:

1. Shared nothing: HAProxy reaches both web hosts; a follow made through it is seen by both; a
   post through it is accepted; tweets posted on one host reach sockets held by the other.
2. Live push across hosts for a series of posts (its latency), and every fan-out done.
3. The queue cap holds across hosts: workers stopped, 3 x cap posts at once through both hosts
   get cap 202s and 503s with Retry-After, the queue never deeper than the cap; the workers,
   started again, deliver them all.
4. A web host lost while pages are connected through HAProxy (they reconnect and fill their
   gaps as static/js/live.js does; see Page) and posts stream in (retried with their client_id,
   as the page does): web2's processes are SIGKILLed and its link taken down (--unplug-first:
   the link first, as a machine losing power). Posts go on being accepted, web2's pages come
   back on web1, every fan-out is done, every page shows each tweet it is owed once, and no
   client_id made two tweets.

Bounded by --timeout and by request counts. Every process it starts is stopped by process group
(PostgreSQL by pg_ctl) and its namespaces deleted, on exit, Ctrl-C, errors and the timeout; the
logs stay in a temporary folder when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import netns  # noqa: E402
from bench.harness import BASE_DIR  # noqa: E402

SUBNET = "10.77.0"
ADDRESSES = {"data": 2, "lb": 10, "web1": 11, "web2": 12, "workers": 20, "client": 100}
WEBS, VICTIM, SURVIVOR = ("web1", "web2"), "web2", "web1"
WEB_PORT, PG_PORT, REDIS_PORT = 8000, 5432, 6379
AUTHORS, READERS = 4, 8
CSRF = "c" * 32  # the CSRF check compares the csrftoken cookie with the X-CSRFToken header
# The page's backoffs (static/js/live.js, compose.js): full jitter, (base, cap) in seconds. It
# pings every 25 s for the watermark; here every second, as a run lasts seconds.
RECONNECT, POST_BACKOFF, PING_EVERY = (1.0, 30.0), (1.0, 60.0), 1.0
POST_TRIES, FILL_TRIES = 12, 8
# Sent again with the same client_id: unreachable, the proxy's 502 and 504, a 503 (after Retry-After).
RETRIED = {0, 502, 503, 504}


def addr(host: str) -> str:
    return f"{SUBNET}.{ADDRESSES[host]}"


def web_url(host: str) -> str:
    return f"http://{addr(host)}:{WEB_PORT}"


LB_URL = f"http://{addr('lb')}"  # port 80
HAPROXY_CFG = f"""\
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    # An upgraded websocket is a tunnel, quiet for as long as nobody posts.
    timeout tunnel 1h
    # A connection refused or timed out is tried again, on another server.
    retries 2
    option redispatch
frontend app
    bind {addr("lb")}:80
    default_backend web
backend web
    # Sockets live long: each new one goes to the host holding fewest.
    balance leastconn
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {addr("lb")}
    # Which host answered: the checks need to know where each socket lives.
    http-response set-header X-Served-By %[srv_name]
    # Down after two failed checks, its sessions cut: pages on a host that died without a word
    # reconnect now, not when TCP gives up.
    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server web1 {addr("web1")}:{WEB_PORT} check
    server web2 {addr("web2")}:{WEB_PORT} check
"""
results: list[bool] = []
figures: list[str] = []


def check(label: str, ok, detail: str = "") -> None:
    results.append(bool(ok))
    print(f"{'PASS' if ok else 'FAIL'}  {label}" + (f" ({detail})" if detail else ""), flush=True)


def pct(seconds: list[float], q: float) -> str:
    ordered = sorted(seconds) or [float("nan")]
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"


class Stopped(SystemExit):
    """Ctrl-C, SIGTERM or --timeout: a SystemExit, which asyncio lets out of any task."""


async def in_thread(function, *args):
    """Blocking work (HTTP, the ORM) in a thread; a database connection it opened is closed."""
    from django.db import connections

    def run():
        try:
            return function(*args)
        finally:
            connections.close_all()

    return await asyncio.get_running_loop().run_in_executor(None, run)


async def eventually(predicate, *, timeout: float, blocking: bool = False) -> float | None:
    """Seconds until ``predicate()`` held (in a thread if ``blocking``), None if not within ``timeout``."""
    started = time.monotonic()
    while not (await in_thread(predicate) if blocking else predicate()):
        if time.monotonic() - started > timeout:
            return None
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# -- the hosts ----------------------------------------------------------------------------------


class Cluster:
    """The hosts, PostgreSQL and Redis on the data host, and the environment of every app process."""

    def __init__(self, tmp: Path, cap: int) -> None:
        self.tmp, self.net, self.data_servers = tmp, netns.Network(SUBNET), []
        self.app_env = {
            "DATABASE_URL": f"postgres://postgres@{addr('data')}:{PG_PORT}/timeline",
            "REDIS_URL": f"redis://{addr('data')}:{REDIS_PORT}/0",
            "DJANGO_ALLOWED_HOSTS": ",".join(addr(h) for h in ("lb", *WEBS)),
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),  # a session made on one host is read on all
            "FANOUT_QUEUE_CAP": str(cap),
            "TWEET_RATE_LIMIT": "0",  # these authors post far faster than people; not under test here
            "PYTHONUNBUFFERED": "1",
        }

    def build(self) -> None:
        """The network, PostgreSQL and Redis on the data host, and this process on the client host."""
        from fanout.postgres_server import PostgresServer
        from fanout.redis_server import RedisServer

        for host, last_octet in ADDRESSES.items():
            self.net.add(host, last_octet)
        data = self.tmp / "data"
        with netns.inside(self.net.hosts["data"].namespace):
            pg = PostgresServer(data / "postgres", PG_PORT, host=addr("data"), trusted_network=f"{SUBNET}.0/24")
            self.data_servers.append(pg.start())
            self.data_servers.append(RedisServer(data / "redis", REDIS_PORT, host=addr("data")).start())
        netns.enter(self.net.hosts["client"].namespace)
        os.environ.update(self.app_env, VAR_DIR=str(self.tmp / "client"), DJANGO_SETTINGS_MODULE="timeline.settings")
        (self.tmp / "logs").mkdir()

    def start(self, host: str, name: str, *command: str) -> None:
        env = {**os.environ, "VAR_DIR": str(self.tmp / host)}  # each host its own
        self.net.hosts[host].start(name, *command, log=self.tmp / "logs" / f"{host}-{name}.log", cwd=BASE_DIR, env=env)

    def start_workers(self) -> None:
        for name in ("worker1", "worker2"):
            self.start("workers", name, sys.executable, "manage.py", "fanout_worker", "-v", "0")

    def close(self) -> None:
        """The app's processes, then PostgreSQL and Redis, then the network and anything left on it."""
        for host in self.net.hosts.values():
            host.stop()
        for server in reversed(self.data_servers):
            with contextlib.suppress(Exception):
                server.stop()
        namespaces, stray = len(self.net.namespaces), self.net.delete()
        print(f"cleanup: every process stopped, {namespaces} namespaces deleted, {len(stray)} stray processes killed")


# -- people, and the requests their pages make ------------------------------------------------


@dataclass
class Person:
    id: int
    username: str
    cookie: str
    follows: set[int] = field(default_factory=set)


def log_in(user) -> str:
    """A session made directly, holding what django.contrib.auth.login puts in one; its cookie."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY], session[HASH_SESSION_KEY] = str(user.pk), user.get_session_auth_hash()
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def populate(quiet_followers: int) -> tuple[list[Person], list[Person]]:
    """Authors, and readers whose pages watch them, made in bulk. Reader r follows authors r and
    r + 1 (reader 1 follows author 0 through the API, in check 1); each author has
    ``quiet_followers`` more, without a page, so that a fan-out does real work."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from fanout import timelines
    from fanout.connection import get_redis
    from timeline.models import Follow

    User, unusable = get_user_model(), make_password(None)
    quiet = {f"quiet{a}_{i}": a for a in range(AUTHORS) for i in range(quiet_followers)}
    names = [f"author{a}" for a in range(AUTHORS)] + [f"reader{r}" for r in range(READERS)] + list(quiet)
    User.objects.bulk_create([User(username=n, password=unusable) for n in names], batch_size=2000)
    users = {u.username: u for u in User.objects.all()}
    authors, readers = [
        [Person(users[f"{kind}{i}"].pk, f"{kind}{i}", log_in(users[f"{kind}{i}"])) for i in range(count)]
        for kind, count in (("author", AUTHORS), ("reader", READERS))
    ]
    follows = [Follow(follower_id=users[name].pk, followee_id=authors[a].id) for name, a in quiet.items()]
    for r, reader in enumerate(readers):
        reader.follows = {authors[r % AUTHORS].id, authors[(r + 1) % AUTHORS].id} - {authors[0].id if r == 1 else 0}
        follows += [Follow(follower_id=reader.id, followee_id=a) for a in reader.follows]
    Follow.objects.bulk_create(follows, batch_size=2000)
    # Every timeline in Redis (empty), as for people who read theirs: a fan-out writes to them all.
    with get_redis().pipeline(transaction=False) as pipe:
        for user in users.values():
            pipe.zadd(timelines.key(user.pk), {timelines.SENTINEL: 0})
        pipe.execute()
    return authors, readers


def undone(tweet_ids: list[int]) -> int:
    """How many of these tweets' fan-outs are not done, in PostgreSQL."""
    from fanout.models import Fanout

    return Fanout.objects.filter(tweet_id__in=tweet_ids).exclude(state=Fanout.State.DONE).count()


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # these hosts are ours: no proxy


def call(method: str, url: str, cookie: str = "", payload: dict | None = None):
    """One API call with the session cookie and the CSRF pair: (status, headers, JSON); 0 if unreachable."""
    headers = {"Accept": "application/json", "Cookie": f"{cookie}; csrftoken={CSRF}", "X-CSRFToken": CSRF}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with _opener.open(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            return error.code, error.headers, json.loads(error.read() or b"null")
        return error.code, error.headers, None
    except (OSError, ValueError, http.client.HTTPException):
        return 0, {}, None


def post(url: str, author: Person, client_id: str | None = None):
    payload = {"body": "hello from the cluster", "client_id": client_id or str(uuid.uuid4())}
    return call("POST", f"{url}/api/tweets", author.cookie, payload)


def socket_to(base_url: str, person: Person):
    """A websocket to the host at ``base_url``, with the Origin a page served from there sends."""
    from websockets.asyncio.client import connect

    headers = {"Cookie": person.cookie, "Origin": base_url}
    url = base_url.replace("http://", "ws://") + "/ws/timeline/"
    return connect(url, additional_headers=headers, proxy=None, open_timeout=10, ping_interval=None)


# -- checks 1 and 2: shared nothing, live push across hosts -------------------------------------


async def check_shared_nothing(authors: list[Person], readers: list[Person], live_posts: int) -> list[int]:
    """Checks 1 and 2 but for the fan-outs; the ids of the tweets accepted."""
    direct = [(await in_thread(call, "GET", f"{web_url(h)}/healthz"))[0] for h in WEBS]
    served: set = set()
    for _ in range(50):  # HAProxy takes a host in after two good checks; at once, least connections uses both
        answers = await asyncio.gather(*(in_thread(call, "GET", f"{LB_URL}/healthz") for _ in range(4)))
        served |= {headers.get("X-Served-By") for status, headers, _ in answers if status == 200}
        if served >= set(WEBS):
            break
        await asyncio.sleep(0.2)
    served_by = ", ".join(sorted(map(str, served)))
    check("1 both web hosts healthy, HAProxy reaches both", direct == [200] * 2 and served == set(WEBS), served_by)

    author0, reader1 = authors[0], readers[1]
    status, _, body = await in_thread(call, "POST", f"{LB_URL}/api/users/{author0.username}/follow", reader1.cookie)
    seen = [
        (await in_thread(call, "GET", f"{web_url(h)}/api/users/{author0.username}", reader1.cookie))[2] for h in WEBS
    ]
    followed = status == 200 and body["followed_by_me"] and all(s and s["followed_by_me"] for s in seen)
    check("1 following through HAProxy works, and both web hosts see the follow", followed)
    reader1.follows.add(author0.id)
    status, headers, body = await in_thread(post, LB_URL, authors[1])
    accepted = [body["tweet"]["id"]] if status == 202 else []
    check("1 posting through HAProxy works", status == 202, f"{status} from {headers.get('X-Served-By')}")

    # Reader r's socket is on web1 or web2 (r even or odd), opened on that host's own address;
    # each post goes to web1 or web2 in turn, so every author reaches sockets on both.
    home = [WEBS[r % 2] for r in range(READERS)]
    arrivals: list[dict[int, float]] = [{} for _ in readers]  # per reader: tweet id -> its tweet.new's arrival

    async def listen(r: int, ws) -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                if (event := json.loads(raw))["type"] == "tweet.new":
                    arrivals[r].setdefault(event["tweet"]["id"], time.monotonic())

    sockets = [await socket_to(web_url(home[r]), reader) for r, reader in enumerate(readers)]
    listeners = [asyncio.create_task(listen(r, ws)) for r, ws in enumerate(sockets)]
    sent: dict[int, tuple[float, str, int]] = {}  # tweet id -> (when sent, to which host, author)
    for k in range(live_posts):
        author, host, started = authors[k % AUTHORS], WEBS[k % 2], time.monotonic()
        status, _, body = await in_thread(post, web_url(host), author)
        if status == 202:
            sent[body["tweet"]["id"]] = (started, host, author.id)
        await asyncio.sleep(0.05)
    owed = [(r, t) for t, (_, _, a) in sent.items() for r, reader in enumerate(readers) if a in reader.follows]
    await eventually(lambda: all(t in arrivals[r] for r, t in owed), timeout=15)
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*listeners)
    got = [(r, t) for r, t in owed if t in arrivals[r]]
    across = Counter(f"{sent[t][1]} -> {home[r]}" for r, t in got if home[r] != sent[t][1])
    detail = ", ".join(f"{n} frames {way}" for way, n in sorted(across.items()))
    check("1 tweets posted on one web host reach followers' sockets on the other", len(across) == 2, detail)
    latency = [arrivals[r][t] - sent[t][0] for r, t in got if home[r] != sent[t][1]]
    detail = f"{len(sent)}/{live_posts} posts, {len(got)}/{len(owed)} frames, {len(latency)} of them across hosts"
    check("2 live push: each socket got every tweet it is owed", len(sent) == live_posts and got == owed, detail)
    figures.append(
        f"live push across hosts (POST sent -> tweet.new on the other host): p50 {pct(latency, 0.5)}, "
        f"p99 {pct(latency, 0.99)}, max {pct(latency, 1)}, over {len(latency)} frames"
    )
    return accepted + list(sent)


# -- check 3: the queue cap across hosts --------------------------------------------------------


async def check_cap(cluster: Cluster, authors: list[Person], cap: int) -> None:
    from fanout.admission import QUEUE_KEY, RESERVATIONS_KEY
    from fanout.connection import get_redis
    from timeline.models import Tweet

    def depth() -> int:  # waiting jobs and reserved slots: what admission counts against the cap
        with get_redis().pipeline(transaction=False) as pipe:
            return sum(pipe.llen(QUEUE_KEY).zcard(RESERVATIONS_KEY).execute())

    cluster.net.hosts["workers"].stop("worker1", "worker2")
    if await eventually(lambda: depth() == 0, timeout=10) is None:
        return check("3 the queue is empty before the burst", False, f"depth {depth()}")
    client_ids, deepest = [str(uuid.uuid4()) for _ in range(3 * cap)], 0

    async def sample() -> None:
        nonlocal deepest
        while True:
            deepest = max(deepest, await asyncio.to_thread(depth))
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    sends = (in_thread(post, web_url(WEBS[k % 2]), authors[k % AUTHORS], c) for k, c in enumerate(client_ids))
    answers = dict(zip(client_ids, await asyncio.gather(*sends), strict=True))
    await asyncio.sleep(0.1)
    sampler.cancel()
    accepted = [body["tweet"]["id"] for status, _, body in answers.values() if status == 202]
    refused = {c: int(headers.get("Retry-After") or 0) for c, (s, headers, _) in answers.items() if s == 503}
    made = await in_thread(lambda: Tweet.objects.filter(client_id__in=list(refused)).count())
    ok = len(accepted) == cap and len(refused) == 2 * cap and min(refused.values(), default=0) >= 1 and deepest <= cap
    check(
        f"3 the queue cap holds across both web hosts: {3 * cap} posts at once, {cap} accepted",
        ok and not made,
        f"202: {len(accepted)}, 503: {len(refused)} with Retry-After {sorted(set(refused.values()))} s, "
        f"deepest queue {deepest}, tweets made for refused posts {made}",
    )
    figures.append(
        f"queue cap {cap}, workers stopped: {3 * cap} posts at once through both web hosts: "
        f"{len(accepted)} accepted, {len(refused)} refused with 503"
    )
    cluster.start_workers()
    took = await eventually(lambda: undone(accepted) == 0, timeout=60, blocking=True)
    check("3 the workers, started again, deliver every accepted tweet", took is not None and len(accepted) == cap)
    figures.append(f"time to all-done after the workers started: {took or 0:.1f} s for {len(accepted)} fan-outs")


# -- check 4: a web host lost -------------------------------------------------------------------


class Page:
    """A reader's page, as static/js/live.js behaves: a socket through HAProxy that reconnects with
    backoff, and after each (re)connection fills the gap with GET /api/timeline/home?after=min(newest
    shown, last watermark), dropping what it already shows. A failed fill is tried again, from
    the same point, while the socket stays open (behind a balancer the fill can go to the host
    that just died while the new socket is on a live one), and pongs do not move the watermark
    until the fill succeeds (a pong's watermark covers what was pushed to this socket, not what
    the page missed before it). This run found both, which live.js now does too.
    """

    def __init__(self, reader: Person) -> None:
        self.reader = reader
        self.shown: set[int] = set()
        self.dropped = 0  # tweets that came again (a frame and a fill overlapping): not shown twice
        self.watermark: int | None = None
        self.gap_open = False  # this connection's gap is not filled yet
        self.server: str | None = None  # the web host holding the socket now
        self.opened: list[tuple[float, str]] = []  # (when, on which host)
        self.filled: list[float] = []
        self.failed_fills = 0
        self.ended: int | None = None  # a close code after which the page stops (4401, 4409)

    def arrive(self, tweets: list[dict]) -> None:
        for tweet in tweets:
            self.dropped += tweet["id"] in self.shown
            self.shown.add(tweet["id"])

    async def fill_gap(self, after: int) -> bool:
        query, found, heard = {"after": after, "limit": 100}, [], None
        for _ in range(10):  # the page's GAP_MAX_PAGES
            url = f"{LB_URL}/api/timeline/home?{urlencode(query)}"
            status, _, page = await in_thread(call, "GET", url, self.reader.cookie)
            if status != 200:
                self.failed_fills += 1
                return False
            heard = page["watermark"] if heard is None else heard  # the first page's
            found += page["tweets"]
            if page["next_before"] is None:
                break
            query["before"] = page["next_before"]
        self.arrive(found)
        self.watermark = heard if isinstance(heard, int) else self.watermark
        self.filled.append(time.monotonic())
        self.gap_open = False
        return True

    async def fill_this_gap(self) -> None:
        after = min(max(self.shown, default=0), self.watermark if self.watermark is not None else 1 << 62)
        for attempt in range(FILL_TRIES):
            if await self.fill_gap(after):
                return
            await asyncio.sleep(random.uniform(0, min(RECONNECT[1], RECONNECT[0] * 2**attempt)))

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        await self.fill_gap(0)  # what the server rendered into the page
        attempt = 0
        while self.ended is None:
            ws = None
            with contextlib.suppress(OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                async with socket_to(LB_URL, self.reader) as ws:
                    attempt, self.gap_open, self.server = 0, True, ws.response.headers.get("X-Served-By")
                    self.opened.append((time.monotonic(), self.server))
                    tasks = [asyncio.create_task(self.fill_this_gap()), asyncio.create_task(self.ping(ws))]
                    try:
                        async for raw in ws:
                            event = json.loads(raw)
                            if event["type"] == "tweet.new":
                                self.arrive([event["tweet"]])
                            # A pong's watermark is None when the cron has not published one lately.
                            elif event["type"] == "pong" and event["watermark"] is not None:
                                if not self.gap_open:  # see the class's docstring
                                    self.watermark = event["watermark"]
                    finally:
                        for task in tasks:
                            task.cancel()
            if ws is not None and ws.close_code in (4401, 4409):  # logged out, or replaced: the page stops
                self.ended = ws.close_code
            self.server = None
            await asyncio.sleep(random.uniform(0, min(RECONNECT[1], RECONNECT[0] * 2**attempt)))
            attempt += 1

    async def ping(self, ws) -> None:
        while True:
            await asyncio.sleep(PING_EVERY)
            await ws.send(json.dumps({"type": "ping"}))


async def post_until_accepted(author: Person, client_id: str, tally: Counter) -> tuple[int, str, float] | None:
    """One post, sent until accepted with one client_id throughout, as compose.js sends it:
    (tweet id, the host that accepted it, when), or None after POST_TRIES."""
    for attempt in range(POST_TRIES):
        status, headers, body = await in_thread(post, LB_URL, author, client_id)
        tally[status] += 1
        if status in (200, 202):
            return body["tweet"]["id"], headers.get("X-Served-By"), time.monotonic()
        if status not in RETRIED:
            return None
        backoff = random.uniform(0, min(POST_BACKOFF[1], POST_BACKOFF[0] * 2**attempt))
        await asyncio.sleep(max(int(headers.get("Retry-After") or 0), backoff))
    return None


async def lose_a_host(cluster: Cluster, authors: list[Person], readers: list[Person], args) -> None:
    from timeline.models import Tweet

    marker = await in_thread(lambda: Tweet.objects.order_by("-id").values_list("id", flat=True).first() or 0)
    pages = [Page(r) for r in readers]
    running = [asyncio.create_task(p.run()) for p in pages]
    await eventually(lambda: all(p.server for p in pages), timeout=20)
    spread = Counter(str(p.server) for p in pages)
    detail = ", ".join(f"{n} on {host}" for host, n in sorted(spread.items()))
    check("4 pages connected through HAProxy, spread over both web hosts", set(spread) == set(WEBS), detail)

    tally, sending = Counter(), {}
    for k in range(args.posts):
        if k == args.posts // 3:  # a third of the way in, web2 goes
            on_victim = [p for p in pages if p.server == VICTIM]
            if args.unplug_first:
                cluster.net.unplug(VICTIM)
            cluster.net.hosts[VICTIM].stop(sig=signal.SIGKILL)
            if not args.unplug_first:
                cluster.net.unplug(VICTIM)
            lost_at = time.monotonic()
        author, client_id = authors[k % AUTHORS], str(uuid.uuid4())
        sending[client_id] = (author.id, asyncio.create_task(post_until_accepted(author, client_id, tally)))
        await asyncio.sleep(1 / args.rate)
    # client_id -> (tweet id, host that accepted it, when, author)
    accepted = {c: (*answer, a) for c, (a, task) in sending.items() if (answer := await task) is not None}
    after = sorted((when, host) for _, host, when, _ in accepted.values() if when > lost_at)
    by = {host for _, host in after}
    check(
        "4 HAProxy routes around the lost host: every post accepted in the end",
        len(accepted) == args.posts and by == {SURVIVOR},
        f"{len(accepted)}/{args.posts} accepted, {len(after)} after the loss, by {', '.join(map(str, by))}",
    )
    times = [lost_at] + [when for when, _ in after]
    stall = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0)
    figures.append(
        f"posts through HAProxy, {VICTIM} lost a third of the way: {len(accepted)}/{args.posts} accepted; "
        f"answers on the way {dict(sorted(tally.items()))} (0: no answer); longest wait for an acceptance "
        f"after the loss {stall:.1f} s"
    )

    tweets = {tweet_id: author_id for tweet_id, _, _, author_id in accepted.values()}
    last = max((when for _, _, when, _ in accepted.values()), default=time.monotonic())
    done = await eventually(lambda: undone(list(tweets)) == 0, timeout=60, blocking=True)
    check("4 every accepted tweet's fan-out is done in PostgreSQL", done is not None, f"{len(tweets)} tweets")
    figures.append(f"time to all-done after the last post was accepted: {time.monotonic() - last:.1f} s")

    def owed(p: Page) -> set[int]:
        return {t for t, a in tweets.items() if a in p.reader.follows}

    def seen(p: Page) -> set[int]:
        return {t for t in p.shown if t > marker}

    await eventually(lambda: all(owed(p) <= seen(p) for p in pages), timeout=15)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)

    back = []  # per page that was on the lost host: (seconds until its socket was open again, where, gap filled)
    for p in on_victim:
        when, host = next(((t, h) for t, h in p.opened if t > lost_at), (None, None))
        if when is not None:
            back.append((when - lost_at, host, any(f > when for f in p.filled)))
    check(
        f"4 the pages whose socket was on {VICTIM} reconnected to {SURVIVOR} and filled their gaps",
        on_victim and len(back) == len(on_victim) and all(h == SURVIVOR and filled for _, h, filled in back),
        f"{len(back)}/{len(on_victim)} back; gap fills that failed on the way: {sum(p.failed_fills for p in pages)}",
    )
    waits = [w for w, _, _ in back] or [0.0]
    figures.append(
        f"sockets back after the loss of {VICTIM}: median {statistics.median(waits):.1f} s, "
        f"max {max(waits):.1f} s, {len(on_victim)} pages (the page's backoff: first retry within 1 s)"
    )
    missing = sum(len(owed(p) - seen(p)) for p in pages)
    stray = sum(len(seen(p) - owed(p)) for p in pages)
    check(
        "4 every page shows every tweet it is owed, once",
        missing == stray == 0 and not any(p.ended for p in pages),
        f"{sum(len(owed(p)) for p in pages)} owed, {missing} missing, {stray} not theirs; "
        f"{sum(p.dropped for p in pages)} came twice and were dropped, as the page does",
    )

    def tweets_per_client_id() -> Counter:
        mine = Tweet.objects.filter(id__gt=marker, author_id__in=[a.id for a in authors])
        return Counter(str(c) for c in mine.values_list("client_id", flat=True))

    made = await in_thread(tweets_per_client_id)
    check(
        "4 no client_id made two tweets, nor a tweet its client was not told of",
        set(made) == set(accepted) and max(made.values(), default=0) == 1,
        f"{sum(made.values())} tweets",
    )


# -- the run ------------------------------------------------------------------------------------


async def checks(cluster: Cluster, authors: list[Person], readers: list[Person], args) -> None:
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
    urls = [*map(web_url, WEBS), LB_URL]
    healthy = lambda: all(call("GET", f"{u}/healthz")[0] == 200 for u in urls)  # noqa: E731
    if await eventually(healthy, timeout=60, blocking=True) is None:
        raise RuntimeError("the web hosts or HAProxy were not healthy within 60 s")
    print(
        f"up: {', '.join(f'{h} {addr(h)}' for h in ADDRESSES)}; {AUTHORS} authors with {args.followers} "
        f"quiet followers each, {READERS} readers",
        flush=True,
    )
    accepted = await check_shared_nothing(authors, readers, args.live_posts)
    done = await eventually(lambda: undone(accepted) == 0, timeout=30, blocking=True)
    check("2 every accepted tweet's fan-out is done in PostgreSQL", done is not None, f"{len(accepted)} tweets")
    await check_cap(cluster, authors, args.cap)
    await lose_a_host(cluster, authors, readers, args)


def run(cluster: Cluster, args) -> None:
    cluster.build()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=BASE_DIR, check=True)
    import django

    django.setup()
    authors, readers = populate(args.followers)
    daphne = ("-m", "timeline.serve", "-b", "0.0.0.0", "-p", str(WEB_PORT), "timeline.asgi:application")
    for host in WEBS:
        cluster.start(host, "daphne", sys.executable, *daphne)
    config = cluster.tmp / "haproxy.cfg"
    config.write_text(HAPROXY_CFG)
    cluster.start("lb", "haproxy", shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(config))
    cluster.start("workers", "cron", sys.executable, "manage.py", "fanout_cron")
    cluster.start_workers()
    asyncio.run(checks(cluster, authors, readers, args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=int, default=300, help="seconds the whole run may take (300)")
    parser.add_argument("--cap", type=int, default=10, help="FANOUT_QUEUE_CAP of the web hosts (10)")
    parser.add_argument("--followers", type=int, default=200, help="quiet followers per author (200)")
    parser.add_argument("--live-posts", type=int, default=40, help="posts in check 2 (40)")
    parser.add_argument("--posts", type=int, default=150, help="posts in check 4 (150)")
    parser.add_argument("--rate", type=float, default=15.0, help="posts a second in check 4 (15)")
    parser.add_argument("--unplug-first", action="store_true", help="check 4: the lost host's link down, then the kill")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cluster.py makes network namespaces: run it as root")
    for name in netns.sweep_stale():
        print(f"deleted {name}, left behind by an earlier run")

    def stop(signum, frame):
        raise Stopped(f"not done within --timeout {args.timeout} s" if signum == signal.SIGALRM else "interrupted")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(signum, stop)
    tmp = Path(tempfile.mkdtemp(prefix="timeline-cluster-"))
    tmp.chmod(0o711)  # the postgres user must reach its data folder inside
    cluster, started = Cluster(tmp, args.cap), time.monotonic()
    signal.alarm(args.timeout)
    try:
        run(cluster, args)
    except Stopped as why:
        check(f"the run ended early: {why.code}", False)
    except Exception as exc:
        check(f"the run failed: {type(exc).__name__}: {exc}", False)
    finally:
        signal.alarm(0)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # cleanup is bounded: let it finish
        cluster.close()
    print("figures:\n" + "\n".join(f"  {line}" for line in figures))
    passed = all(results)
    if passed:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"logs kept in {tmp / 'logs'}")
    print(
        f"{'PASS' if passed else 'FAIL'}: {results.count(True)}/{len(results)} checks, {time.monotonic() - started:.0f} s"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
