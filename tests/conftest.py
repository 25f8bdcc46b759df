"""Shared fixtures. Every test runs against the real Redis the redis plugin started."""

from __future__ import annotations

import itertools
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django_rq import get_connection, get_worker

from fanout.admission import WORKER_QUEUES
from fanout.management.commands.fanout_worker import SERIALIZER

User = get_user_model()
_names = itertools.count()


@pytest.fixture(autouse=True)
def redis():
    """The test Redis, emptied before each test so no test sees another's queues or timelines."""
    connection = get_connection("fanout")
    connection.flushdb()
    return connection


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
