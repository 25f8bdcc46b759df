"""Run a fan-out worker: RQ, on the fan-out queues, with the JSON serializer and our worker class.

A thin wrapper over ``fanout.worker.run``, so that every worker, wherever it is started, listens
on the same queues in the same priority order, never unpickles anything, and survives Redis
going away (it waits for it to come back rather than exiting).
"""

from django.core.management.base import BaseCommand
from rq.logutils import setup_loghandlers

from fanout import worker
from fanout.admission import WORKER_QUEUES


class Command(BaseCommand):
    help = "Run a fan-out worker (RQ) on " + ", ".join(WORKER_QUEUES)

    def add_arguments(self, parser):
        parser.add_argument("--burst", action="store_true", help="Stop when the queues are empty.")
        parser.add_argument("--name", default=None, help="Worker name (default: a random one).")

    def handle(self, *args, burst: bool, name: str | None, verbosity: int, **options):
        level = {0: "WARNING", 1: "INFO"}.get(verbosity, "DEBUG")
        setup_loghandlers(level)
        worker.run(burst=burst, name=name, logging_level=level)
