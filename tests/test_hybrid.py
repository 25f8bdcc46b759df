"""Big accounts merged on read: not fanned out on write, still in every follower's timeline.

Authors with more followers than FANOUT_ON_READ_THRESHOLD write a tweet once, into their own
author timeline, and each follower's read merges it in (fanout.timelines, timeline.selectors,
timeline.hot_reads). These tests hold the promises that make that safe: paging, gap fill and
deletes still right, live push to the followers who are online, and no tweet lost or doubled
when the threshold changes or an author crosses it.
"""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator

from fanout import delivery, timelines, watermark
from fanout.models import Fanout
from tests.conftest import every_page, session_cookie
from tests.test_reads import Django
from timeline import selectors
from timeline.asgi import application
from timeline.hot_reads import HotReads
from timeline.models import Tweet
from timeline.services import follow_create, tweet_create

pytestmark = pytest.mark.django_db(transaction=True)


def post(author, body="hello") -> Tweet:
    tweet = tweet_create(author=author, body=body, client_id=uuid.uuid4()).tweet
    delivery.deliver_tweet(tweet_id=tweet.pk)
    return tweet


def home_ids(user, **bounds) -> list[int]:
    return [t.pk for t in selectors.home_timeline(user=user, limit=100, **bounds).tweets]


@pytest.fixture
def star(make_user, settings):
    """An author with five followers, every home timeline in Redis; merged on read above 3."""
    settings.FANOUT_ON_READ_THRESHOLD = 3
    author = make_user()
    followers = [make_user() for _ in range(5)]
    for follower in followers:
        follow_create(follower=follower, followee=author)
        selectors.home_timeline(user=follower)
    return author, followers


def test_a_big_authors_tweet_is_written_once_and_read_by_every_follower(star, store):
    author, followers = star
    tweet = post(author, "to many")

    row = Fanout.objects.get(pk=tweet.pk)
    assert (row.state, row.mode, row.delivered, row.recipients) == ("done", "read", 5, 5)
    assert not any(store.zscore(timelines.key(f.pk), tweet.pk) for f in followers)  # no write per follower
    for follower in followers:
        assert home_ids(follower) == [tweet.pk]  # merged from the author's timeline, built on read

    second = post(author, "to many, again")
    assert store.zscore(timelines.author_key(author.pk), second.pk) == second.pk  # the one write
    assert not any(store.zscore(timelines.key(f.pk), second.pk) for f in followers)
    assert all(home_ids(f) == [second.pk, tweet.pk] for f in followers)


async def test_the_hot_path_merges_big_authors_too(star):
    author, followers = star
    tweet = await sync_to_async(post)(author, "merged in the event loop")
    await sync_to_async(watermark.publish)()
    reader = followers[0]
    cookie = await sync_to_async(session_cookie)(reader)
    django = Django()
    hot = HotReads(django)

    async def read() -> list[int]:
        headers = [(b"host", b"127.0.0.1"), (b"cookie", cookie.encode())]
        response = await HttpCommunicator(hot, "GET", "/api/timeline/home", headers=headers).get_response(timeout=10)
        return [t["id"] for t in json.loads(response["body"])["tweets"]]

    assert await read() == [tweet.pk]  # Django the first time: it learns what the reader merges
    calls = django.calls
    assert await read() == [tweet.pk]
    assert django.calls == calls  # then from Redis alone

    newer = await sync_to_async(post)(author, "and the next one")
    assert await read() == [newer.pk, tweet.pk] and django.calls == calls


async def test_online_followers_get_it_live_and_the_author_is_told_how(star):
    author, followers = star
    sockets = []
    for user in (author, followers[1], followers[3]):
        cookie = await sync_to_async(session_cookie)(user)
        headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie.encode())]
        socket = WebsocketCommunicator(application, "/ws/timeline/", headers=headers)
        assert (await socket.connect(timeout=5))[0]
        sockets.append(socket)
    author_ws, *online = sockets

    tweet = await sync_to_async(post)(author, "live, to those who are here")

    for socket in online:
        frame = await socket.receive_json_from(timeout=5)
        assert frame["type"] == "tweet.new" and frame["tweet"]["id"] == tweet.pk
    frames = [await author_ws.receive_json_from(timeout=5)]
    while frames[-1]["type"] != "fanout.done":
        frames.append(await author_ws.receive_json_from(timeout=5))
    done = frames[-1]
    assert (done["mode"], done["live"], done["delivered"], done["recipients"]) == ("read", 2, 5, 5)
    for socket in sockets:
        await socket.disconnect()


def test_changing_the_threshold_neither_loses_nor_doubles_a_tweet(star, settings):
    author, followers = star
    settings.FANOUT_ON_READ_THRESHOLD = 100
    first = post(author, "fanned out on write")
    settings.FANOUT_ON_READ_THRESHOLD = 3
    second = post(author, "merged on read")
    settings.FANOUT_ON_READ_THRESHOLD = 0  # off: everyone fanned out again
    third = post(author, "fanned out on write again")

    modes = dict(Fanout.objects.values_list("pk", "mode"))
    assert [modes[t.pk] for t in (first, second, third)] == ["write", "read", "write"]
    for follower in followers:
        assert home_ids(follower) == [third.pk, second.pk, first.pk]  # each once, in order


def test_an_author_who_becomes_big_reaches_readers_who_cached_what_they_merge(star, make_user, settings):
    """A reader's list of merged-on-read authors, cached before this author became one, goes stale."""
    author, followers = star
    settings.FANOUT_ON_READ_THRESHOLD = 0
    small = post(author, "while small")
    assert home_ids(followers[0]) == [small.pk]  # the reader's merge list is cached: nobody
    settings.FANOUT_ON_READ_THRESHOLD = 3
    big = post(author, "now big")
    assert home_ids(followers[0]) == [big.pk, small.pk]


def test_paging_gap_fill_and_deletes_stay_right_across_merged_sources(star, make_user, settings):
    author, followers = star
    reader = followers[0]
    friend = make_user()
    follow_create(follower=reader, followee=friend)  # a small author, fanned out on write
    tweets = []
    for i in range(6):
        tweets.append(post(author, f"big {i}"))
        tweets.append(post(friend, f"small {i}"))
    expected = [t.pk for t in reversed(tweets)]

    assert every_page(reader, limit=5) == expected
    assert home_ids(reader, after=tweets[7].pk) == expected[: expected.index(tweets[7].pk)]

    gone = tweets[4]  # the big author's
    Tweet.objects.filter(pk=gone.pk).delete()
    assert gone.pk not in home_ids(reader)
    assert home_ids(reader) == [i for i in expected if i != gone.pk]
