"""Posting through the JSON API: validation, idempotency by client_id, the outbox and the queue."""

from __future__ import annotations

import json
import uuid
import zlib

import pytest
from django_rq import get_queue

from fanout import timelines
from fanout.admission import FANOUT_QUEUE, job_id
from fanout.models import Fanout
from timeline.models import Tweet

pytestmark = pytest.mark.django_db(transaction=True)


def post(client, payload, **extra):
    return client.post("/api/tweets", data=json.dumps(payload), content_type="application/json", **extra)


def test_a_post_does_not_look_its_author_up_again(make_user):
    """The author is the request's user: validating the tweet must not query for them (a query
    per post, the foreign key's existence check)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from timeline import services

    author = make_user()
    with CaptureQueriesContext(connection) as queries:
        services.tweet_create(author=author, body="hello", client_id=uuid.uuid4())
    assert Tweet.objects.filter(author=author).count() == 1
    assert not [q["sql"] for q in queries if '"auth_user"' in q["sql"]]


def test_post_creates_tweet_outbox_row_job_and_own_timeline_entry(make_user, client_for, redis):
    author = make_user()
    timelines.begin_rebuild(author.pk)  # a materialized (empty) timeline, as after a first read
    timelines.finish_rebuild(author.pk, [])
    client_id = str(uuid.uuid4())

    response = post(client_for(author), {"body": "  hello world  ", "client_id": client_id})

    assert response.status_code == 202
    data = response.json()
    tweet = Tweet.objects.get()
    assert data["tweet"] == {
        "id": tweet.pk,
        "author": {"id": author.pk, "username": author.username},
        "body": "hello world",
        "parts": [["text", "hello world"]],
        "created_at": data["tweet"]["created_at"],
        "client_id": client_id,
    }
    assert data["fanout"]["state"] == "queued"
    assert Fanout.objects.get(pk=tweet.pk).state == Fanout.State.QUEUED
    queue = get_queue(FANOUT_QUEUE)
    assert queue.job_ids == [job_id(tweet.pk)]
    # Jobs carry ids only, in JSON (RQ stores the call zlib-compressed).
    call = json.loads(zlib.decompress(redis.hget(f"rq:job:{job_id(tweet.pk)}", "data")))
    assert call == ["fanout.jobs.fanout_tweet", None, [tweet.pk], {}]
    ids, _ = timelines.page(author.pk, limit=10)
    assert ids == [tweet.pk]


def test_same_client_id_twice_returns_the_same_tweet(make_user, client_for):
    client = client_for(make_user())
    payload = {"body": "only once", "client_id": str(uuid.uuid4())}

    first = post(client, payload)
    second = post(client, payload)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["tweet"] == first.json()["tweet"]
    assert Tweet.objects.count() == 1
    assert get_queue(FANOUT_QUEUE).count == 1


def test_same_client_id_from_another_author_is_another_tweet(make_user, client_for):
    payload = {"body": "hi", "client_id": str(uuid.uuid4())}
    assert post(client_for(make_user()), payload).status_code == 202
    assert post(client_for(make_user()), payload).status_code == 202
    assert Tweet.objects.count() == 2


def test_body_of_exactly_280_characters_after_trimming_is_accepted(make_user, client_for):
    body = "é" * 280
    response = post(client_for(make_user()), {"body": f"\n {body} \t", "client_id": str(uuid.uuid4())})
    assert response.status_code == 202
    assert Tweet.objects.get().body == body


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"body": "", "client_id": "c0a8012e-7c1b-4a6a-9d2b-2f1d3c4b5a69"}, "body"),
        ({"body": "   \n\t ", "client_id": "c0a8012e-7c1b-4a6a-9d2b-2f1d3c4b5a69"}, "body"),
        ({"body": "x" * 281, "client_id": "c0a8012e-7c1b-4a6a-9d2b-2f1d3c4b5a69"}, "body"),
        ({"client_id": "c0a8012e-7c1b-4a6a-9d2b-2f1d3c4b5a69"}, "body"),
        ({"body": "hi"}, "client_id"),
        ({"body": "hi", "client_id": "not-a-uuid"}, "client_id"),
        ({"body": "hi", "client_id": ""}, "client_id"),
        ({"body": 42, "client_id": "c0a8012e-7c1b-4a6a-9d2b-2f1d3c4b5a69"}, "body"),
        ({"body": "hi", "client_id": ["c0a8012e-7c1b-4a6a-9d2b-2f1d3c4b5a69"]}, "client_id"),
    ],
)
def test_bad_tweets_are_400_with_the_field_named_and_change_nothing(make_user, client_for, payload, field, redis):
    response = post(client_for(make_user()), payload)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"] and error["fields"][field]
    assert Tweet.objects.count() == 0 and Fanout.objects.count() == 0
    assert get_queue(FANOUT_QUEUE).count == 0


@pytest.mark.parametrize(
    "body, content_type, status, code",
    [
        (b"{not json", "application/json", 400, "bad_json"),
        (b"[1, 2]", "application/json", 400, "bad_json"),
        (b"\xff\xfe", "application/json", 400, "bad_json"),
        (b"body=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_non_json_bodies_are_4xx(make_user, client_for, body, content_type, status, code):
    response = client_for(make_user()).post("/api/tweets", data=body, content_type=content_type)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert Tweet.objects.count() == 0


def test_anonymous_post_is_401_json_not_a_redirect(client):
    response = post(client, {"body": "hi", "client_id": str(uuid.uuid4())})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert Tweet.objects.count() == 0


def test_post_without_csrf_token_is_403_json(make_user, client_for):
    response = post(client_for(make_user(), enforce_csrf_checks=True), {"body": "hi", "client_id": str(uuid.uuid4())})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert Tweet.objects.count() == 0


def test_post_with_csrf_token_from_the_csrf_endpoint_is_accepted(make_user, client_for):
    client = client_for(make_user(), enforce_csrf_checks=True)
    assert client.get("/api/auth/csrf").status_code == 200
    token = client.cookies["csrftoken"].value
    response = post(client, {"body": "hi", "client_id": str(uuid.uuid4())}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 202


def test_wrong_method_is_405(make_user, client_for):
    response = client_for(make_user()).put("/api/tweets")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_tweet_detail_shows_fanout_and_404s_for_unknown(make_user, client_for):
    client = client_for(make_user())
    tweet_id = post(client, {"body": "hi", "client_id": str(uuid.uuid4())}).json()["tweet"]["id"]
    response = client.get(f"/api/tweets/{tweet_id}")
    assert response.status_code == 200
    assert response.json()["fanout"]["state"] == "queued"
    assert client.get(f"/api/tweets/{tweet_id + 1000}").status_code == 404


def test_no_javascript_compose_form_posts_and_redirects(make_user, client_for):
    client = client_for(make_user())
    client_id = str(uuid.uuid4())
    response = client.post("/tweets/new", {"body": "from a plain form", "client_id": client_id})
    assert response.status_code == 302 and response["Location"] == "/"
    # Pressing the button twice (the same hidden client_id) makes one tweet.
    client.post("/tweets/new", {"body": "from a plain form", "client_id": client_id})
    assert list(Tweet.objects.values_list("body", flat=True)) == ["from a plain form"]


def test_lost_enqueue_is_relayed_from_the_outbox(make_user, client_for, redis, run_worker):
    """A committed tweet whose enqueue never happened is queued by the relay, once."""
    from datetime import timedelta

    from fanout.relay import relay_fanouts

    author, follower = make_user(), make_user()
    from timeline.services import follow_create

    follow_create(follower=follower, followee=author)
    tweet = Tweet.objects.create(author=author, body="orphan", client_id=uuid.uuid4())
    Fanout.objects.create(tweet=tweet)  # committed, never enqueued: as if the process died here
    assert relay_fanouts() == 0  # too young: its request may still be about to enqueue it
    Fanout.objects.filter(pk=tweet.pk).update(
        created_at=Fanout.objects.get(pk=tweet.pk).created_at - timedelta(minutes=1)
    )

    assert relay_fanouts() == 1
    assert relay_fanouts() == 0
    run_worker()

    fanout = Fanout.objects.get(pk=tweet.pk)
    assert (fanout.state, fanout.delivered, fanout.recipients) == ("done", 1, 1)


def test_a_post_waiting_on_a_stuck_ordering_lock_answers_503_not_hang(make_user, client_for):
    """A session that died mid-post holds posting's lock until the server ends it (30 s);
    meanwhile posts give up after 2 s and answer 503, nothing made."""
    import time as clock

    import psycopg

    from tests.conftest import live_database_url, on_postgres
    from timeline.services import TWEET_ORDER_LOCK

    if not on_postgres():
        pytest.skip("the ordering lock is PostgreSQL's (SQLite commits one write at a time)")
    client = client_for(make_user())
    with psycopg.connect(live_database_url().replace("postgres://", "postgresql://")) as stuck:
        stuck.execute("BEGIN")
        stuck.execute("SELECT pg_advisory_xact_lock(%s)", [TWEET_ORDER_LOCK])  # and then nothing
        started = clock.monotonic()
        response = post(client, {"body": "blocked", "client_id": str(uuid.uuid4())})
        waited = clock.monotonic() - started
        stuck.execute("ROLLBACK")
    assert response.status_code == 503 and int(response["Retry-After"]) >= 1
    assert 1.5 < waited < 10
    assert not Tweet.objects.filter(body="blocked").exists()
