"""A deleted tweet leaves every timeline it reached, and every page that shows it.

The request deletes the tweet and writes a Retraction row in one transaction, then takes it
out of its author's timelines and pages at once (``timeline.services.tweet_delete``). The rest
is a job, like a fan-out: ``retract`` walks the author's followers a batch at a time, removes
the id from their timelines (one script per batch, per slot on a cluster), and tells those
online ``{"type": "tweet.deleted", "tweet_id"}``. It is idempotent, so running it again (the
relay, a retry) is harmless.

A fan-out of the same tweet may still be running when the delete commits. It cannot bring the
tweet back: its next lease renewal finds the row gone, and it then takes the tweet out of the
batch it had just written, before any push (``fanout.delivery.Run``). A reader never sees a
deleted tweet in any case: a page drops ids whose tweet is gone (``timeline.selectors``); this
job is what keeps timelines from holding such holes, and open pages in step.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone
from django_rq import get_queue

from fanout import presence, push, timelines
from fanout.admission import FAILURE_TTL, FANOUT_QUEUE, waiting_jobs
from fanout.connection import get_redis
from fanout.models import Retraction

logger = logging.getLogger(__name__)

# A job not finished this long after it was queued, and not on the queue, is queued again.
GRACE = timedelta(seconds=5)
BATCH = 500  # removals the relay queues again per round
# Followers per step of the job. Larger than a fan-out's batch: a removal has no lease to renew
# and no progress to report, so fewer, bigger steps (one Redis script of a few ms each) finish
# sooner; 10,000 followers' timelines are clean within about half a second here.
FOLLOWERS_PER_STEP = 5000


def job_id(tweet_id: int) -> str:
    return f"retract-{tweet_id}"


def enqueue(tweet_id: int) -> None:
    """Queue the removal at the front: a delete is cheap, and people expect it at once."""
    get_queue(FANOUT_QUEUE, connection=get_redis()).enqueue_call(
        "fanout.jobs.retract_tweet",
        args=(tweet_id,),
        job_id=job_id(tweet_id),
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        at_front=True,
    )


def retract(tweet_id: int) -> bool:
    """Remove a deleted tweet from its author's followers' timelines and open pages."""
    from fanout.delivery import follower_id_batches

    retraction = Retraction.objects.filter(pk=tweet_id, done_at=None).first()
    if retraction is None:
        return False  # done already (a second run), or no such delete
    author_id = retraction.author_id
    event = push.tweet_deleted(tweet_id)
    removed = timelines.retract(tweet_id=tweet_id, user_ids=[author_id], author_id=author_id)
    for batch in follower_id_batches(author_id, batch_size=FOLLOWERS_PER_STEP):
        removed += timelines.retract(tweet_id=tweet_id, user_ids=batch)
        push.send([(uid, event) for uid in presence.online_among(batch)])
    push.send([(author_id, event)])
    Retraction.objects.filter(pk=tweet_id).update(done_at=timezone.now(), attempts=retraction.attempts + 1)
    logger.info("deleted tweet %s removed from %d timelines", tweet_id, removed)
    return True


def relay() -> int:
    """Queue again the removals whose job was lost (Redis lost it, the request died before
    queueing it, the job failed); returns how many."""
    now = timezone.now()
    stale = list(
        Retraction.objects.filter(done_at=None, enqueued_at__lt=now - GRACE)
        .order_by("enqueued_at")
        .values_list("tweet_id", "enqueued_at")[:BATCH]
    )
    waiting = waiting_jobs([job_id(tweet_id) for tweet_id, _ in stale])
    queued = 0
    for tweet_id, enqueued_at in stale:
        if job_id(tweet_id) in waiting:
            continue
        # Conditional on what was seen: two relays at once queue it once.
        if Retraction.objects.filter(pk=tweet_id, enqueued_at=enqueued_at, done_at=None).update(enqueued_at=now):
            enqueue(tweet_id)
            queued += 1
    if queued:
        logger.warning("queued again %d tweet removal(s) whose job was lost", queued)
    return queued
