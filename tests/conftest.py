"""Shared fixtures. Every test runs against the real Redis the redis plugin started."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from redis import Redis

from fanout.connection import get_redis, get_timeline_redis, timelines_apart
from fanout.redis_server import RedisServer
from fanout.worker import make_worker
from tests.browser import browser, chromium, context, page  # noqa: F401  (fixtures for every module)

User = get_user_model()
T = TypeVar("T")
BASE_DIR = Path(__file__).resolve().parent.parent
LIVE_REDIS_URL = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/1"
CLEARED_PER_TEST = (
    "tl:*",
    "rq:queue:*",
    "rq:job:*",
    "rq:wip:*",
    "rq:scheduled:*",
    "rq:suspended",
    "fanout:*",
    "metrics:*",
    "ratelimit:*",
    "presence:*",
    "throttle:*",
    "tweet:*",
    "session:*",
    "user:*",
    "trends:*",
)
_names = itertools.count()
WORKER_COMMAND = [sys.executable, "manage.py", "fanout_worker", "-v", "0"]


@pytest.fixture(autouse=True)
def redis():
    """The test Redis, with timelines, queues and jobs cleared before each test.

    Not FLUSHDB: the live workers of the end-to-end tests keep their registration keys.
    """
    connection = get_redis()
    for db in (connection, Redis.from_url(LIVE_REDIS_URL)):
        keys = [k for pattern in CLEARED_PER_TEST for k in db.keys(pattern)]
        if keys:
            db.delete(*keys)
    if timelines_apart():  # a store that holds nothing but timelines
        get_timeline_redis().flushall(**({"target_nodes": "primaries"} if settings.TIMELINE_REDIS_CLUSTER else {}))
    return connection


@pytest.fixture(autouse=True)
def _a_database_pool_per_test():
    """On PostgreSQL each process lends connections from a pool (settings). A connection taken
    by a thread of the test's own (sync_to_async in an async test) is never given back, so
    after each test the pool is closed, and the next test opens a new one."""
    yield
    from django.db import connections

    connection = connections["default"]
    if connection.vendor == "postgresql" and connection.alias in type(connection)._connection_pools:
        connection.close()
        connection.close_pool()


@pytest.fixture
def store(redis):
    """The timeline store: the test Redis, or the Redis Cluster with TEST_TIMELINE_STORE=cluster."""
    return get_timeline_redis()


@dataclass
class LiveApp:
    url: str
    processes: dict[str, subprocess.Popen]
    env: dict[str, str]
    urls: list[str]
    commands: dict[str, list[str]]
    logs: Path

    def start(self, name: str) -> subprocess.Popen:
        """Start (again) the process called ``name`` with its command."""
        self.processes[name] = subprocess.Popen(
            self.commands[name],
            cwd=BASE_DIR,
            env=self.env,
            stdout=(self.logs / f"{name}.log").open("a"),
            stderr=subprocess.STDOUT,
        )
        return self.processes[name]

    def start_worker(self, name: str) -> subprocess.Popen:
        """Start a fan-out worker called ``name`` (one more, or one that was killed)."""
        self.commands.setdefault(name, WORKER_COMMAND)
        return self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL: no clean shutdown, as when a machine or the OOM killer takes a process."""
        self.processes[name].kill()
        self.processes[name].wait(timeout=10)

    def restart(self, name: str) -> None:
        """Kill one process outright and start it again with the same command."""
        self.kill(name)
        self.start(name)
        for url in self.urls:
            _wait_for_http(f"{url}/healthz", timeout=30, processes=self.processes)

    def ws_url(self, path: str = "/ws/timeline/") -> str:
        return self.url.replace("http://", "ws://") + path

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for_http(url: str, *, timeout: float, processes: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def live_database_url(**options: str) -> str:
    """The test database (SQLite's file or PostgreSQL's test_ database), for processes to share."""
    db = settings.DATABASES["default"]
    query = ("?" + "&".join(f"{k}={v}" for k, v in options.items())) if options else ""
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}{query}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}{query}"


def on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def the_postgres_server():
    """The private PostgreSQL the suite runs on (TEST_DATABASE=postgres), to stop and start."""
    from fanout.postgres_server import PostgresServer
    from tests import servers_plugin

    return next(server for server in servers_plugin.servers() if isinstance(server, PostgresServer))


def start_live_app(
    logs: Path, *, redis_url: str, webs: int = 1, workers: int = 1, cron: bool = False, **env_overrides: str
) -> LiveApp:
    """Real processes on the test database: ``webs`` daphne servers, ``workers`` fan-out workers,
    and with ``cron`` the periodic chores (the outbox relay)."""
    from fanout.redis_server import free_port

    env = {
        **os.environ,
        "DATABASE_URL": live_database_url(),
        "REDIS_URL": redis_url,
        "DJANGO_DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
        # Demo mode as make run has it (the front door lists the demo logins), whatever the
        # environment the tests were started from says.
        "SEED_DEMO": "true",
        **env_overrides,
    }
    logs.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(webs)]
    commands = {
        f"daphne{i}": [
            sys.executable,
            "-m",
            "timeline.serve",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "timeline.asgi:application",
        ]
        for i, port in enumerate(ports)
    }
    commands.update({f"worker{i}": WORKER_COMMAND for i in range(workers)})
    if cron:
        commands["cron"] = [sys.executable, "manage.py", "fanout_cron"]
    processes = {
        name: subprocess.Popen(
            cmd, cwd=BASE_DIR, env=env, stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT
        )
        for name, cmd in commands.items()
    }
    app = LiveApp(
        url=f"http://127.0.0.1:{ports[0]}",
        processes=processes,
        env=env,
        urls=[f"http://127.0.0.1:{p}" for p in ports],
        commands=commands,
        logs=logs,
    )
    try:
        for url in app.urls:
            _wait_for_http(f"{url}/healthz", timeout=30, processes=processes)
    except BaseException:
        app.stop()
        raise
    return app


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def restart_without_data(server: RedisServer) -> None:
    """As a failover to an empty replica, or a host that lost its disk: same address, no data."""
    server.stop()
    shutil.rmtree(server.data_dir)
    server.start()


@pytest.fixture
def app_factory(tmp_path, private_redis) -> Iterator[Callable[..., LiveApp]]:
    """Start the app's processes (with the cron) on a Redis of the test's own; all stopped after."""
    apps: list[LiveApp] = []

    def start(**kwargs) -> LiveApp:
        kwargs.setdefault("cron", True)
        # Fan every author out on write (the fault tests strike in the middle of a long fan-out).
        kwargs.setdefault("FANOUT_ON_READ_THRESHOLD", "0")
        app = start_live_app(tmp_path / f"logs{len(apps)}", redis_url=private_redis.url, **kwargs)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.fixture(scope="session", autouse=True)
def _close_stray_database_sessions(django_db_setup, django_db_blocker):
    """Before PostgreSQL's test database is dropped: end the sessions that threads of async
    tests (sync_to_async) left open, which would otherwise make the drop fail."""
    yield
    if on_postgres():
        from django.db import connection

        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(scope="session")
def live_app(django_db_setup, tmp_path_factory) -> Iterator[LiveApp]:
    """daphne on a free port and one fan-out worker, as real processes on the test database.

    Tests that use it need ``transactional_db`` so that what they write is committed and seen.
    """
    # Its own Redis database: its worker must not take the jobs of tests that run their own.
    app = start_live_app(tmp_path_factory.mktemp("live-logs"), redis_url=LIVE_REDIS_URL)
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture
def make_user(db):
    def make(username: str | None = None, password: str = "a-long-test-password", **extra):
        username = username or f"user{next(_names)}"
        return User.objects.create_user(username=username, password=password, **extra)

    return make


@pytest.fixture
def client_for():
    """A logged-in Django test client for a user."""

    def make(user, *, enforce_csrf_checks: bool = False) -> Client:
        client = Client(enforce_csrf_checks=enforce_csrf_checks)
        client.force_login(user)
        return client

    return make


@pytest.fixture
def run_worker():
    """Run a real RQ fan-out worker (our worker class, JSON serializer) until the queues are empty."""

    def run() -> None:
        make_worker().work(burst=True)

    return run


def wait_for(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """Wait until ``check()`` is true (and return it), or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(every)


def new_client_id() -> str:
    return str(uuid.uuid4())


def every_page(user, *, limit: int) -> list[int]:
    """The ids of a home timeline, read page by page with ``before`` to the end."""
    from timeline import selectors

    seen, before = [], None
    while True:
        result = selectors.home_timeline(user=user, limit=limit, before=before)
        seen += [t.pk for t in result.tweets]
        if result.next_before is None:
            return seen
        before = result.next_before


def session_cookie(user) -> str:
    """A session cookie for ``user``, usable against the live server (same database and key)."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def get_json(url: str, *, cookie: str = "", timeout: float = 10) -> tuple[int, dict[str, str], dict]:
    """GET a live server's JSON as a logged-in browser would."""
    request = urllib.request.Request(url, headers={"Cookie": cookie, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.load(error)


def post_json(url: str, payload: dict, *, cookie: str, timeout: float = 10) -> tuple[int, dict[str, str], dict]:
    """POST JSON to a live server as a logged-in browser would (session cookie + CSRF pair)."""
    token = "t" * 32  # the CSRF check compares the cookie with the header
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "X-CSRFToken": token, "Cookie": f"{cookie}; csrftoken={token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.load(error)
