"""Redis or the database away: which part an error says is away, and saying so once.

While a part is away every request, job and round of the cron fails on it, each in the same
words; a line for each (hundreds a minute) would bury the one that matters, when it came back.
So each process says once that a part is away, and once that it is back, with how long it was.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import InterfaceError, OperationalError
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

REDIS, DATABASE = "Redis", "database"


def part_of(exception: BaseException | None) -> str | None:
    """Which part an exception says is away (REDIS or DATABASE), or None for a real bug."""
    if isinstance(exception, RedisError):
        return REDIS
    if isinstance(exception, (OperationalError, InterfaceError)):
        return DATABASE
    return None


class Outages:
    """One process's outages, said once each way. Safe to share between threads."""

    def __init__(self) -> None:
        self.since: dict[str, float] = {}
        self.lock = threading.Lock()

    def failed(self, part: str, during: str, exception: BaseException) -> None:
        with self.lock:
            if part in self.since:
                return
            self.since[part] = time.monotonic()
        logger.warning("the %s is away (%s, during %s); said once until it is back", part, exception, during)

    def worked(self, part: str) -> None:
        if part not in self.since:  # the usual case: no lock
            return
        with self.lock:
            since = self.since.pop(part, None)
        if since is not None:
            logger.warning("the %s is back after %.0f s", part, time.monotonic() - since)


# This process's: the web process's requests and the cron's rounds note what they meet here.
outages = Outages()
