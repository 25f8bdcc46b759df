"""Scheduled tweets: published by RQ's scheduler at their time, through admission like any post.

A scheduled tweet is stored at once (``timeline.services.tweet_schedule``) with a ``Schedule``
row, its outbox, and a job is armed with RQ's ``enqueue_at`` on the ``scheduled`` queue: the
scheduler that runs inside one of the workers (``fanout.worker``) moves it onto the queue when
it is due, within a second, and the first free worker publishes it
(``timeline.services.tweet_publish_scheduled``): the tweet gets its id then, and goes to
followers through admission and the fan-out queue as if it had just been posted. A full queue
does not drop it: the attempt is put off by the Retry-After the queue would have answered,
spread by a random share of it so that many posts due at once do not come back together, and
armed again (``postpone``).

The database row is the truth; the job in Redis is a losable copy. Every second the relay
(``relay``, run by ``manage.py fanout_cron``) looks at the schedules due within
``LOOKAHEAD``: one whose job Redis no longer has (it restarted empty) is armed again before its
time, and one past due by ``LATE`` whose job is not on the queue or running (RQ's scheduler is
stopped or behind: its lock is held by a worker that was killed) is put on the queue's front.
Publishing is idempotent (it deletes the scheduled row it replaces, conditionally), so a job
armed twice publishes once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.utils import timezone
from django_rq import get_queue
from rq.job import Job

from fanout.admission import FAILURE_TTL, SCHEDULED_QUEUE
from fanout.connection import get_redis
from fanout.models import Schedule

logger = logging.getLogger(__name__)

# A due job still waiting this long after its time is taken as lost (RQ's scheduler runs every
# second) and queued again; one marked as running this long past due, as held by a dead worker.
LATE = timedelta(seconds=1.5)
STUCK = timedelta(seconds=30)
# RQ's scheduler keeps times in whole seconds (it truncates), so it may start a job up to a
# second before its time; the job then waits out the rest (timeline.services).
EARLY_BY_AT_MOST = 1.0
# The relay looks this far ahead for schedules whose job Redis has lost.
LOOKAHEAD = timedelta(seconds=30)
BATCH = 500
JOB = "fanout.jobs.publish_scheduled"


def job_id(tweet_id: int, attempt: int) -> str:
    return f"publish-{tweet_id}-{attempt}"


def arm(tweet_id: int, *, attempt: int, due_at: datetime) -> None:
    """Arm the publication job of attempt ``attempt``: on RQ's scheduler until ``due_at``, or on
    the front of the queue if that has come."""
    queue = get_queue(SCHEDULED_QUEUE, connection=get_redis())
    options = {"job_id": job_id(tweet_id, attempt), "result_ttl": 0, "failure_ttl": FAILURE_TTL}
    if due_at <= timezone.now():
        queue.enqueue_call(JOB, args=(tweet_id,), at_front=True, **options)
    else:
        queue.enqueue_at(due_at, JOB, tweet_id, **options)


def postpone(schedule: Schedule, *, retry_after: int, reason: str) -> bool:
    """Put a publication off after a full queue: due again in ``retry_after`` seconds plus a
    random share of them, as the next attempt. False if someone else moved it meanwhile."""
    delay = retry_after * (1 + random.random())
    due_at = timezone.now() + timedelta(seconds=delay)
    attempt = schedule.attempts + 1
    moved = Schedule.objects.filter(pk=schedule.pk, attempts=schedule.attempts).update(
        attempts=attempt, due_at=due_at, last_error=reason
    )
    if moved:
        arm(schedule.pk, attempt=attempt, due_at=due_at)
        logger.info("scheduled tweet %s: %s; trying again in %.1f s", schedule.pk, reason, delay)
    return bool(moved)


def _job_states(job_ids: Sequence[str]) -> list[str | None]:
    """Each job's RQ status (None: Redis does not have it), in one round trip."""
    with get_redis().pipeline(transaction=False) as pipe:
        for one in job_ids:
            pipe.hget(Job.key_for(one), "status")
        return [state.decode() if state else None for state in pipe.execute()]


def relay() -> int:
    """Arm again the publications whose job Redis lost, and take over late ones; returns how
    many it armed."""
    now = timezone.now()
    rows = list(
        Schedule.objects.filter(due_at__lte=now + LOOKAHEAD)
        .order_by("due_at")
        .values_list("tweet_id", "attempts", "due_at")[:BATCH]
    )
    if not rows:
        return 0
    states = _job_states([job_id(tweet_id, attempt) for tweet_id, attempt, _ in rows])
    armed = []
    for (tweet_id, attempt, due_at), state in zip(rows, states, strict=True):
        if due_at > now - LATE:
            if state is None:  # Redis lost it: the same attempt, armed again in time
                arm(tweet_id, attempt=attempt, due_at=due_at)
                armed.append(tweet_id)
            continue
        if state == "queued" or (state == "started" and due_at > now - STUCK):
            continue  # a worker has it, or will next
        # Past due and not on its way: its job is lost, failed, or still waiting for a scheduler
        # that is not running. A new attempt goes to the front (conditional: two relays at once
        # arm it once); an old job that runs later finds the tweet published and does nothing.
        moved = Schedule.objects.filter(pk=tweet_id, attempts=attempt).update(
            attempts=attempt + 1, due_at=now, last_error=f"attempt {attempt} late ({state or 'lost'}); queued again"
        )
        if moved:
            arm(tweet_id, attempt=attempt + 1, due_at=now)
            armed.append(tweet_id)
    if armed:
        logger.warning("armed again %d scheduled tweet(s): %s", len(armed), ", ".join(map(str, armed[:20])))
    return len(armed)


def disarm(tweet_id: int, *, attempt: int) -> None:
    """Take a cancelled tweet's job off RQ's scheduler (tidiness: run, it would find nothing)."""
    queue = get_queue(SCHEDULED_QUEUE, connection=get_redis())
    one = job_id(tweet_id, attempt)
    with get_redis().pipeline() as pipe:
        pipe.zrem(queue.scheduled_job_registry.key, one)
        pipe.lrem(queue.key, 0, one)
        pipe.delete(Job.key_for(one))
        pipe.execute()
