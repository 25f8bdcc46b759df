"""The one place that puts fan-out work on the queue."""

from __future__ import annotations

from django.db.models import Case, Value, When
from django.utils import timezone
from django_rq import get_queue
from rq import Retry

from fanout.models import Fanout

FANOUT_QUEUE = "fanout"
# Workers take jobs from these queues in this order.
WORKER_QUEUES = (FANOUT_QUEUE, "default")
# A job that raises is tried again after these pauses (seconds), then left failed for staff.
RETRY_INTERVALS = [1, 5, 30]


def job_id(tweet_id: int) -> str:
    return f"fanout-{tweet_id}"


def enqueue_fanout(tweet_id: int) -> None:
    """Queue the fan-out job of a committed tweet and mark its outbox row queued."""
    now = timezone.now()
    get_queue(FANOUT_QUEUE).enqueue(
        "fanout.jobs.fanout_tweet",
        tweet_id,
        job_id=job_id(tweet_id),
        retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
    )
    # The worker may already be running the job: only a pending row becomes queued.
    Fanout.objects.filter(pk=tweet_id).update(
        enqueued_at=now,
        state=Case(When(state=Fanout.State.PENDING, then=Value(Fanout.State.QUEUED)), default="state"),
    )
