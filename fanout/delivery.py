"""Delivering a tweet into its author's followers' home timelines.

The job may run more than once for one tweet (a retry after a crash, the relay re-enqueueing a
row whose first enqueue it could not confirm): every step is idempotent. Timeline writes are
set insertions, and the counts are recomputed from zero by each run rather than incremented.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from fanout import presence, push, timelines
from fanout.models import Fanout
from timeline.models import Follow
from timeline.payloads import tweet_payload

logger = logging.getLogger(__name__)


def follower_id_batches(author_id: int, *, batch_size: int) -> Iterator[list[int]]:
    """The author's follower ids in ascending batches, by keyset (never OFFSET, which rescans)."""
    last = 0
    while True:
        batch = list(
            Follow.objects.filter(followee_id=author_id, follower_id__gt=last)
            .order_by("follower_id")
            .values_list("follower_id", flat=True)[:batch_size]
        )
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        last = batch[-1]


def deliver_tweet(*, tweet_id: int) -> None:
    try:
        fanout = Fanout.objects.select_related("tweet").get(pk=tweet_id)
    except Fanout.DoesNotExist:
        logger.info("tweet %s is gone; nothing to deliver", tweet_id)
        return
    if fanout.state == Fanout.State.DONE:
        return
    author_id = fanout.tweet.author_id
    recipients = Follow.objects.filter(followee_id=author_id).count()
    Fanout.objects.filter(pk=tweet_id).update(
        state=Fanout.State.RUNNING,
        attempts=F("attempts") + 1,
        started_at=timezone.now(),
        finished_at=None,
        recipients=recipients,
        delivered=0,
    )
    event = push.tweet_new(tweet_payload(fanout.tweet))
    delivered = 0
    pending: list[tuple[int, push.Event]] = []
    try:
        for batch in follower_id_batches(author_id, batch_size=settings.FANOUT_BATCH_SIZE):
            if pending:  # the previous batch was not the last: tell its followers and the author
                push.send(pending)
            timelines.add(tweet_id=tweet_id, user_ids=batch)
            delivered += len(batch)
            recipients = max(recipients, delivered)
            if delivered < recipients:  # the last batch's count is written with "done" below
                Fanout.objects.filter(pk=tweet_id).update(delivered=delivered, recipients=recipients)
            # Timelines first, then the push: a follower told of a tweet can always load it.
            progress = push.fanout_event(tweet_id=tweet_id, delivered=delivered, recipients=recipients, state="running")
            pending = [*((uid, event) for uid in presence.online_among(batch)), (author_id, progress)]
    except Exception as exc:
        Fanout.objects.filter(pk=tweet_id).update(
            state=Fanout.State.FAILED, last_error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now()
        )
        failed = push.fanout_event(tweet_id=tweet_id, delivered=delivered, recipients=recipients, state="failed")
        push.send([*pending, (author_id, failed)])
        raise
    # Follows made or removed while the job ran make the first count approximate; what was
    # delivered is the true number of recipients.
    Fanout.objects.filter(pk=tweet_id).update(
        state=Fanout.State.DONE, delivered=delivered, recipients=delivered, finished_at=timezone.now(), last_error=""
    )
    # The last batch's pushes go with "done", in one send: most fan-outs are a single batch.
    done = push.fanout_event(tweet_id=tweet_id, delivered=delivered, recipients=delivered, state="done")
    push.send([*pending[:-1], (author_id, done)])
