"""A pytest plugin that starts the private servers the whole test session uses.

It runs before pytest-django loads the settings (which read REDIS_URL and DATABASE_URL once, at
import), so it must be a plugin loaded with ``-p`` rather than a conftest fixture.

- Redis, always: a private redis-server on a free loopback port, its data in a temporary folder.
- PostgreSQL, when ``TEST_DATABASE=postgres``: a private cluster (fanout.postgres_server), and
  the suite runs on it; otherwise on SQLite. `make test` runs the suite both ways.
- A Redis Cluster of three masters, when ``TEST_TIMELINE_STORE=cluster``: the timelines go there
  (TIMELINE_REDIS_URL, TIMELINE_REDIS_CLUSTER) and everything else stays on the Redis above.
  `make test` runs the timeline and fan-out tests this way too.

Both are stopped when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fanout.redis_server import RedisClusterServer, RedisServer

_servers: list = []
_folders: list[Path] = []


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    if early_config.getoption("help", False):
        return
    if os.environ.get("TEST_REDIS_URL"):
        os.environ["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
    else:
        folder = Path(tempfile.mkdtemp(prefix="timeline-test-redis-"))
        _folders.append(folder)
        _servers.append(server := RedisServer(folder).start())
        os.environ["REDIS_URL"] = server.url
    database = os.environ.get("TEST_DATABASE", "sqlite").strip().lower()
    if database == "postgres":
        from fanout.postgres_server import PostgresServer

        folder = Path(tempfile.mkdtemp(prefix="timeline-test-pg-"))  # in /tmp: reachable by the postgres user
        _folders.append(folder)
        _servers.append(server := PostgresServer(folder).start())
        os.environ["DATABASE_URL"] = server.url
    elif database != "sqlite":
        raise pytest.UsageError(f"TEST_DATABASE must be sqlite or postgres, not {database!r}")
    store = os.environ.get("TEST_TIMELINE_STORE", "redis").strip().lower()
    if store == "cluster":
        folder = Path(tempfile.mkdtemp(prefix="timeline-test-cluster-"))
        _folders.append(folder)
        _servers.append(server := RedisClusterServer(folder).start())
        os.environ.update(TIMELINE_REDIS_URL=server.url, TIMELINE_REDIS_CLUSTER="true")
    elif store != "redis":
        raise pytest.UsageError(f"TEST_TIMELINE_STORE must be redis or cluster, not {store!r}")


def servers() -> list:
    """The servers this plugin started, for the tests that stop and start them."""
    return list(_servers)


def pytest_report_header(config):
    return (
        f"database: {os.environ.get('TEST_DATABASE', 'sqlite')}, redis: {os.environ.get('REDIS_URL')},"
        f" timelines: {os.environ.get('TIMELINE_REDIS_URL', 'on that redis')}"
    )


def pytest_unconfigure(config):
    for server in reversed(_servers):
        server.stop()
    for folder in _folders:
        shutil.rmtree(folder, ignore_errors=True)
