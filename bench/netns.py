"""Hosts on one machine: Linux network namespaces on a private bridge, and what runs on them.

For bench/cluster.py. Each host is a network namespace with one veth link to a Linux bridge,
and the bridge lives in a namespace of its own: the machine's own network (the root namespace)
is never touched, and deleting the namespaces takes every link and the bridge with them. A
process is put on a host by entering its namespace (setns(2), which moves only the calling
thread) just before it is started, so helpers that start children of their own
(fanout.postgres_server runs pg_ctl) need no change. Each process gets a process group of its
own, which is how it is stopped: never by name.

Namespaces are named ``tlbench-<pid>-<host>``: a run killed before it could clean up is found by
the next one (its pid is gone), which kills what it left running there and deletes them.
Needs root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import die_with_parent

PREFIX = "tlbench"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(arguments: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *arguments.split()], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {arguments}: {done.stderr.strip()}")
    return done.stdout


def enter(namespace: str) -> None:
    """Move the calling thread, and the threads and processes it starts later, to ``namespace``."""
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns to {namespace} failed")
    finally:
        os.close(target)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the block (and what it starts) in ``namespace``; back where it was afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(namespace)
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(home)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, *command: str, log: Path, **popen) -> None:
        """Run ``command`` here, its output to ``log``, in a process group of its own."""
        with inside(self.namespace), log.open("a") as out:
            self.processes[name] = subprocess.Popen(
                command, stdout=out, stderr=out, start_new_session=True, preexec_fn=die_with_parent, **popen
            )

    def stop(self, *names: str, sig: int = signal.SIGTERM, grace: float = 10) -> None:
        """Signal the process groups of the named processes (all if none named) and wait for
        them; those still running after ``grace`` seconds get SIGKILL."""
        stopping = {n: self.processes.pop(n) for n in (names or list(self.processes))}
        for process in stopping.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        for process in stopping.values():
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class Network:
    """A /24 of hosts on one bridge; ``delete`` undoes everything ``add`` did."""

    def __init__(self, subnet: str) -> None:
        self.subnet = subnet
        self.prefix = f"{PREFIX}-{os.getpid()}"
        self.bridge = f"{self.prefix}-bridge"
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}

    def _namespace(self, name: str) -> None:
        ip(f"netns add {name}")
        self.namespaces.append(name)
        ip(f"-n {name} link set lo up")

    def add(self, name: str, last_octet: int) -> Host:
        if not self.namespaces:
            self._namespace(self.bridge)
            ip(f"-n {self.bridge} link add br0 type bridge")
            ip(f"-n {self.bridge} link set br0 up")
        host = Host(name, f"{self.prefix}-{name}", f"{self.subnet}.{last_octet}")
        self._namespace(host.namespace)
        # Both ends are made in the bridge's namespace, the host's end moved to the host at once.
        ip(f"-n {self.bridge} link add v-{name} type veth peer name eth0 netns {host.namespace}")
        ip(f"-n {self.bridge} link set v-{name} master br0 up")
        ip(f"-n {host.namespace} addr add {host.address}/24 dev eth0")
        ip(f"-n {host.namespace} link set eth0 up")
        self.hosts[name] = host
        return host

    def unplug(self, name: str) -> None:
        """Take a host's link down: it neither answers nor says goodbye, as a machine that lost power."""
        ip(f"-n {self.hosts[name].namespace} link set eth0 down")

    def delete(self) -> list[int]:
        """Stop every host's processes, kill any other still there (by pid), delete the
        namespaces; the pids of those others."""
        for host in self.hosts.values():
            host.stop()
        stray = _kill_inside(self.namespaces)
        for name in reversed(self.namespaces):
            ip(f"netns delete {name}", check=False)
        self.namespaces.clear()
        return stray


def _kill_inside(namespaces: list[str]) -> list[int]:
    """SIGKILL every process still in these namespaces but this one (which may have joined one)."""
    inodes = set()
    for name in namespaces:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    return killed


def sweep_stale() -> list[str]:
    """Delete the namespaces of earlier runs that died without cleaning up; their names."""
    stale = []
    for name in ip("netns list", check=False).split():
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            stale.append(name)
        except PermissionError:
            pass  # alive
    _kill_inside(stale)
    for name in stale:
        ip(f"netns delete {name}", check=False)
    return stale
