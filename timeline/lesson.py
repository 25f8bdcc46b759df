"""The lesson page (/lesson/, demo mode only): one message posted two ways, side by side.

A visitor writes a message and the demo account ``@lesson`` posts it twice to its audience
(5,000 followers seeded by ``seed_demo``, as many as fan-out on write takes): once fanned out
*in the request*, so the answer waits for every follower's timeline, and once *through the
queue*, so the answer comes as soon as the tweet is saved and a worker delivers it. The page plots both answers, and
when the queued one reached every timeline, as they accumulate; staff can pause the workers
and set the cap (the same levers as /ops/) to watch the queue fill, the 503s begin, the
clients' retries spread out, and the queue drain.

The visitor's own rate limit is charged for both posts; the queued one also asks the queue
for a slot like any post, and is refused with 503 when the queue is full. The audience's home
timelines are materialized when the demo data is seeded, so a delivery writes each of them,
as it would for followers who read their timelines.
"""

from __future__ import annotations

import uuid
from enum import StrEnum

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.http import Http404

from fanout import timelines
from fanout.models import Fanout
from timeline import selectors, services
from timeline.models import Follow, Tweet

User = get_user_model()

ACCOUNT = "lesson"


class Way(StrEnum):
    INLINE = "inline"  # fanned out in the request
    QUEUED = "queued"  # through the queue, by a worker


WAYS = frozenset(way.value for way in Way)


def enabled() -> bool:
    return settings.DEMO_MODE


def account() -> AbstractBaseUser:
    """The account that posts the lesson's messages; 404 outside demo mode or before seeding."""
    if not enabled():
        raise Http404("The lesson page is part of the demo (SEED_DEMO=true).")
    user = User.objects.filter(username=ACCOUNT).first()
    if user is None:
        raise Http404(f"The lesson's demo account @{ACCOUNT} is made by seed_demo, which has not run.")
    return user


def audience_size(author: AbstractBaseUser) -> int:
    return Follow.objects.filter(followee=author).count()


def post(
    *, author: AbstractBaseUser, visitor: AbstractBaseUser, body: str, client_id: uuid.UUID, way: Way
) -> services.PostResult:
    """Post ``body`` as ``author`` (the lesson's ``account()``), fanned out in the request or
    through the queue, once per client_id."""
    if way == Way.INLINE:
        return services.tweet_create_fanned_out_now(author=author, body=body, client_id=client_id, charged_to=visitor)
    return services.tweet_create(author=author, body=body, client_id=client_id, charged_to=visitor)


def lesson_tweet(tweet_id: int) -> Tweet:
    """One of @lesson's tweets with its fan-out, or 404."""
    author = account()
    try:
        tweet = selectors.tweet_with_fanout(tweet_id=tweet_id)
    except Tweet.DoesNotExist:
        tweet = None
    if tweet is None or tweet.author_id != author.pk:
        raise Http404("No such tweet of the lesson's.")
    return tweet


def delivered_after_ms(fanout: Fanout) -> float | None:
    """How long after the tweet was saved it was in every follower's timeline (server clock)."""
    if fanout.state != Fanout.State.DONE or fanout.finished_at is None:
        return None
    return max(0.0, (fanout.finished_at - fanout.created_at).total_seconds() * 1000)


def prepare_audience(author: AbstractBaseUser) -> int:
    """Materialize the home timelines of @lesson's followers that are not (they expire when
    nobody reads them, and Redis may have lost them); returns how many were built."""
    follower_ids = list(Follow.objects.filter(followee=author).values_list("follower_id", flat=True))
    missing = timelines.not_materialized(follower_ids)  # one round trip: this runs at every start
    for follower_id in missing:
        selectors.rebuild_home(follower_id)
    return len(missing)
