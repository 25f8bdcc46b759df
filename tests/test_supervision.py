"""`make run`'s process set as it really runs: supervisord with supervisord.conf.

Two web processes share one listening socket and both take connections; a process that dies is
started again while the rest keep serving; Ctrl-C (SIGINT) stops them all, Redis last.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fanout.redis_server import free_port
from tests.conftest import BASE_DIR, live_database_url, post_json, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

BIN = Path(sys.executable).parent


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Supervised:
    def __init__(self, var_dir: Path, port: int, *, seed: bool = False) -> None:
        self.var_dir, self.port = var_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "VAR_DIR": str(var_dir),
            "PORT": str(port),
            "WEB_PROCESSES": "2",
            "WORKERS": "1",
            "START_REDIS": "true",
            "SEED_DEMO": "true" if seed else "false",
            "REDIS_URL": f"unix://{var_dir}/redis/redis.sock",
            "DATABASE_URL": live_database_url(),
        }
        (var_dir / "log").mkdir(parents=True)
        self.process = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", "supervisord.conf"],
            cwd=BASE_DIR,
            env=self.env,
            stdout=(var_dir / "out.log").open("w"),
            stderr=subprocess.STDOUT,
        )

    def pid(self, name: str) -> int:
        result = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", "supervisord.conf", "pid", name],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
        )
        return int(result.stdout.strip()) if result.stdout.strip().isdigit() else 0


def established_connections(pid: int, port: int) -> int:
    """How many established TCP connections on ``port`` the process holds (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


@contextlib.contextmanager
def supervised_app(*, seed: bool = False) -> Iterator[Supervised]:
    # A short folder in /tmp: Redis's unix socket path must stay under 108 bytes.
    var_dir = Path(tempfile.mkdtemp(prefix="tl-sup-"))
    app = Supervised(var_dir / "var", free_port(), seed=seed)
    try:
        wait_for(lambda: healthy(app.url), timeout=60, what="the supervised app to serve")
        yield app
    finally:
        if app.process.poll() is None:
            app.process.send_signal(signal.SIGINT)
            try:
                app.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                app.process.kill()
        shutil.rmtree(var_dir, ignore_errors=True)


@pytest.fixture
def supervised():
    with supervised_app() as app:
        yield app


def test_web_processes_share_one_port_and_dead_processes_come_back(supervised):
    webs = [supervised.pid("web:web_0"), supervised.pid("web:web_1")]
    assert all(webs) and webs[0] != webs[1]
    connections = []
    for _ in range(40):  # kept open, so each is counted where it was accepted
        connection = http.client.HTTPConnection("127.0.0.1", supervised.port, timeout=10)
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        connections.append(connection)
    counts = [established_connections(pid, supervised.port) for pid in webs]
    assert sum(counts) == 40 and min(counts) > 0, counts  # the kernel gave both processes some
    for connection in connections:
        connection.close()

    worker = supervised.pid("worker:worker_0")
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: supervised.pid("worker:worker_0") not in (0, worker), timeout=30, what="the worker to restart")

    os.kill(webs[0], signal.SIGKILL)
    assert healthy(supervised.url)  # the other web process serves meanwhile
    wait_for(lambda: supervised.pid("web:web_0") not in (0, webs[0]), timeout=30, what="the web process to restart")
    wait_for(lambda: healthy(supervised.url), timeout=30, what="the port to serve")


def test_ctrl_c_stops_every_process(supervised):
    children = [supervised.pid(name) for name in ("redis", "web:web_0", "web:web_1", "worker:worker_0", "cron")]
    assert all(children)
    supervised.process.send_signal(signal.SIGINT)
    supervised.process.wait(timeout=60)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_with_the_demo_every_login_offered_works_from_the_first(make_user):
    with supervised_app(seed=True) as app:
        out = app.var_dir / "out.log"
        tried = []
        while "Ready on" not in out.read_text():
            with urllib.request.urlopen(f"{app.url}/", timeout=10) as response:
                offered = re.findall(r'name="username" value="(\w+)"', response.read().decode())
            if offered:  # each login the front door offers must work at once
                name = offered[0]
                status, _, _ = post_json(
                    f"{app.url}/api/auth/login", {"username": name, "password": f"{name}-demo-pass"}, cookie=""
                )
                tried.append((name, status))
            assert len(tried) < 200, "seeding never said it was ready"
        assert tried and all(status == 200 for _, status in tried), tried
        with urllib.request.urlopen(f"{app.url}/", timeout=10) as response:
            assert 'value="alice"' in response.read().decode()  # once ready, the logins are there
