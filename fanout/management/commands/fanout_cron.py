"""Periodic work, in one small process: the outbox relay every few seconds."""

import logging
import time

from django.core.management.base import BaseCommand
from redis.exceptions import RedisError

from fanout.relay import relay_pending_fanouts

logger = logging.getLogger("fanout.cron")


class Command(BaseCommand):
    help = "Run periodic fan-out chores (the outbox relay) until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=5.0, help="Seconds between rounds.")
        parser.add_argument("--once", action="store_true", help="Run one round and exit.")

    def handle(self, *args, interval: float, once: bool, **options):
        while True:
            try:
                relay_pending_fanouts()
            except RedisError:
                logger.exception("relay round failed; trying again next round")
            if once:
                return
            time.sleep(interval)
