"""Periodic chores, in one small process: sample the queue depth, publish the low watermark
and run the outbox relays (fan-outs, removals, scheduled tweets) every second, queue the trends
job every ten seconds, and prune expired presence marks now and then.

A loop of our own rather than RQ's cron scheduler (``rq cron``, django-rq's ``rqcron``), for two
reasons. The relays and the depth sample must run every second whatever the queue is doing:
the relay is what recovers fan-outs whose jobs were lost, so it cannot be a job waiting behind
a full queue or for a dead worker. And RQ 3.0's cron enqueues its jobs with RQ's default
serializer, pickle, which our workers refuse (they read JSON only). The one chore that is work
rather than bookkeeping, publishing the trends, does go through the queue: the loop only
queues it (``fanout.trends.enqueue_publish``).

Each round is bracketed like a request (``close_old_connections`` before and after it), so a
database connection that a restart of the server broke is closed and a new one opened next
round, as Django does for every request; a process that never leaves its loop would otherwise
keep failing on the dead connection for ever.
"""

import logging
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from fanout import metrics, presence, retraction, scheduled, trends, watermark
from fanout.outages import DATABASE, REDIS, outages, part_of
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
                chores += [relay_fanouts, retraction.relay, scheduled.relay]
            if once or tick % PRUNE_EVERY == 0:
                chores.append(presence.prune)
            if once or tick % trends.EVERY_SECONDS == 0:
                chores.append(trends.enqueue_publish)
            close_old_connections()
            failed = set()
            for chore in chores:
                # One failing chore (Redis away, a locked database) must not stop the others,
                # nor this process: note it and try again next round.
                try:
                    chore()
                except Exception as exc:
                    part = part_of(exc)
                    if part is None:
                        logger.exception("%s failed; trying again next round", chore.__name__)
                    else:
                        failed.add(part)
                        outages.failed(part, chore.__name__, exc)
            for part in {REDIS, DATABASE} - failed:
                outages.worked(part)
            close_old_connections()
            if once:
                return
            tick += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
