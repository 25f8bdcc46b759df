"""Periodic chores, in one small process: sample the queue depth, publish the low watermark
and run the outbox relay every second, and prune expired presence marks now and then."""

import logging
import time

from django.core.management.base import BaseCommand
from django.db import OperationalError
from redis.exceptions import RedisError

from fanout import metrics, presence, retraction, watermark
from fanout.relay import RELAY_EVERY, relay_fanouts

logger = logging.getLogger("fanout.cron")

PRUNE_EVERY = 60


class Command(BaseCommand):
    help = "Run periodic fan-out chores until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run every chore once and exit.")

    def handle(self, *args, once: bool, **options):
        tick = 0
        while True:
            started = time.monotonic()
            chores = [metrics.sample_depth, watermark.publish]
            if once or tick % RELAY_EVERY == 0:
                chores += [relay_fanouts, retraction.relay]
            if once or tick % PRUNE_EVERY == 0:
                chores.append(presence.prune)
            for chore in chores:
                # One failing chore (Redis away, a locked database) must not stop the others,
                # nor this process: log it and try again next round.
                try:
                    chore()
                except (RedisError, OperationalError) as exc:  # an outage: one line, not a traceback
                    logger.warning("%s failed (%s); trying again next round", chore.__name__, exc)
                except Exception:
                    logger.exception("%s failed; trying again next round", chore.__name__)
            if once:
                return
            tick += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
