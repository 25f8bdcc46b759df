"""What the benchmarks share: the machine they ran on, and small helpers for their processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import socket
import sqlite3
import subprocess
from importlib.metadata import version
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = ("Django", "channels", "channels_redis", "daphne", "redis", "hiredis", "rq", "websockets", "uvicorn")


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
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=BASE_DIR, capture_output=True, text=True
        )
        git = head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    packages = {}
    for dist in PACKAGES:
        with contextlib.suppress(Exception):
            packages[dist] = version(dist)
    return {
        "nproc": os.cpu_count(),
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


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
