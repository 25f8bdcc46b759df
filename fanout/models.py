"""The outbox: one Fanout row per tweet, written in the tweet's own transaction.

Because the row commits with the tweet, an accepted tweet always has a record of the work it
still needs. If the enqueue after the commit is lost (a crash, Redis gone for a moment), the
relay in ``fanout.relay`` finds the row still ``pending`` and enqueues it again.
"""

from __future__ import annotations

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

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"], name="fanout_state_age")]

    def __str__(self) -> str:
        return f"fan-out of tweet {self.tweet_id}: {self.state} {self.delivered}/{self.recipients}"

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None
