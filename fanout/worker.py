"""The RQ worker class the fan-out workers run.

RQ's default worker forks a child for every job. A fan-out job is short (a few database reads
and one Redis script per thousand followers), so the fork, and Django's set-up in the child,
would cost more than the work. SimpleWorker runs jobs in the worker process itself; what it
gives up is isolation, so each job is bracketed like a request: stale or broken database
connections are closed before and after it.
"""

from django.db import close_old_connections
from rq.worker import SimpleWorker


class FanoutWorker(SimpleWorker):
    def execute_job(self, job, queue):
        close_old_connections()
        try:
            return super().execute_job(job, queue)
        finally:
            close_old_connections()
