"""The benchmarks' harness: build a world, run the app's real processes in it, measure, write it down.

A benchmark script states one experiment; this module holds everything the experiments share,
in the order a script uses it:

- ``Template``: a SQLite database migrated with ``manage.py migrate`` and filled in bulk with
  authors, readers who follow them, and sessions, made once and copied for every run;
- ``World``: one run's servers on 127.0.0.1: a copy of the template, a private redis-server
  (``fanout.redis_server``), every home timeline materialized, and the app's processes (daphne,
  ``manage.py fanout_worker``, ``manage.py fanout_cron``) with their logs in ``bench/out/``;
  everything it starts is stopped on the way out, on errors and Ctrl-C, and (PR_SET_PDEATHSIG)
  if the benchmark itself is killed;
- HTTP as a browser speaks it (session cookie, CSRF cookie and header), blocking or on asyncio;
- measuring: percentiles, CPU seconds per process from /proc, waiting for a quiet machine (the
  machine may be shared), the machine's description;
- ``write_docs``: a generated block of docs/benchmarks.md, between its markers.

Run as ``harness.py populate SPEC OUT``, it is the child process that fills a template (Django is
set up there, against the template's database, never in the benchmark's own process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))
HOST = "127.0.0.1"
OUT_DIR = BASE_DIR / "bench" / "out"
DOCS = BASE_DIR / "docs" / "benchmarks.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
CSRF_TOKEN = "b" * 32  # any 32 characters: Django compares the csrftoken cookie with the X-CSRFToken header
PACKAGES = ("Django", "channels", "channels_redis", "daphne", "redis", "hiredis", "rq", "websockets", "uvicorn")


def log(message: str) -> None:
    print(message, flush=True)


def stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def stop_on_sigterm() -> None:
    """SIGTERM ends a benchmark as Ctrl-C does: through the ``with World`` blocks that stop its processes."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


# -- measuring --------------------------------------------------------------------------------------


def percentile(values, q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and all its children, those still running and those it has reaped:
    a PostgreSQL server, whose work is done by a backend process per connection."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)  # ppid
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        fields = stats[current]
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # + cutime, cstime
        todo += children.get(current, [])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores, all processes), from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_for_quiet(*, max_busy: float = 0.15, max_wait: float = 60.0, window: float = 1.0) -> float:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle; return the share of all cores
    that was busy in the last ``window``. Other work on a shared machine (a test suite) shows up
    as latency, so a run starts when the cores are free, or says that they were not."""
    deadline = time.monotonic() + max_wait
    while True:
        before, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(window)
        busy = (machine_busy_seconds() - before) / ((time.monotonic() - t0) * CORES)
        if busy <= max_busy:
            return busy
        if time.monotonic() > deadline:
            log(f"    the machine is still {busy:.0%} busy with other work after {max_wait:.0f} s; going ahead")
            return busy
        log(f"    the machine is {busy:.0%} busy with other work; waiting for it to calm down")


class CpuClock:
    """CPU seconds each named process used since the clock started (``me``: this process).

    Processes are told apart by pid: one started after the clock counts whole, from its start."""

    TREES = ("postgres",)  # counted with their children

    def __init__(self, pids: dict[str, int], *, me: str | None = None) -> None:
        self.pids, self.me = pids, me
        self.start = {pid: self._cpu(name, pid) or 0.0 for name, pid in pids.items()} | self._now()

    def _cpu(self, name: str, pid: int) -> float | None:
        return tree_cpu_seconds(pid) if name in self.TREES else cpu_seconds(pid)

    def _now(self) -> dict[str, float]:
        return ({self.me: time.process_time()} if self.me else {}) | {
            "_machine": machine_busy_seconds(),
            "_wall": time.monotonic(),
        }

    def read(self, pids: dict[str, int] | None = None) -> dict[str, float]:
        """Seconds per process (``pids``: those running now, by default the first ones), plus
        ``_machine`` (the whole machine's busy seconds) and ``_wall``."""
        used = {
            name: (self._cpu(name, pid) or 0.0) - self.start.get(pid, 0.0) for name, pid in (pids or self.pids).items()
        }
        return used | {name: value - self.start[name] for name, value in self._now().items()}


def others_share(used: dict[str, float]) -> float:
    """What the rest of the machine used while ``used`` was measured, as a share of all its cores."""
    ours = sum(v for k, v in used.items() if not k.startswith("_"))
    return max(0.0, used["_machine"] - ours) / (max(used["_wall"], 1e-9) * CORES)


def machine_info(redis_version: str | None) -> dict:
    """Cores, CPU, memory, versions and the commit measured, for the figures' write-up."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    git = ""
    with contextlib.suppress(Exception):
        run = lambda *a: subprocess.run(["git", *a], cwd=BASE_DIR, capture_output=True, text=True).stdout.strip()  # noqa: E731
        dirty = run("status", "--porcelain", "--untracked-files=no")
        git = run("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else "")
    packages = {}
    for dist in PACKAGES:
        with contextlib.suppress(Exception):
            packages[dist] = version(dist)
    return {
        "nproc": CORES,
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "redis": redis_version,
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "packages": packages,
        "git": git,
        "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
    }


def write_docs(tag: str, text: str, *, heading: str) -> None:
    """Put ``text`` between the markers of ``tag`` in docs/benchmarks.md, leaving the rest as it is.

    A block not there yet goes at the end of the section ``## heading`` (made at the end if missing).
    """
    script = f"bench/{tag.split(':')[0]}.py"
    begin, end = f"<!-- {tag}:begin (generated by {script}; edits inside are replaced) -->", f"<!-- {tag}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if begin in current and end in current:
        new = current[: current.index(begin)] + block + current[current.index(end) + len(end) :]
    else:
        if f"\n## {heading}\n" not in current:
            current = current.rstrip("\n") + f"\n\n## {heading}\n"
        at = current.index(f"\n## {heading}\n") + len(heading) + 5
        nxt = current.find("\n## ", at)
        at = len(current) if nxt == -1 else nxt + 1
        new = current[:at].rstrip("\n") + "\n\n" + block + "\n" + ("\n" + current[at:] if at < len(current) else "")
    tmp = DOCS.with_suffix(f".md.tmp-{os.getpid()}")
    tmp.write_text(new)
    tmp.replace(DOCS)
    log(f"docs: {DOCS} ({tag})")


# -- processes --------------------------------------------------------------------------------------


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_redis(data_dir: Path, port: int | None = None):
    """A private redis-server (``fanout.redis_server``, the app's own configuration) that dies with us."""
    from fanout.redis_server import RedisServer, command, wait_until_ready

    server = RedisServer(data_dir, port)
    server.process = subprocess.Popen(
        command(data_dir, port=server.port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    try:
        wait_until_ready(server.url, timeout=10, process=server.process)
    except BaseException:
        server.stop()
        raise
    return server


def stop_processes(processes, *, timeout: float = 10) -> None:
    """SIGTERM (RQ's warm shutdown, daphne's reactor stop, cProfile's file written), then SIGKILL."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    end = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_http(url: str, *, timeout: float = 60, processes: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in (processes or {}).items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} while starting")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


# -- a world: people in a database, servers around it ----------------------------------------------


@dataclass
class Template:
    """A migrated, populated database to copy for each run, with the sessions it holds.

    ``people``: ``{"authors": [{"id", "username", "session", "followers"}], "readers": [{"id", "session"?}]}``.
    ``db`` is a SQLite file, or with ``database="postgres"`` the URL of a database on a private
    PostgreSQL server (``postgres``) that each run copies into a database of its own.
    """

    db: Path | str
    secret_key: str
    people: dict
    postgres: Any = None

    @property
    def database(self) -> str:
        return "sqlite" if self.postgres is None else "postgres"

    @classmethod
    def build(
        cls,
        folder: Path,
        *,
        authors: list[int],
        readers: int,
        pick: str = "first",
        seed: int = 0,
        reader_sessions: bool = False,
        app_dir: Path = BASE_DIR,
        database: str = "sqlite",
    ) -> Template:
        """``len(authors)`` authors, the i-th followed by ``authors[i]`` of ``readers`` readers (the
        first ones, or with ``pick="random"`` a sample drawn with ``seed``), made in bulk; a session
        for every author, and for every reader with ``reader_sessions``."""
        folder.mkdir(parents=True, exist_ok=True)
        secret_key = secrets.token_urlsafe(50)
        postgres = None
        if database == "postgres":
            from fanout.postgres_server import PostgresServer

            # A folder of its own in /tmp: the server runs as the postgres user, which cannot
            # reach into a caller's private temporary folder.
            postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-postgres-"))).start()
            db = postgres.url  # the template database, copied by CREATE DATABASE ... TEMPLATE
        else:
            db = folder / "template.sqlite3"
        env = app_env(db=db, redis_url=f"redis://{HOST}:1/0", secret_key=secret_key, var_dir=folder / "var")
        run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=app_dir, env=env, check=True, timeout=600)  # noqa: E731
        run("manage.py", "migrate", "--noinput", "-v", "0")
        spec = {"authors": authors, "readers": readers, "pick": pick, "seed": seed, "reader_sessions": reader_sessions}
        run(str(Path(__file__).resolve()), "populate", json.dumps(spec), str(folder / "people.json"))
        if postgres is None:
            con = sqlite3.connect(db)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to copy
            con.close()
        return cls(db, secret_key, json.loads((folder / "people.json").read_text()), postgres)

    def close(self) -> None:
        """Stop the template's PostgreSQL server, if it has one."""
        if self.postgres is not None:
            self.postgres.stop()
            shutil.rmtree(self.postgres.data_dir, ignore_errors=True)


def app_env(*, db: Path | str, redis_url: str, secret_key: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """The app's environment; ``db`` a SQLite file or a database URL."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "timeline.settings",
        "DATABASE_URL": db if isinstance(db, str) else f"sqlite:///{db}",
        "REDIS_URL": redis_url,
        "DJANGO_SECRET_KEY": secret_key,
        "DJANGO_DEBUG": "0",
        "VAR_DIR": str(var_dir),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def populate(spec: dict, out: Path) -> None:
    """The child process of ``Template.build``: Django is set up against the template's database."""
    sys.path.insert(0, os.getcwd())  # the tree being measured (a patched copy, for live_latency --patch)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import transaction

    from timeline.models import Follow

    User = get_user_model()
    unusable = make_password(None)
    rng = random.Random(spec["seed"])
    with transaction.atomic():
        User.objects.bulk_create(
            [User(username=f"author{i}", password=unusable) for i in range(len(spec["authors"]))]
            + [User(username=f"reader{i}", password=unusable) for i in range(spec["readers"])],
            batch_size=2000,
        )
        authors = list(User.objects.filter(username__startswith="author").order_by("pk"))
        readers = list(User.objects.filter(username__startswith="reader").order_by("pk"))
        reader_ids = [r.pk for r in readers]
        follows = []
        for author, count in zip(authors, spec["authors"], strict=True):
            chosen = (
                rng.sample(reader_ids, min(count, len(reader_ids))) if spec["pick"] == "random" else reader_ids[:count]
            )
            follows += [Follow(follower_id=r, followee_id=author.pk) for r in chosen]
        Follow.objects.bulk_create(follows, batch_size=2000)
        keys = new_sessions([*authors, *(readers if spec["reader_sessions"] else [])], hours=48)
    people = {
        "authors": [
            {"id": a.pk, "username": a.username, "session": keys[a.pk], "followers": n}
            for a, n in zip(authors, spec["authors"], strict=True)
        ],
        "readers": [{"id": r.pk, **({"session": keys[r.pk]} if r.pk in keys else {})} for r in readers],
    }
    out.write_text(json.dumps(people))


def new_sessions(users, *, hours: float) -> dict[int, str]:
    """Log users in by writing session rows (what django.contrib.auth.login stores); Django set up."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    store, expire, keys, rows = SessionStore(), timezone.now() + dt.timedelta(hours=hours), {}, []
    for user in users:
        key = keys[user.pk] = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: settings.AUTHENTICATION_BACKENDS[0],
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        rows.append(Session(session_key=key, session_data=store.encode(data), expire_date=expire))
    Session.objects.bulk_create(rows, batch_size=1000)
    return keys


class World:
    """One run's servers: a copy of the template, a private Redis, the app's processes.

    ``with World(...) as world:`` starts Redis and materializes every home timeline; the
    ``start_*`` methods start processes (logs in ``logs``); leaving the block stops them all.
    """

    def __init__(
        self,
        template: Template,
        *,
        logs: Path,
        env: dict[str, str] | None = None,
        app_dir: Path = BASE_DIR,
        profile_dir: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.template, self.logs, self.app_dir, self.profile_dir, self.keep = template, logs, app_dir, profile_dir, keep
        self.extra_env = {"TWEET_RATE_LIMIT": "0", **(env or {})}  # one author posting fast is the point, not abuse
        self.processes: dict[str, subprocess.Popen] = {}
        self.tmp = self.redis_server = self._listener = self._sql = None
        self.url = ""

    def __enter__(self) -> World:
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.logs.name}-"))
            self._copy_database()
            self.logs.mkdir(parents=True, exist_ok=True)
            self._start_redis()
            self.redis_version = self.redis.info("server")["redis_version"]
            self.env = app_env(
                db=self.db,
                redis_url=self.redis_server.url,
                secret_key=self.template.secret_key,
                var_dir=self.tmp / "var",
                **self.extra_env,
            )
            self.materialize()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _copy_database(self) -> None:
        if self.template.postgres is None:
            self.db = self.tmp / "db.sqlite3"
            shutil.copyfile(self.template.db, self.db)
            return
        server, template = self.template.db.rsplit("/", 1)
        name = f"run_{uuid.uuid4().hex[:12]}"
        self._admin_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
        self.db = self._pg_database = f"{server}/{name}"

    def _drop_database(self) -> None:
        if getattr(self, "_pg_database", None):
            self._admin_sql(f"DROP DATABASE IF EXISTS {self._pg_database.rsplit('/', 1)[1]} WITH (FORCE)")
            self._pg_database = None

    def _admin_sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.template.db.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(statement)

    def close(self) -> None:
        stop_processes(self.processes.values())
        if self.redis_server is not None:
            self.redis_server.stop()
        for closable in (self._listener, self._sql):
            if closable is not None:
                closable.close()
        self._listener = self._sql = None
        if not self.keep:
            self._drop_database()
        if self.keep:
            log(f"    kept {self.tmp}")
        elif self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _start_redis(self, port: int | None = None) -> None:
        import redis

        self.redis_server = start_redis(self.tmp / "redis", port)
        self.redis = redis.Redis.from_url(self.redis_server.url)

    def materialize(self, user_ids=None) -> None:
        """Home timelines in Redis (all by default), holding the sentinel only, as if each user had
        loaded the page: a fan-out then does its real work, one sorted set per follower."""
        from fanout import timelines

        ids = user_ids if user_ids is not None else [r[0] for r in self.sql("SELECT id FROM auth_user")]
        for i in range(0, len(ids), 5000):
            with self.redis.pipeline(transaction=False) as pipe:
                for user_id in ids[i : i + 5000]:
                    pipe.zadd(timelines.key(user_id), {timelines.SENTINEL: 0})
                pipe.execute()

    def restart_redis(self, *, lose_data: bool) -> None:
        """Stop Redis and start a new one on the same port, with its data deleted if ``lose_data``."""
        self.redis_server.stop()
        if lose_data:
            shutil.rmtree(self.redis_server.data_dir)
        self._start_redis(self.redis_server.port)

    # processes

    def start(self, name: str, argv: list[str], *, pass_fds=()) -> subprocess.Popen:
        """``python argv...`` in the app's directory and environment, its output in ``logs/name.log``."""
        python = [sys.executable]
        if self.profile_dir:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            python += ["-m", "cProfile", "-o", str(self.profile_dir / f"{self.logs.name}-{name}.prof")]
        self.processes[name] = subprocess.Popen(
            [*python, *argv],
            cwd=self.app_dir,
            env=self.env,
            stdout=(self.logs / f"{name}.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which stops them in order
            preexec_fn=die_with_parent,
            pass_fds=pass_fds,
        )
        return self.processes[name]

    def start_web(
        self,
        count: int = 1,
        *,
        server: str = "serve",
        app: str = "timeline.asgi:application",
        one_port: bool = True,
        options: tuple[str, ...] = (),
    ) -> list[int]:
        """``count`` web processes, ``web1``...; their ports (``self.url`` is the first's).

        ``server``: "serve" is ``make run``'s (timeline.serve: daphne taking prepared websocket
        frames), "daphne" plain daphne, "uvicorn" uvicorn.

        As ``make run`` does (supervisord.conf), they share one listening socket and the kernel
        spreads new connections over them; with ``one_port=False`` each has a port of its own.
        """
        if one_port:
            self._listener = socket.create_server((HOST, 0), backlog=1024)
            ports = [self._listener.getsockname()[1]] * count
        else:
            ports = [free_port() for _ in range(count)]
        for i, port in enumerate(ports, 1):
            if server == "uvicorn":
                where = ["--fd", str(self._listener.fileno())] if one_port else ["--host", HOST, "--port", str(port)]
                argv = ["-m", "uvicorn", "--ws", "websockets", "--no-access-log", "--log-level", "warning", *where]
            else:
                where = ["--fd", str(self._listener.fileno())] if one_port else ["-b", HOST, "-p", str(port)]
                argv = ["-m", "timeline.serve" if server == "serve" else "daphne", *where]
            self.start(f"web{i}", [*argv, *options, app], pass_fds=(self._listener.fileno(),) if one_port else ())
        self.url = f"http://{HOST}:{ports[0]}"
        for port in sorted(set(ports)):
            wait_for_http(f"http://{HOST}:{port}/healthz", processes=self.processes)
        return ports

    def start_worker(self, name: str) -> None:
        self.start(name, ["manage.py", "fanout_worker", "-v", "0"])

    def start_workers(self, count: int) -> None:
        for i in range(1, count + 1):
            self.start_worker(f"worker{i}")

    def start_cron(self) -> None:
        self.start("cron", ["manage.py", "fanout_cron"])

    def stop(self, *names: str) -> None:
        stop_processes([self.processes.pop(name) for name in names])

    def pids(self) -> dict[str, int]:
        pids = {name: p.pid for name, p in self.processes.items()} | {"redis": self.redis_server.process.pid}
        if self.template.postgres is not None:  # the server and its backends (CpuClock.TREES)
            pid_file = self.template.postgres.data_dir / "cluster" / "postmaster.pid"
            pids["postgres"] = int(pid_file.read_text().split()[0])
        return pids

    def died(self) -> list[str]:
        """The processes that exited on their own."""
        out = [f"{name} (exit {p.returncode})" for name, p in self.processes.items() if p.poll() is not None]
        if self.redis_server.process.poll() is not None:
            out.append(f"redis (exit {self.redis_server.process.returncode})")
        return out

    # the database, read as it is written (WAL: reading never waits for the app)

    def sql(self, query: str, *args) -> list[tuple]:
        """A query (``?`` placeholders) on the run's database."""
        if self.template.postgres is not None:
            import psycopg

            if self._sql is None:
                self._sql = psycopg.connect(self.db, autocommit=True)
            return self._sql.execute(query.replace("?", "%s"), args).fetchall()
        if self._sql is None:
            self._sql = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        return self._sql.execute(query, args).fetchall()

    def fanout(self, tweet_id: int) -> dict:
        """The tweet's outbox row, its times as UNIX seconds (Django stores UTC)."""
        times = ("enqueued_at", "started_at", "finished_at", "lease_expires_at")
        columns = ("state", "delivered", "recipients", "attempts", *times)
        row = self.sql(f"SELECT {', '.join(columns)} FROM fanout_fanout WHERE tweet_id = ?", tweet_id)
        return {k: timestamp(v) if k in times else v for k, v in zip(columns, row[0], strict=True)} if row else {}

    def post(self, session: str, body: str, *, timeout: float = 10, **fields: str) -> tuple[int, dict, dict]:
        """POST /api/tweets as a browser (session cookie, CSRF pair): (status, headers, JSON answer).
        ``fields`` go into the JSON too (a ``client_id`` of one's own, a ``publish_at``)."""
        payload = json.dumps({"body": body, "client_id": str(uuid.uuid4()), **fields}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-CSRFToken": CSRF_TOKEN,
            "Cookie": f"sessionid={session}; csrftoken={CSRF_TOKEN}",
        }
        request = urllib.request.Request(f"{self.url}/api/tweets", data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.load(error)


def timestamp(value: str | dt.datetime | None) -> float | None:
    """A datetime Django stored (SQLite: text, UTC, naive; PostgreSQL: aware) as UNIX seconds."""
    if value is None:
        return None
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def wait_until(check, *, timeout: float, every: float = 0.01):
    """``check()``'s first true value, polled every ``every`` s; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"gave up after {timeout:.0f} s")


def run_loadgen(
    world: World,
    *,
    out: Path,
    duration: float,
    rate: float | None = None,
    concurrency: int | None = None,
    drain_timeout: float = 240,
    max_in_flight: int = 256,
) -> tuple[dict, dict[str, float]]:
    """Post with bench/loadgen.py as the template's authors; its JSON report, and the CPU seconds each
    process used during the load (``loadgen``'s own count; ``_others_cores``: the rest of the machine).

    Its output goes to ``out`` with the suffix .log, and a summary of it to stdout."""
    cookies = world.tmp / "sessions.json"
    cookies.write_text(json.dumps({"sessions": world.template.people["authors"]}))
    cmd = [sys.executable, str(BASE_DIR / "bench" / "loadgen.py"), "--url", world.url, "--duration", str(duration)]
    cmd += ["--cookies-from", str(cookies), "--json-out", str(out), "--drain-timeout", str(drain_timeout)]
    cmd += ["--max-in-flight", str(max_in_flight)]
    cmd += ["--concurrency", str(concurrency)] if concurrency else ["--rate", f"{rate:.2f}"]
    clock = CpuClock(world.pids())
    process = subprocess.Popen(
        cmd,
        cwd=BASE_DIR,
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=die_with_parent,
    )
    used: dict[str, float] = {}
    lines = []
    try:
        for line in process.stdout:  # CPU is read when the load ends, before the drain and the check
            lines.append(line)
            if not used and line.startswith("load over"):
                used = clock.read()
        process.wait(timeout=drain_timeout + duration + 120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out.with_suffix(".log").write_text("".join(lines))
    print("".join(line for line in lines if not line.startswith("  waiting")), end="", flush=True)
    if process.returncode not in (0, 2):
        raise RuntimeError(f"loadgen exited with {process.returncode}:\n{''.join(lines[-30:])}")
    data = json.loads(out.read_text())
    used["loadgen"] = data["summary"]["client_cpu_s"]  # its own count, over the load only
    if "_wall" in used:
        used["_others_cores"] = others_share(used) * CORES
    return data, used


# -- HTTP/1.1 on asyncio, with keep-alive, for clients that must not block their event loop ---------


def post_request(host_header: str, session: str, payload: dict) -> bytes:
    """The bytes of POST /api/tweets as a browser sends it."""
    body = json.dumps(payload).encode()
    return (
        f"POST /api/tweets HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCookie: sessionid={session}; csrftoken={CSRF_TOKEN}\r\n"
        f"X-CSRFToken: {CSRF_TOKEN}\r\nOrigin: http://{host_header}\r\n\r\n"
    ).encode() + body


def header(head: bytes, name: bytes) -> bytes | None:
    """A header's value from a response's header block."""
    at = head.lower().find(b"\r\n" + name + b":")
    return None if at < 0 else head[at + len(name) + 3 : head.find(b"\r\n", at + 2)].strip()


class HTTPConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, data: bytes) -> tuple[int, bytes, bytes]:
        """Send one whole request; return (status, header block, body)."""
        self.writer.write(data)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, lower = int(head[9:12]), head.lower()
        length = header(lower, b"content-length")
        if length is not None:
            body = await self.reader.readexactly(int(length))
        elif b"transfer-encoding: chunked" in lower:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
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


if __name__ == "__main__" and sys.argv[1:2] == ["populate"]:
    populate(json.loads(sys.argv[2]), Path(sys.argv[3]))
