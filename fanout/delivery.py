"""Delivering a tweet into its author's followers' home timelines.

The outbox row owns the work (see ``fanout.models``). A run first *claims* the row, one
conditional UPDATE that succeeds only if no other live run holds its lease, so two runs of one
fan-out never work at once. It then walks the followers in batches, and after each batch's
timeline writes it renews the lease and saves the cursor in one UPDATE, guarded by its own
lease token: a run that finds its lease taken (it stalled past the lease, and the relay gave
the work to another worker) or its row gone (the tweet was deleted) stops there.

Every step is idempotent, because any run may be cut short and redone: timeline writes are set
insertions, and a run that takes over resumes after the saved cursor with the saved count.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from fanout import presence, push, timelines
from fanout.models import Fanout
from timeline.models import Follow
from timeline.payloads import tweet_payload

logger = logging.getLogger(__name__)

# A failed attempt is tried again after 2^(attempts-1) seconds, at most this long: a Redis or
# database outage of any length is waited out, and an accepted tweet is never given up on.
RETRY_BACKOFF_MAX_SECONDS = 30


class LeaseLost(Exception):
    """This run no longer owns the fan-out: another run took it over, or the tweet is gone."""


def follower_id_batches(author_id: int, *, after: int = 0, batch_size: int) -> Iterator[list[int]]:
    """The author's follower ids above ``after``, ascending, by keyset (never OFFSET, which rescans)."""
    last = after
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


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), RETRY_BACKOFF_MAX_SECONDS))


def lease_lapsed(now) -> Q:
    """Running rows whose lease has lapsed (or that never had one)."""
    return Q(state=Fanout.State.RUNNING) & (Q(lease_expires_at__lt=now) | Q(lease_expires_at=None))


def _lease_until():
    return timezone.now() + timedelta(seconds=settings.FANOUT_LEASE_SECONDS)


def claim(tweet_id: int) -> tuple[Fanout, str] | None:
    """Take the fan-out's lease, unless it is done or another run holds a live lease."""
    token = uuid.uuid4().hex
    now = timezone.now()
    claimed = (
        Fanout.objects.filter(pk=tweet_id)
        .filter(~Q(state__in=[Fanout.State.DONE, Fanout.State.RUNNING]) | lease_lapsed(now))
        .update(
            state=Fanout.State.RUNNING,
            lease_owner=token,
            lease_expires_at=now + timedelta(seconds=settings.FANOUT_LEASE_SECONDS),
            next_attempt_at=None,
            attempts=F("attempts") + 1,
            started_at=now,
            finished_at=None,
        )
    )
    if not claimed:
        return None
    return Fanout.objects.select_related("tweet__author").get(pk=tweet_id), token


def _owned(tweet_id: int, token: str):
    return Fanout.objects.filter(pk=tweet_id, lease_owner=token)


def deliver_tweet(*, tweet_id: int) -> None:
    claimed = claim(tweet_id)
    if claimed is None:
        row = Fanout.objects.filter(pk=tweet_id).values_list("state", flat=True).first()
        logger.info("fan-out of tweet %s not claimed (%s); nothing to do", tweet_id, row or "tweet gone")
        return
    fanout, token = claimed
    author_id = fanout.tweet.author_id
    delivered = fanout.delivered
    recipients = max(Follow.objects.filter(followee_id=author_id).count(), delivered)
    event = push.tweet_new(tweet_payload(fanout.tweet))
    batch_size = settings.FANOUT_BATCH_SIZE
    last_pushes: list[tuple[int, push.Event]] = []
    cursor = fanout.cursor
    try:
        for batch in follower_id_batches(author_id, after=cursor, batch_size=batch_size):
            timelines.add(tweet_id=tweet_id, user_ids=batch)
            delivered, cursor = delivered + len(batch), batch[-1]
            recipients = max(recipients, delivered)
            online = [(uid, event) for uid in presence.online_among(batch)]
            if len(batch) == batch_size:  # maybe not the last: save progress, renew, tell
                renewed = _owned(tweet_id, token).update(
                    cursor=cursor, delivered=delivered, recipients=recipients, lease_expires_at=_lease_until()
                )
                if not renewed:
                    raise LeaseLost
                # Timelines first, then the push: a follower told of a tweet can always load it.
                progress = push.fanout_event(
                    tweet_id=tweet_id, delivered=delivered, recipients=recipients, state="running"
                )
                push.send([*online, (author_id, progress)])
            else:  # the last batch: its pushes go out with "done", in one send
                last_pushes = online
    except LeaseLost:
        logger.warning(
            "fan-out of tweet %s stopped at %d: its lease was taken or the tweet deleted", tweet_id, delivered
        )
        return
    except Exception as exc:
        _record_failure(fanout, token, exc, delivered=delivered, recipients=recipients)
        raise
    # Follows made or removed while the job ran make the first count approximate; what was
    # delivered is the true number of recipients.
    finished = _owned(tweet_id, token).update(
        state=Fanout.State.DONE,
        cursor=cursor,
        delivered=delivered,
        recipients=delivered,
        finished_at=timezone.now(),
        last_error="",
        lease_owner="",
        lease_expires_at=None,
    )
    if not finished:
        logger.warning("fan-out of tweet %s finished after losing its lease (or its tweet)", tweet_id)
        return
    done = push.fanout_event(tweet_id=tweet_id, delivered=delivered, recipients=delivered, state="done")
    push.send([*last_pushes, (author_id, done)])


def _record_failure(fanout: Fanout, token: str, exc: Exception, *, delivered: int, recipients: int) -> None:
    """Mark the attempt failed, due again after a backoff; the relay queues the retry.

    If the database itself is what failed, this write fails too: the row then stays
    ``running`` until its lease lapses, and the relay retries it all the same.
    """
    tweet_id = fanout.pk
    try:
        _owned(tweet_id, token).update(
            state=Fanout.State.FAILED,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
            next_attempt_at=timezone.now() + retry_delay(fanout.attempts),
            lease_owner="",
            lease_expires_at=None,
        )
    except Exception:
        logger.warning("could not record the failure of fan-out %s; its lease will lapse", tweet_id, exc_info=True)
    failed = push.fanout_event(tweet_id=tweet_id, delivered=delivered, recipients=recipients, state="failed")
    push.send([(fanout.tweet.author_id, failed)])
