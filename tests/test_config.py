"""Start-up refuses bad configuration with one clear line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent


def start(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "name, value",
    [
        ("FANOUT_QUEUE_CAP", "lots"),
        ("FANOUT_QUEUE_CAP", "-1"),
        ("FANOUT_QUEUE_CAP", "1.5"),
        ("PORT", "99999"),
        ("PORT", "eighty"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "redis://127.0.0.1:notaport"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("DJANGO_DEBUG", "perhaps"),
        ("DJANGO_SECRET_KEY", "short"),
        ("CHANNEL_LAYER", "carrier-pigeon"),
        ("WEB_MAX_IN_FLIGHT", "-3"),
        ("WEB_THREADS", "many"),
        ("WEB_PROCESSES", "0"),
        ("WORKERS", "-1"),
        ("FANOUT_LEASE_SECONDS", "0"),
        ("SOCKETS_PER_USER", "none"),
        ("DJANGO_SECURE", "sometimes"),
        ("TIMELINE_IDLE_DAYS", "0"),
        ("TIMELINE_REDIS_URL", "http://127.0.0.1:7000"),
        ("TIMELINE_REDIS_CLUSTER", "maybe"),
        ("METRICS_TOKEN", "short"),
        ("METRICS_TOKEN", "with a space in it, long enough"),
    ],
)
def test_bad_values_stop_start_up_with_one_line_naming_the_variable(name, value):
    result = start(**{name: value})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0] and "configuration error" in lines[0]


def test_a_cluster_named_by_a_unix_socket_is_refused():
    result = start(TIMELINE_REDIS_CLUSTER="true", TIMELINE_REDIS_URL="unix:///tmp/nowhere.sock")
    assert result.returncode == 1
    assert "TIMELINE_REDIS_URL" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_good_values_start():
    result = start(FANOUT_QUEUE_CAP="0", PORT="8123", DJANGO_DEBUG="yes")
    assert result.returncode == 0, result.stderr


def test_django_secure_turns_on_secure_cookies_hsts_and_the_proxy_header():
    show = "from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER)"
    shell = [sys.executable, "manage.py", "shell", "--no-imports", "-c", show]
    run = {"cwd": BASE_DIR, "capture_output": True, "text": True, "timeout": 60}
    on = subprocess.run(shell, env={**os.environ, "DJANGO_SECURE": "1"}, **run)
    off = subprocess.run(shell, env={**os.environ, "DJANGO_SECURE": "0"}, **run)
    assert on.stdout.split() == ["True", "True", "31536000", "('HTTP_X_FORWARDED_PROTO',", "'https')"], on.stderr
    assert off.stdout.split()[:3] == ["False", "False", "0"], off.stderr
