"""The RQ worker the fan-out workers run, and the loop that keeps one running.

RQ's default worker forks a child for every job. A fan-out job is short (a few database reads
and one Redis script per thousand followers), so the fork, and Django's set-up in the child,
would cost more than the work. SimpleWorker runs jobs in the worker process itself; what it
gives up is isolation, so each job is bracketed like a request: stale or broken database
connections are closed before and after it. One that is fine is kept: a worker runs one job at
a time on one thread, so on SQLite it holds its connection between jobs (Django's persistent
connections; opening one cost a tenth of a small fan-out), and on PostgreSQL it returns it to
the pool.

A worker must outlive Redis and the database going away. A job that fails on either records
its failure on the outbox row (or lets its lease lapse) and the relay retries it; but RQ's own
loop quits on a Redis error outside a job (a heartbeat, recording a result), so ``run`` starts
it again, with backoff, until it is asked to stop. A Redis that comes back without its data has
also forgotten the worker: the heartbeat notices and registers it again, so /api/stats and
/ops/ count it.

Every worker also runs RQ's scheduler (``with_scheduler``): the one that takes its lock forks
a process that moves scheduled tweets' jobs onto the queue when they are due (fanout.scheduled).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time

from django.db import close_old_connections, connections
from django_rq import get_worker
from redis.exceptions import RedisError
from rq import worker_registration
from rq.scheduler import RQScheduler
from rq.worker import SimpleWorker

from fanout.admission import WORKER_QUEUES
from fanout.outages import DATABASE, REDIS, outages, part_of

logger = logging.getLogger(__name__)

SERIALIZER = "rq.serializers.JSONSerializer"
# Seconds a worker's registration lives without a heartbeat (RQ adds 60). The worker beats at
# least this often (it waits for jobs in slices of WORKER_TTL - 15 s), so a worker killed
# outright drops out of /api/stats within about WORKER_TTL + 60 seconds.
WORKER_TTL = 20
REGISTRATION_CHECK_EVERY = 5.0  # seconds
RESTART_DELAY_MIN, RESTART_DELAY_MAX = 0.5, 30.0  # seconds, doubling while Redis stays away
PR_SET_PDEATHSIG = 1  # prctl(2)


class FanoutWorker(SimpleWorker):
    stop_requested = False
    _registration_checked = 0.0
    _scheduler = None

    @property
    def scheduler(self):
        return self._scheduler

    @scheduler.setter
    def scheduler(self, scheduler):
        # RQ builds its scheduler from a class named in its code: make it ours (see
        # FanoutScheduler), before it forks the scheduler's process.
        if type(scheduler) is RQScheduler:
            scheduler.__class__ = FanoutScheduler
        self._scheduler = scheduler

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.push_exc_handler(self._note_outage)

    def execute_job(self, job, queue):
        close_old_connections()
        try:
            return super().execute_job(job, queue)
        finally:
            close_old_connections()

    def perform_job(self, job, queue, execution):
        done = super().perform_job(job, queue, execution)
        if done and outages.since:  # a job went through: whatever was away is back
            outages.worked(DATABASE)
            outages.worked(REDIS)
        return done

    @staticmethod
    def _note_outage(job, exc_type, exc_value, traceback):
        part = part_of(exc_value)
        if part is not None:
            outages.failed(part, f"job {job.func_name}", exc_value)
        return True  # RQ's next handler (moving the job to the failed registry) runs too

    def request_stop(self, signum, frame):
        self.stop_requested = True  # Ctrl-C or SIGTERM: ``run`` must not start another loop
        super().request_stop(signum, frame)

    def heartbeat(self, timeout=None, pipeline=None):
        if pipeline is None:
            self._register_again_if_forgotten()
        super().heartbeat(timeout, pipeline)

    def _register_again_if_forgotten(self) -> None:
        now = time.monotonic()
        if now - self._registration_checked < REGISTRATION_CHECK_EVERY:
            return
        self._registration_checked = now
        if not self.connection.sismember(worker_registration.REDIS_WORKER_KEYS, self.key):
            self.log.warning(
                "Worker %s: Redis has forgotten this worker (restarted empty?); registering again", self.name
            )
            self.connection.delete(self.key)
            self.register_birth()


def _keep_sqlite_connections() -> None:
    # Not in settings: a web process runs each request on a thread of its own (Django under
    # ASGI), where a kept connection would outlive its thread. PostgreSQL pools instead.
    for alias in connections:
        if connections[alias].vendor == "sqlite":
            connections[alias].settings_dict["CONN_MAX_AGE"] = None


class FanoutScheduler(RQScheduler):
    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        # Held since the fork (_end_with_the_worker): a SIGTERM sent meanwhile reaches the
        # handler just installed, which stops the scheduler and releases its lock.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _end_with_the_worker() -> None:
    """In RQ's scheduler process, which the worker forks: be sent SIGTERM when the worker dies,
    however it dies. RQ's scheduler then releases its lock and stops; without this, a worker
    killed outright leaves its scheduler running on its own, and a new worker cannot take the
    lock for a minute (the relay in fanout.scheduled covers that minute, a second late).

    RQ installs the scheduler's SIGTERM handler only once the new process runs its loop; until
    then SIGTERM's default would end it with the lock still held. So SIGTERM is blocked here, and
    FanoutScheduler unblocks it once RQ's handler is in place: one sent in between waits for it.
    """
    if not sys.platform.startswith("linux"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the worker died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def make_worker(*, name: str | None = None) -> FanoutWorker:
    return get_worker(
        *WORKER_QUEUES,
        worker_class="fanout.worker.FanoutWorker",
        serializer=SERIALIZER,
        name=name,
        worker_ttl=WORKER_TTL,
    )


def run(*, burst: bool = False, name: str | None = None, logging_level: str = "WARNING") -> None:
    """Run a worker until it is told to stop (or, with ``burst``, until the queues are empty)."""
    _keep_sqlite_connections()
    os.register_at_fork(after_in_child=_end_with_the_worker)  # the one fork: RQ's scheduler
    delay = RESTART_DELAY_MIN
    while True:
        worker = None
        started = time.monotonic()
        try:
            worker = make_worker(name=name)
            # With RQ's scheduler: the worker that takes its lock moves scheduled tweets' jobs
            # onto the queue when they are due (fanout.scheduled), in a child process.
            worker.work(burst=burst, logging_level=logging_level, with_scheduler=True)
            failure = "its loop ended"
        except RedisError as exc:
            failure = f"Redis error: {exc}"
        if worker is not None and worker.stop_requested:
            return
        if burst and failure == "its loop ended":
            return
        if time.monotonic() - started > RESTART_DELAY_MAX:
            delay = RESTART_DELAY_MIN  # it ran well for a while: this is a new outage
        logger.warning("fan-out worker stopped (%s); starting it again in %.1f s", failure, delay)
        # RQ's handlers would try to stop a worker that is gone: between loops, a signal
        # simply ends the process (no job is running).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        time.sleep(delay)
        delay = min(delay * 2, RESTART_DELAY_MAX)
