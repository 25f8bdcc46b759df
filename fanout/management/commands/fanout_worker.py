"""Run an RQ worker on the fan-out queues, with the JSON serializer and our worker class.

A thin wrapper over django-rq's worker so that every worker, wherever it is started, listens
on the same queues in the same priority order and never unpickles anything.
"""

from django.core.management.base import BaseCommand, CommandError
from django_rq import get_worker
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.logutils import setup_loghandlers

from fanout.admission import WORKER_QUEUES

SERIALIZER = "rq.serializers.JSONSerializer"


class Command(BaseCommand):
    help = "Run a fan-out worker (RQ) on " + ", ".join(WORKER_QUEUES)

    def add_arguments(self, parser):
        parser.add_argument("--burst", action="store_true", help="Stop when the queues are empty.")
        parser.add_argument("--name", default=None, help="Worker name (default: host and pid).")

    def handle(self, *args, burst: bool, name: str | None, verbosity: int, **options):
        level = {0: "WARNING", 1: "INFO"}.get(verbosity, "DEBUG")
        setup_loghandlers(level)
        try:
            worker = get_worker(
                *WORKER_QUEUES, worker_class="fanout.worker.FanoutWorker", serializer=SERIALIZER, name=name
            )
            worker.work(burst=burst, with_scheduler=True, logging_level=level)
        except RedisConnectionError as exc:
            raise CommandError(f"cannot reach Redis: {exc}") from None
