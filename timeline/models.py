"""Tweets and follows: the source of truth that the Redis timelines are derived from."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

TWEET_MAX_LENGTH = 280


class PublishedManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(publish_at=None)


class ScheduledManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().exclude(publish_at=None)


class Tweet(models.Model):
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tweets")
    body = models.CharField(max_length=TWEET_MAX_LENGTH)
    # Chosen by the client before the first attempt, so a retried POST finds the tweet it
    # already made instead of making a second one.
    client_id = models.UUIDField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Set while the tweet waits to be published (a scheduled tweet), null once it is out. A
    # scheduled tweet is not published by clearing this: it is replaced by a new row, whose id
    # is taken when it goes out, because timelines are in id order and a page fills its gaps
    # from the newest id it has (see timeline.services.tweet_publish_scheduled).
    publish_at = models.DateTimeField(null=True, blank=True)

    # Every read sees published tweets only; the few places that deal with scheduled ones
    # say so (``scheduled``, ``all_objects``).
    objects = PublishedManager()
    scheduled = ScheduledManager()
    all_objects = models.Manager()

    class Meta:
        base_manager_name = "all_objects"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["author", "client_id"], name="tweet_unique_client_id_per_author"),
            models.CheckConstraint(condition=~Q(body=""), name="tweet_body_not_empty"),
        ]
        indexes = [models.Index(fields=["author", "-id"], name="tweet_author_newest")]

    def __str__(self) -> str:
        return f"{self.author} #{self.pk}: {self.body[:40]}"


class Follow(models.Model):
    follower = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="following_set")
    followee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="follower_set")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["follower", "followee"], name="follow_unique_pair"),
            models.CheckConstraint(condition=~Q(follower=F("followee")), name="follow_not_self"),
        ]
        # Fan-out walks one author's followers in follower-id order (keyset pagination).
        indexes = [models.Index(fields=["followee", "follower"], name="follow_followers_by_id")]

    def __str__(self) -> str:
        return f"{self.follower} follows {self.followee}"


class TweetTag(models.Model):
    """A #tag a tweet carries, in its compared form (timeline.text.tag_key): the tag pages."""

    tweet = models.ForeignKey(Tweet, on_delete=models.CASCADE, related_name="tags")
    tag = models.CharField(max_length=400)  # a 100-character tag can grow under NFKC and casefold

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tag", "tweet"], name="tweettag_unique")]

    def __str__(self) -> str:
        return f"#{self.tag} on {self.tweet_id}"
