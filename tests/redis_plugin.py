"""A pytest plugin that starts a private redis-server for the whole test session.

It runs before pytest-django loads the settings (which read REDIS_URL once, at import), so it
must be a plugin loaded with ``-p`` rather than a conftest fixture. The server listens on a
free loopback port with its data in a temporary folder and is stopped when the session ends.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from fanout.redis_server import RedisServer

_server: RedisServer | None = None
_tmp: tempfile.TemporaryDirectory | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    global _server, _tmp
    if early_config.getoption("help", False) or os.environ.get("TEST_REDIS_URL"):
        if os.environ.get("TEST_REDIS_URL"):
            os.environ["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
        return
    _tmp = tempfile.TemporaryDirectory(prefix="timeline-test-redis-")
    _server = RedisServer(Path(_tmp.name)).start()
    os.environ["REDIS_URL"] = _server.url


def pytest_unconfigure(config):
    if _server is not None:
        _server.stop()
    if _tmp is not None:
        _tmp.cleanup()
