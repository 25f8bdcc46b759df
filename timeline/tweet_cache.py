"""Tweets as JSON, kept in Redis by id, so that a page of a home timeline needs no SQL.

Each entry is ``payloads.tweet_payload`` already encoded (``tweet:<id>`` -> bytes): a page is
one MGET, and its body is the entries joined, never decoded and encoded again. Entries are
written when a tweet is posted and when a read finds them missing (filled from the database),
and dropped when a tweet is deleted. Tweets are never edited; the one thing an entry repeats
from elsewhere is the author's username, which staff can change in the admin, so entries also
expire after ``TTL_SECONDS`` and are rebuilt from the database: a rename shows within that.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.contrib.auth import get_user_model
from redis import Redis

from fanout.connection import get_async_redis, get_redis
from timeline.models import Tweet
from timeline.payloads import tweet_payload

TTL_SECONDS = 24 * 3600


def key(tweet_id: int) -> str:
    return f"tweet:2:{tweet_id}"  # 2: the entries that carry "parts"


def encode(tweet: Tweet) -> bytes:
    return json.dumps(tweet_payload(tweet), separators=(",", ":"), ensure_ascii=False).encode()


def decode(entry: bytes) -> Tweet:
    """An unsaved Tweet (author attached) rebuilt from an entry, for templates and payloads."""
    data = json.loads(entry)
    author = get_user_model()(pk=data["author"]["id"], username=data["author"]["username"])
    created_at = datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
    tweet = Tweet(pk=data["id"], author=author, body=data["body"], created_at=created_at, client_id=data["client_id"])
    tweet._state.adding = False  # it exists; it is only not loaded from the database
    return tweet


def get_many(tweet_ids: Sequence[int], *, redis: Redis | None = None) -> dict[int, Tweet]:
    """The cached tweets among ``tweet_ids``, by id, in one round trip."""
    if not tweet_ids:
        return {}
    entries = (redis or get_redis()).mget([key(i) for i in tweet_ids])
    return {i: decode(entry) for i, entry in zip(tweet_ids, entries, strict=True) if entry is not None}


def put(tweets: Iterable[Tweet], *, redis: Redis | None = None) -> None:
    with (redis or get_redis()).pipeline(transaction=False) as pipe:
        for tweet in tweets:
            pipe.set(key(tweet.pk), encode(tweet), ex=TTL_SECONDS)
        pipe.execute()


def drop(tweet_ids: Iterable[int], *, redis: Redis | None = None) -> None:
    keys = [key(i) for i in tweet_ids]
    if keys:
        (redis or get_redis()).delete(*keys)


async def get_many_async(tweet_ids: Sequence[int]) -> list[bytes | None]:
    """The encoded tweets, None where an entry is missing, in one round trip."""
    if not tweet_ids:
        return []
    return await get_async_redis().mget([key(i) for i in tweet_ids])
