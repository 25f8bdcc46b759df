"""Delivering a tweet into its author's followers' home timelines.

The outbox row owns the work (see ``fanout.models``). A run first *claims* the row, one
conditional UPDATE that succeeds only if no other live run holds its lease, so two runs of one
fan-out never work at once. It then walks the followers in batches, and after each batch's
timeline writes it renews the lease and saves the cursor in one UPDATE, guarded by its own
lease token: a run that finds its lease taken (it stalled past the lease, and the relay gave
the work to another worker) or its row gone (the tweet was deleted) stops there. A run stopped
by a delete also takes the tweet back out of the timelines it wrote since its last renewal,
which the delete's own removal (``fanout.retraction``) may have passed already.

Every step is idempotent, because any run may be cut short and redone: timeline writes are set
insertions, and a run that takes over resumes after the saved cursor with the saved count.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import F, Q
from django.db.models.functions import Lower
from django.utils import timezone

from fanout import presence, prometheus, push, timelines
from fanout.models import Fanout
from timeline import text
from timeline.models import Follow, Tweet
from timeline.payloads import tweet_payload

logger = logging.getLogger(__name__)
User = get_user_model()

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


def merged_on_read(followers: int) -> bool:
    """Whether an author with this many followers is merged on read rather than fanned out."""
    threshold = settings.FANOUT_ON_READ_THRESHOLD
    return threshold > 0 and followers > threshold


def deliver_tweet(*, tweet_id: int) -> None:
    claimed = claim(tweet_id)
    if claimed is None:
        row = Fanout.objects.filter(pk=tweet_id).values_list("state", flat=True).first()
        logger.info("fan-out of tweet %s not claimed (%s); nothing to do", tweet_id, row or "tweet gone")
        return
    fanout, token = claimed
    followers = Follow.objects.filter(followee_id=fanout.tweet.author_id).count()
    run = Run(fanout, token, followers)
    try:
        if merged_on_read(followers):
            run.on_read()
        else:
            run.on_write()
    except LeaseLost:
        logger.warning(
            "fan-out of tweet %s stopped at %d: its lease was taken or the tweet deleted", tweet_id, run.delivered
        )
        run.undo_if_deleted()
        return
    except Exception as exc:
        _record_failure(fanout, token, exc, delivered=run.delivered, recipients=run.recipients)
        raise
    run.finish()


class Run:
    """One run of a claimed fan-out: its progress, saved with every lease renewal."""

    def __init__(self, fanout: Fanout, token: str, followers: int) -> None:
        self.tweet_id, self.author_id, self.token = fanout.pk, fanout.tweet.author_id, token
        self.payload = tweet_payload(fanout.tweet)
        self.event = push.tweet_new(self.payload)
        self.delivered, self.cursor, self.live = fanout.delivered, fanout.cursor, 0
        self.recipients = max(followers, self.delivered)
        self.mode = Fanout.Mode.WRITE
        self.last_pushes: list[tuple[int, push.Event]] = []
        # The timelines written since the last renewal: what a delete may have to take back.
        self.unconfirmed: list[int] = []
        self.started = time.monotonic()

    def on_write(self) -> None:
        """Into every (materialized) follower's timeline, a batch at a time, then live to those online."""
        batch_size = settings.FANOUT_BATCH_SIZE
        for batch in follower_id_batches(self.author_id, after=self.cursor, batch_size=batch_size):
            self.unconfirmed = batch
            timelines.add(tweet_id=self.tweet_id, user_ids=batch)
            self.delivered, self.cursor = self.delivered + len(batch), batch[-1]
            self.recipients = max(self.recipients, self.delivered)
            online = presence.online_among(batch)
            self.live += len(online)
            self._step([(uid, self.event) for uid in online], last=len(batch) < batch_size)

    def on_read(self) -> None:
        """Into the author's own timeline, which each follower's read merges (fanout.timelines):
        one write, however many followers. Only the followers online now are sent it live, found
        among who is online (fanout.presence) rather than among all the followers."""
        self.mode = Fanout.Mode.READ
        timelines.mark_read_author(self.author_id)  # before the tweet: readers must merge it
        timelines.add_to_author(author_id=self.author_id, tweet_id=self.tweet_id)
        self.delivered = self.recipients  # every follower reads it from now on
        for online in presence.online_batches(settings.FANOUT_BATCH_SIZE):
            followers = list(
                Follow.objects.filter(followee_id=self.author_id, follower_id__in=online).values_list(
                    "follower_id", flat=True
                )
            )
            self.live += len(followers)
            self._step([(uid, self.event) for uid in followers], last=False)

    def _step(self, pushes: list[tuple[int, push.Event]], *, last: bool) -> None:
        if last:  # its pushes go out with "done", in one send
            self.last_pushes = pushes
            return
        renewed = _owned(self.tweet_id, self.token).update(
            cursor=self.cursor,
            delivered=self.delivered,
            recipients=self.recipients,
            live=self.live,
            mode=self.mode,
            lease_expires_at=_lease_until(),
        )
        if not renewed:
            raise LeaseLost
        self.unconfirmed = []
        # Timelines first, then the push: a follower told of a tweet can always load it.
        push.send([*pushes, (self.author_id, self._event("running"))])

    def finish(self) -> None:
        # Follows made or removed while the job ran make the first count approximate; what was
        # delivered is the true number of recipients.
        if self.mode == Fanout.Mode.WRITE:
            self.recipients = self.delivered
        finished = _owned(self.tweet_id, self.token).update(
            state=Fanout.State.DONE,
            cursor=self.cursor,
            delivered=self.delivered,
            recipients=self.recipients,
            live=self.live,
            mode=self.mode,
            finished_at=timezone.now(),
            last_error="",
            lease_owner="",
            lease_expires_at=None,
        )
        if not finished:
            logger.warning("fan-out of tweet %s finished after losing its lease (or its tweet)", self.tweet_id)
            self.undo_if_deleted()
            return
        push.send([*self.last_pushes, (self.author_id, self._event("done"))])
        self._tell_the_mentioned()
        prometheus.FANOUTS.labels(self.mode).inc()
        prometheus.DELIVERIES.labels(self.mode).inc(self.delivered)
        prometheus.FANOUT_SECONDS.labels(self.mode).observe(time.monotonic() - self.started)

    def _tell_the_mentioned(self) -> None:
        """mention.new to each user the tweet mentions (but its author), once it is delivered."""
        names = [name.lower() for name in text.mentions(self.payload["body"])]
        if not names:
            return
        mentioned = (
            User.objects.annotate(name=Lower("username"))
            .filter(name__in=names)
            .exclude(pk=self.author_id)
            .values_list("pk", flat=True)
        )
        push.send([(user_id, push.mention_new(self.payload)) for user_id in mentioned])

    def undo_if_deleted(self) -> None:
        """After a lost lease: if the tweet was deleted, take it out of what this run wrote
        since its last renewal (on read: the author's timeline). No push was sent for it."""
        if Tweet.objects.filter(pk=self.tweet_id).exists():
            return  # another run took over: the writes are its too
        author_id = self.author_id if self.mode == Fanout.Mode.READ else None
        timelines.retract(tweet_id=self.tweet_id, user_ids=self.unconfirmed, author_id=author_id)

    def _event(self, state: str) -> push.Event:
        return push.fanout_event(
            tweet_id=self.tweet_id,
            delivered=self.delivered,
            recipients=self.recipients,
            state=state,
            mode=self.mode,
            live=self.live,
        )


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
