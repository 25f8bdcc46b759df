"""A private PostgreSQL server, for the test suite and the benchmarks.

Debian's server binaries live in /usr/lib/postgresql/<version>/bin (the newest is used, or
$POSTGRES_BIN). The cluster is made with initdb in a folder of the caller's, listens on a free
loopback port and a unix socket in that folder, trusts local connections (nothing else can
reach it), and is tuned for throwaway data: no fsync, no full-page writes. PostgreSQL refuses to
run as root, so as root the folder is given to the ``postgres`` user and the server runs as it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from fanout.redis_server import free_port

DATABASE = "timeline"


def find_bin_dir() -> Path:
    chosen = os.environ.get("POSTGRES_BIN", "").strip()
    if chosen:
        return Path(chosen)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    for candidate in reversed(candidates):
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise SystemExit("PostgreSQL not found: install Debian's postgresql, or set POSTGRES_BIN")


class PostgresServer:
    """A cluster on a free loopback port, or on ``host`` (with ``port`` chosen by the caller).

    ``trusted_network`` (a CIDR such as 10.77.0.0/24) lets the hosts of a private network in
    without a password, as loopback is: bench/cluster.py's web and worker hosts.
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, *, host: str = "127.0.0.1", trusted_network: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.trusted_network = trusted_network
        self.port = port or free_port()
        self.bin = find_bin_dir()
        self.started = False
        self._as = _unprivileged_user()

    @property
    def url(self) -> str:
        return f"postgres://postgres@{self.host}:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> list[str]:
        return ["runuser", "-u", self._as, "--", *args] if self._as else list(args)

    def start(self, timeout: float = 30.0) -> PostgresServer:
        cluster = self.data_dir / "cluster"
        if not cluster.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self._as:
                shutil.chown(self.data_dir, user=self._as)
            subprocess.run(
                self._run(str(self.bin / "initdb"), "-D", str(cluster), "-U", "postgres", "-A", "trust", "--no-sync"),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        hba = cluster / "pg_hba.conf"
        if self.trusted_network and self.trusted_network not in hba.read_text():
            with hba.open("a") as rules:
                rules.write(f"host all all {self.trusted_network} trust\n")
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "max_connections": "200",
        }
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        started = subprocess.run(
            self._run(
                str(self.bin / "pg_ctl"),
                "start",
                "-D",
                str(cluster),
                "-w",
                "-t",
                str(int(timeout)),
                "-l",
                str(self.data_dir / "postgres.log"),
                "-o",
                options,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if started.returncode != 0:
            log = (
                (self.data_dir / "postgres.log").read_text(errors="replace")[-2000:]
                if (self.data_dir / "postgres.log").exists()
                else ""
            )
            raise RuntimeError(f"postgres did not start: {started.stderr.decode(errors='replace')} {log}")
        self.started = True
        subprocess.run(
            self._run(str(self.bin / "createdb"), "-h", self.host, "-p", str(self.port), "-U", "postgres", DATABASE),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fails harmlessly when it exists
        return self

    def stop(self) -> None:
        if self.started:
            subprocess.run(
                self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data_dir / "cluster"), "-m", "fast", "-w"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.started = False


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SystemExit(
            "running as root needs a 'postgres' user for PostgreSQL (Debian's postgresql makes one)"
        ) from None
    return "postgres"
