"""Wait until Redis answers, so processes started together start in a sensible order."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fanout.redis_server import wait_until_ready


class Command(BaseCommand):
    help = "Wait until REDIS_URL answers PING."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=15.0)

    def handle(self, *args, timeout: float, **options):
        try:
            wait_until_ready(settings.REDIS_URL, timeout=timeout)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from None
