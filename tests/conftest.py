"""Shared fixtures. Every test runs against the real Redis the redis plugin started."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django_rq import get_connection, get_worker

from fanout.admission import WORKER_QUEUES
from fanout.management.commands.fanout_worker import SERIALIZER

User = get_user_model()
BASE_DIR = Path(__file__).resolve().parent.parent
_names = itertools.count()


@pytest.fixture(autouse=True)
def redis():
    """The test Redis, with timelines, queues and jobs cleared before each test.

    Not FLUSHDB: the live workers of the end-to-end tests keep their registration keys.
    """
    connection = get_connection("fanout")
    keys = [k for pattern in ("tl:*", "rq:queue:*", "rq:job:*", "rq:wip:*") for k in connection.keys(pattern)]
    if keys:
        connection.delete(*keys)
    return connection


@dataclass
class LiveApp:
    url: str
    processes: dict[str, subprocess.Popen]
    env: dict[str, str]

    def ws_url(self, path: str = "/ws/timeline/") -> str:
        return self.url.replace("http://", "ws://") + path


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


@pytest.fixture(scope="session")
def live_app(django_db_setup, tmp_path_factory) -> Iterator[LiveApp]:
    """Real processes on the test database and Redis: daphne on a free port and one fan-out worker.

    Tests that use it need ``transactional_db`` so that what they write is committed and seen.
    """
    from fanout.redis_server import free_port

    port = free_port()
    logs = tmp_path_factory.mktemp("live-logs")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{settings.DATABASES['default']['NAME']}",
        "REDIS_URL": os.environ["REDIS_URL"],
        "PORT": str(port),
        "DJANGO_DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
    }
    commands = {
        "daphne": [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "timeline.asgi:application"],
        "worker": [sys.executable, "manage.py", "fanout_worker", "-v", "0"],
    }
    processes = {
        name: subprocess.Popen(cmd, cwd=BASE_DIR, env=env, stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT)
        for name, cmd in commands.items()
    }
    try:
        _wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30, processes=processes)
        yield LiveApp(url=f"http://127.0.0.1:{port}", processes=processes, env=env)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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
        worker = get_worker(*WORKER_QUEUES, worker_class="fanout.worker.FanoutWorker", serializer=SERIALIZER)
        worker.work(burst=True, with_scheduler=False)

    return run


def new_client_id() -> str:
    return str(uuid.uuid4())
