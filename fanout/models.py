"""The outbox: one Fanout row per tweet, written in the tweet's own transaction.

Because the row commits with the tweet, an accepted tweet always has a record of the work it
still needs, and the row, not Redis, owns that work until it is ``done``. Redis holds a fast,
losable copy (the job on the queue); the relay in ``fanout.relay`` re-queues any fan-out whose
work is not provably alive:

- ``pending``: committed, not yet queued (the request is about to, or its enqueue was lost);
- ``queued``: its job should be on the queue (the relay checks that it still is);
- ``running``: a worker holds the *lease* (``lease_owner`` until ``lease_expires_at``) and renews
  it with every batch; a worker that dies stops renewing, and the lease lapses in seconds;
- ``failed``: the last attempt raised (``last_error``); tried again at ``next_attempt_at``;
- ``done``: every follower's timeline has the tweet.

``cursor`` is the last follower id whose timeline is written, saved with each lease renewal,
so a fan-out taken over from a dead worker resumes where that worker stopped.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from timeline.models import Tweet


class Fanout(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "pending"
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    tweet = models.OneToOneField(Tweet, on_delete=models.CASCADE, primary_key=True, related_name="fanout")
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    recipients = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    lease_owner = models.CharField(max_length=32, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    cursor = models.BigIntegerField(default=0)

    class Mode(models.TextChoices):
        WRITE = "write", "written into followers' timelines"
        READ = "read", "merged into followers' timelines on read"

    mode = models.CharField(max_length=5, choices=Mode.choices, default=Mode.WRITE)
    # Followers who had a page open and were sent the tweet live (the rest read it on their
    # next visit, from their timeline or, for an author merged on read, from the author's).
    live = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"], name="fanout_state_age")]

    def __str__(self) -> str:
        return f"fan-out of tweet {self.tweet_id}: {self.state} {self.delivered}/{self.recipients}"

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class Retraction(models.Model):
    """A deleted tweet, and the outbox of its removal from the timelines it reached.

    Written in the transaction that deletes the tweet, so a delete that committed always has
    its removal recorded; the job (``fanout.delivery.retract``) marks it done, and the relay
    queues it again if its job was lost. It also answers a repeated delete: the author's is
    done already (204), anyone else's tweet stays unknown to them (404).
    """

    tweet_id = models.BigIntegerField(primary_key=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(default=timezone.now)
    done_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["done_at", "enqueued_at"], name="retraction_pending")]

    def __str__(self) -> str:
        return f"removal of deleted tweet {self.tweet_id}: {'done' if self.done_at else 'to do'}"


class Schedule(models.Model):
    """A scheduled tweet's wait to be published: the outbox of its publication.

    Written in the transaction that stores the scheduled tweet, and deleted (with that tweet,
    which the published one replaces) in the transaction that publishes it, or when it is
    cancelled. While it exists, a job for attempt ``attempts`` should be waiting on RQ's
    scheduler until ``due_at``, or on the queue past it; the relay (``fanout.scheduled.relay``)
    arms it again if Redis lost it, and takes over if RQ's scheduler is late. ``due_at`` starts
    at the tweet's ``publish_at`` and moves later only when publishing met a full queue.
    """

    tweet = models.OneToOneField(Tweet, on_delete=models.CASCADE, primary_key=True, related_name="schedule")
    due_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["due_at"], name="schedule_due")]

    def __str__(self) -> str:
        return f"tweet {self.tweet_id} due at {self.due_at:%Y-%m-%d %H:%M:%S} (attempt {self.attempts})"
