"""The home timeline from Redis alone (timeline.hot_reads), and the caches it reads.

Each test sends real ASGI requests through HotReads in front of Django's own ASGI handler and
notes which of the two answered: the hot path must answer exactly what Django would, and hand
everything it cannot vouch for to Django. No cached read may serve a tweet after it is gone or
a session after it ended, nor miss a tweet after it was delivered.
"""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.core.asgi import get_asgi_application
from django.test import Client

from fanout import delivery, watermark
from tests.conftest import session_cookie
from timeline import selectors, tweet_cache
from timeline.hot_reads import HotReads
from timeline.models import Tweet
from timeline.services import follow_create, follow_delete, tweet_create

pytestmark = pytest.mark.django_db(transaction=True)


class Django:
    """Django's ASGI app, counting the requests that reach it."""

    def __init__(self) -> None:
        self.app = get_asgi_application()
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture
def django_app():
    return Django()


async def get(app, cookie: str | None, query: str = "") -> tuple[int, dict]:
    headers = [(b"host", b"127.0.0.1")] + ([(b"cookie", cookie.encode())] if cookie else [])
    path = "/api/timeline/home" + (f"?{query}" if query else "")
    response = await HttpCommunicator(app, "GET", path, headers=headers).get_response(timeout=10)
    return response["status"], json.loads(response["body"])


def post(author, body="hello"):
    return tweet_create(author=author, body=body, client_id=uuid.uuid4()).tweet


@pytest.fixture
def reader_world(make_user):
    reader, author = make_user(), make_user()
    follow_create(follower=reader, followee=author)
    tweets = [post(author, f"t{i}") for i in range(5)]
    for tweet in tweets:
        delivery.deliver_tweet(tweet_id=tweet.pk)
    watermark.publish()
    return reader, author, tweets


async def test_a_warm_timeline_is_answered_from_redis_exactly_as_django_would(reader_world, django_app):
    reader, _, tweets = reader_world
    cookie = await sync_to_async(session_cookie)(reader)
    hot = HotReads(django_app)

    first = await get(hot, cookie)  # cold: Django answers, and fills the copies
    assert django_app.calls == 1
    second = await get(hot, cookie, "limit=3")
    third = await get(hot, cookie)

    assert django_app.calls == 1  # both answered without Django
    assert third == first
    assert second[0] == 200 and [t["id"] for t in second[1]["tweets"]] == [t.pk for t in tweets[::-1][:3]]
    assert second[1]["next_before"] == tweets[2].pk

    def django_answers() -> dict:
        direct = Client(HTTP_HOST="127.0.0.1")
        direct.force_login(reader)
        return direct.get("/api/timeline/home?limit=3").json()

    assert second[1] == await sync_to_async(django_answers)()


async def test_anything_the_hot_path_cannot_vouch_for_goes_to_django(reader_world, django_app, make_user):
    reader, author, tweets = reader_world
    cookie = await sync_to_async(session_cookie)(reader)
    hot = HotReads(django_app)
    await get(hot, cookie)
    calls = django_app.calls

    assert (await get(hot, None))[0] == 401 and django_app.calls == calls  # no session at all: at once
    for query in ("limit=0", "before=x", "after=", "limit=1&extra=1"):
        status, body = await get(hot, cookie, query)
        assert status == 400 or query == "limit=1&extra=1"
        calls += 1
        assert django_app.calls == calls, query  # Django says what is wrong

    await sync_to_async(tweet_cache.drop)([tweets[-1].pk])  # a tweet not cached
    assert (await get(hot, cookie))[0] == 200
    calls += 1
    assert django_app.calls == calls
    assert (await get(hot, cookie))[0] == 200 and django_app.calls == calls  # ...and cached again


async def test_no_cached_read_serves_a_deleted_tweet_or_misses_a_delivered_one(reader_world, django_app):
    reader, author, tweets = reader_world
    cookie = await sync_to_async(session_cookie)(reader)
    hot = HotReads(django_app)
    await get(hot, cookie)

    await sync_to_async(Tweet.objects.filter(pk=tweets[-1].pk).delete)()  # its id stays in the timeline
    status, body = await get(hot, cookie)
    assert status == 200 and tweets[-1].pk not in [t["id"] for t in body["tweets"]]

    new = await sync_to_async(post)(author, "just delivered")
    await sync_to_async(delivery.deliver_tweet)(tweet_id=new.pk)
    calls = django_app.calls
    status, body = await get(hot, cookie)
    assert status == 200 and body["tweets"][0]["id"] == new.pk
    assert django_app.calls == calls  # cached when it was posted: no trip to the database


async def test_a_follow_or_unfollow_shows_at_once(reader_world, django_app, make_user):
    reader, author, tweets = reader_world
    other = await sync_to_async(make_user)()
    theirs = await sync_to_async(post)(other, "from someone new")
    cookie = await sync_to_async(session_cookie)(reader)
    hot = HotReads(django_app)
    await get(hot, cookie)

    await sync_to_async(follow_create)(follower=reader, followee=other)
    assert theirs.pk in [t["id"] for t in (await get(hot, cookie))[1]["tweets"]]
    await sync_to_async(follow_delete)(follower=reader, followee=author)
    assert [t["id"] for t in (await get(hot, cookie))[1]["tweets"]] == [theirs.pk]


async def test_an_ended_session_or_a_changed_user_is_never_served(reader_world, django_app):
    reader, _, _ = reader_world
    cookie = await sync_to_async(session_cookie)(reader)
    hot = HotReads(django_app)
    assert (await get(hot, cookie))[0] == 200

    def change_password() -> None:
        reader.set_password("a-new-password-now")
        reader.save()

    await sync_to_async(change_password)()  # every session of the old password ends
    assert (await get(hot, cookie))[0] == 401

    other_cookie = await sync_to_async(session_cookie)(reader)
    assert (await get(hot, other_cookie))[0] == 200

    def log_out() -> None:
        client = Client(HTTP_HOST="127.0.0.1")
        client.cookies["sessionid"] = other_cookie.split("=", 1)[1]
        client.post("/api/auth/logout")

    await sync_to_async(log_out)()
    assert (await get(hot, other_cookie))[0] == 401


def test_the_html_page_and_the_api_use_the_same_tweet_json(make_user):
    author = make_user()
    tweet = post(author, "<b>one shape</b>")
    cached = json.loads(tweet_cache.encode(Tweet.objects.select_related("author").get(pk=tweet.pk)))
    page = selectors.home_timeline(user=author)
    from timeline.payloads import tweet_payload

    assert cached == tweet_payload(page.tweets[0])
