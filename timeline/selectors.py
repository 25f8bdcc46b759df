"""Reads. The home timeline comes from Redis, hydrated from the database in one query."""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, replace

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from redis.exceptions import RedisError

from fanout import timelines, watermark
from fanout.connection import get_timeline_redis
from fanout.models import Fanout
from timeline import tweet_cache
from timeline.models import Follow, Tweet

User = get_user_model()
logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class Page:
    tweets: list[Tweet]
    next_before: int | None
    # Home timelines only: every tweet with an id at or below it had reached this timeline when
    # the page was read (fanout.watermark), so a page that reconnects asks after=min(newest, it).
    watermark: int | None = None


def _home_ids_from_db(user_id: int, *, limit: int, before: int | None = None, after: int | None = None) -> list[int]:
    followees = Follow.objects.filter(follower_id=user_id).values("followee_id")
    query = Tweet.objects.filter(Q(author_id=user_id) | Q(author_id__in=followees))
    if before is not None:
        query = query.filter(id__lt=before)
    if after is not None:
        query = query.filter(id__gt=after)
    return list(query.order_by("-id").values_list("id", flat=True)[:limit])


def _hydrate(ids: list[int]) -> list[Tweet]:
    """The tweets of ``ids`` in that order (those that still exist): from the tweet cache, and
    from the database for the rest, which are then cached for the next read."""
    try:
        by_id = tweet_cache.get_many(ids)
    except RedisError:
        by_id = {}
    missing = [i for i in ids if i not in by_id]
    if missing:
        loaded = Tweet.objects.select_related("author").in_bulk(missing)
        by_id.update(loaded)
        with suppress(RedisError):
            tweet_cache.put(loaded.values())
    return [by_id[i] for i in ids if i in by_id]


def rebuild_home(user_id: int) -> None:
    # The sentinel goes in before the database is read: see fanout.timelines.
    timelines.begin_rebuild(user_id)
    timelines.finish_rebuild(user_id, _home_ids_from_db(user_id, limit=settings.TIMELINE_CAP))


def _rebuild_author(author_id: int) -> None:
    timelines.begin_author_rebuild(author_id)
    newest = Tweet.objects.filter(author_id=author_id).order_by("-id").values_list("id", flat=True)
    timelines.finish_author_rebuild(author_id, list(newest[: settings.TIMELINE_CAP]))


def merged_authors(user_id: int) -> list[int]:
    """The authors merged on read (fanout.timelines) that the user follows: cached in Redis until
    the user follows or unfollows someone, or another author starts being merged on read."""
    redis = get_timeline_redis()
    with redis.pipeline(transaction=False) as pipe:
        pipe.get(timelines.merged_key(user_id))
        pipe.get(timelines.READ_AUTHORS_VERSION_KEY)
        cached = timelines.merged_from(*pipe.execute())
    if cached is not None:
        return cached
    version, read_authors = timelines.read_authors(redis=redis)
    authors = (
        list(
            Follow.objects.filter(follower_id=user_id, followee_id__in=read_authors).values_list(
                "followee_id", flat=True
            )
        )
        if read_authors
        else []
    )
    timelines.remember_merged(user_id, version, authors, redis=redis)
    return authors


def home_timeline(
    *, user: AbstractBaseUser, limit: int = DEFAULT_PAGE_SIZE, before: int | None = None, after: int | None = None
) -> Page:
    """The newest ``limit`` tweets of the user and of those they follow, with after < id < before.

    Ids come from Redis when it answers, from the database (the source of truth) when it does
    not. An id whose tweet is gone (deleted while its fan-out ran, or before a delete reached
    this timeline) is dropped from Redis, and the page reads on past it rather than ending early.
    """
    # Read before the timeline, never after: a later W could cover a tweet this page lacks.
    low_watermark = _watermark()
    tweets: list[Tweet] = []
    upper = before
    while True:
        want = limit + 1 - len(tweets)  # one more than asked, to know whether there is a next page
        ids, authors = _home_ids(user.pk, limit=want, before=upper, after=after)
        found = _hydrate(ids)
        tweets += found
        if len(found) < len(ids):
            gone = set(ids) - {t.pk for t in found}
            with suppress(RedisError):
                timelines.remove(user.pk, gone, authors=authors)
        if len(ids) < want or len(tweets) > limit:
            return replace(_page(tweets, limit), watermark=low_watermark)
        upper = ids[-1]


def _watermark() -> int:
    try:
        return watermark.current()
    except RedisError:
        return watermark.compute()


def _home_ids(user_id: int, *, limit: int, before: int | None, after: int | None) -> tuple[list[int], list[int]]:
    """The page's tweet ids, and the merged-on-read authors they were merged from."""
    try:
        return _home_ids_from_redis(user_id, limit=limit, before=before, after=after)
    except RedisError as exc:
        logger.warning("home timeline of user %s read from the database: Redis is away (%s)", user_id, exc)
        return _home_ids_from_db(user_id, limit=limit, before=before, after=after), []


def _home_ids_from_redis(
    user_id: int, *, limit: int, before: int | None, after: int | None
) -> tuple[list[int], list[int]]:
    if not timelines.is_materialized(user_id):
        rebuild_home(user_id)
    authors = merged_authors(user_id)
    pages = _read_pages(user_id, authors, limit=limit, before=before, after=after)
    missing = [a for a, (_, size) in zip(authors, pages[1:], strict=True) if size < 0]
    if missing or pages[0][1] < 0:  # an author's timeline not in Redis (or the home one gone meanwhile)
        for author_id in missing:
            _rebuild_author(author_id)
        if pages[0][1] < 0:
            rebuild_home(user_id)
        pages = _read_pages(user_id, authors, limit=limit, before=before, after=after)
    ids = sorted({i for page_ids, _ in pages for i in page_ids}, reverse=True)[:limit]
    # A set at its cap that ran out within this page holds nothing older than its last id (or,
    # if it gave none, than ``before``): below that floor only the database knows, for every
    # source at once. Sets that gave a full page cannot leave a gap above the page's last id.
    floors = [
        page_ids[-1] if page_ids else before
        for page_ids, size in pages
        if size >= settings.TIMELINE_CAP and len(page_ids) < limit
    ]
    floors = [f for f in floors if f is not None]
    if floors and (len(ids) < limit or ids[-1] < max(floors)):
        ids = [i for i in ids if i >= max(floors)]
        older_than = ids[-1] if ids else before
        ids += _home_ids_from_db(user_id, limit=limit - len(ids), before=older_than, after=after)
    return ids, authors


def _read_pages(user_id: int, authors: list[int], **bounds) -> list[tuple[list[int], int]]:
    """One round trip: the home timeline's page, and each merged author timeline's."""
    with get_timeline_redis().pipeline(transaction=False) as pipe:
        timelines.queue_page(pipe, user_id, **bounds)
        for author_id in authors:
            timelines.queue_author_page(pipe, author_id, **bounds)
        results = pipe.execute()
    return [timelines.page_from(*results[i : i + 3]) for i in range(0, len(results), 3)]


def user_tweets(*, author: AbstractBaseUser, limit: int = DEFAULT_PAGE_SIZE, before: int | None = None) -> Page:
    query = Tweet.objects.filter(author=author).select_related("author")
    if before is not None:
        query = query.filter(id__lt=before)
    return _page(list(query.order_by("-id")[: limit + 1]), limit)


def tagged_tweets(*, tag: str, limit: int = DEFAULT_PAGE_SIZE, before: int | None = None) -> Page:
    """Tweets carrying ``tag`` (its compared form, timeline.text.tag_key), newest first."""
    query = Tweet.objects.filter(tags__tag=tag).select_related("author")
    if before is not None:
        query = query.filter(id__lt=before)
    return _page(list(query.order_by("-id")[: limit + 1]), limit)


def _page(tweets: list[Tweet], limit: int) -> Page:
    if len(tweets) > limit:
        tweets = tweets[:limit]
        return Page(tweets, next_before=tweets[-1].pk)
    return Page(tweets, next_before=None)


@dataclass(frozen=True)
class Profile:
    user: AbstractBaseUser
    followers: int
    following: int
    followed_by_me: bool


def user_profile(*, username: str, viewer: AbstractBaseUser | None) -> Profile:
    """Raises User.DoesNotExist for an unknown name."""
    user = User.objects.get(username=username)
    followed_by_me = bool(
        viewer is not None
        and viewer.is_authenticated
        and Follow.objects.filter(follower=viewer, followee=user).exists()
    )
    return Profile(
        user=user,
        followers=Follow.objects.filter(followee=user).count(),
        following=Follow.objects.filter(follower=user).count(),
        followed_by_me=followed_by_me,
    )


def tweet_with_fanout(*, tweet_id: int) -> Tweet:
    """Raises Tweet.DoesNotExist."""
    return Tweet.objects.select_related("author", "fanout").get(pk=tweet_id)


def scheduled_tweets(*, author) -> list[Tweet]:
    """The author's tweets waiting to be published, soonest first (for the author only)."""
    return list(Tweet.scheduled.filter(author=author).select_related("author").order_by("publish_at", "id"))


def with_own_deliveries(tweets: list[Tweet], user) -> list[Tweet]:
    """Give each of ``user``'s own tweets its outbox row as ``own_fanout``, in one query: the
    page shows one's own tweets' delivery ("delivered to 12 followers"), also after a reload."""
    own = [t.pk for t in tweets if t.author_id == user.pk] if user.is_authenticated else []
    rows = Fanout.objects.in_bulk(own) if own else {}
    for tweet in tweets:
        tweet.own_fanout = rows.get(tweet.pk)
    return tweets
