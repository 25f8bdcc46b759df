"""RQ entry points. Each takes ids only (jobs are JSON-serialized) and makes one call.

The queue's own measurements (how long the job waited) are taken here, at the job boundary,
because only here is the job known to have come off the queue.
"""

from django.utils import timezone
from rq import get_current_job

from fanout import delivery, metrics, prometheus, retraction, trends
from timeline import services


def fanout_tweet(tweet_id: int) -> None:
    job = get_current_job()
    if job is not None and job.enqueued_at is not None:
        waited = (timezone.now() - job.enqueued_at).total_seconds()
        metrics.record_start(waited_seconds=waited)
        prometheus.QUEUE_WAIT.observe(max(waited, 0.0))
    delivery.deliver_tweet(tweet_id=tweet_id)


def retract_tweet(tweet_id: int) -> None:
    retraction.retract(tweet_id)


def publish_trends() -> None:
    trends.publish()


def publish_scheduled(tweet_id: int) -> None:
    services.tweet_publish_scheduled(tweet_id)


def wake() -> None:
    """Nothing. Staff's pause queues one per worker (services.ops_controls): an idle worker is
    blocked waiting on its queues, and RQ checks for a pause only between jobs, so without this
    it would take one more fan-out after the pause. It takes this instead, then sees the pause."""
