"""The lesson page (/lesson/, demo mode): one message posted two ways, fanned out in the request
and through the queue; a burst through the queue whose refused tries come back spread out; and
the queue's levers and figures for everyone to watch."""

from __future__ import annotations

import io
import json
import re
import uuid
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import Max, Min
from django.utils import timezone
from playwright.sync_api import expect
from redis import Redis
from rq import Worker

from fanout import admission, timelines
from fanout.models import Fanout
from tests.browser import TIMEOUT_MS
from tests.conftest import LIVE_REDIS_URL, wait_for
from timeline import lesson
from timeline.models import Follow, Tweet

User = get_user_model()
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def demo(settings):
    settings.DEMO_MODE = True
    return settings


def make_audience(size: int):
    """The lesson's account and ``size`` followers whose home timelines are materialized."""
    account = User.objects.create_user(username=lesson.ACCOUNT, password=None)
    followers = User.objects.bulk_create([User(username=f"pupil{i}") for i in range(size)])
    Follow.objects.bulk_create([Follow(follower=f, followee=account) for f in followers])
    assert lesson.prepare_audience(account) == size
    return account, list(User.objects.filter(username__startswith="pupil"))


def post(client, payload):
    return client.post("/api/lesson/posts", data=json.dumps(payload), content_type="application/json")


def lesson_post(client, way: str, body: str = "Two ways", client_id: str | None = None):
    return post(client, {"body": body, "client_id": client_id or str(uuid.uuid4()), "way": way})


def in_timeline(user, tweet_id: int) -> bool:
    return tweet_id in timelines.page(user.pk, limit=50)[0]


def test_the_lesson_is_there_in_demo_mode_only(make_user, client_for, settings):
    make_audience(2)
    client = client_for(make_user())
    settings.DEMO_MODE = False
    assert client.get("/lesson/").status_code == 404
    assert client.get("/api/lesson/stats").status_code == 404
    assert lesson_post(client, "inline").status_code == 404
    assert Tweet.objects.count() == 0
    settings.DEMO_MODE = True
    page = client.get("/lesson/")
    assert page.status_code == 200
    assert "to its 2 followers" in page.content.decode()
    assert 'href="/lesson/"' in client.get("/").content.decode()  # the header links to it


def test_before_seeding_the_lesson_says_what_is_missing(demo, make_user, client_for):
    client = client_for(make_user())
    response = lesson_post(client, "queued")
    assert response.status_code == 404
    assert "seed_demo" in response.json()["error"]["message"]
    assert "seed_demo" in client.get("/lesson/").content.decode()


def test_in_the_request_every_timeline_has_it_when_the_answer_comes(demo, make_user, client_for, store):
    account, followers = make_audience(30)

    response = lesson_post(client_for(make_user()), "inline")

    assert response.status_code == 202
    data = response.json()
    assert data["way"] == "inline"
    assert data["tweet"]["author"]["username"] == lesson.ACCOUNT
    assert data["fanout"]["state"] == "done"
    assert data["fanout"]["delivered"] == 30
    assert data["delivered_after_ms"] >= 0
    assert all(in_timeline(f, data["tweet"]["id"]) for f in followers)
    assert admission.depth() == 0  # nothing went on the queue


def test_through_the_queue_it_answers_first_and_a_worker_delivers(demo, make_user, client_for, run_worker, store):
    account, followers = make_audience(30)
    client = client_for(make_user())

    response = lesson_post(client, "queued")

    assert response.status_code == 202
    data = response.json()
    tweet_id = data["tweet"]["id"]
    assert data["way"] == "queued"
    assert data["fanout"]["state"] == "queued"
    assert data["delivered_after_ms"] is None
    assert admission.depth() == 1
    assert not any(in_timeline(f, tweet_id) for f in followers)
    run_worker()
    after = client.get(f"/api/lesson/posts/{tweet_id}").json()
    assert after["fanout"]["state"] == "done"
    assert after["fanout"]["delivered"] == 30
    assert after["delivered_after_ms"] >= 0
    assert all(in_timeline(f, tweet_id) for f in followers)


def test_a_full_queue_refuses_the_queued_way_but_nothing_stops_the_other(demo, make_user, client_for):
    make_audience(3)
    client = client_for(make_user())
    admission.set_cap(1)
    assert lesson_post(client, "queued").status_code == 202

    refused = lesson_post(client, "queued")
    assert refused.status_code == 503
    assert int(refused["Retry-After"]) >= 1
    assert Tweet.objects.count() == 1
    assert lesson_post(client, "inline").status_code == 202
    assert Tweet.objects.count() == 2


def test_the_same_client_id_posts_once_and_fans_out_once(demo, make_user, client_for):
    make_audience(3)
    client = client_for(make_user())
    client_id = str(uuid.uuid4())

    first = lesson_post(client, "inline", client_id=client_id)
    again = lesson_post(client, "inline", client_id=client_id)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["tweet"]["id"] == first.json()["tweet"]["id"]
    assert Tweet.objects.count() == 1
    assert Fanout.objects.get().attempts == 1


def test_the_rate_limit_charged_is_the_visitors(demo, make_user, client_for):
    demo.TWEET_RATE_LIMIT = 2
    make_audience(1)
    fast = client_for(make_user())
    assert [lesson_post(fast, way).status_code for way in ("inline", "queued", "inline")] == [202, 202, 429]
    assert lesson_post(client_for(make_user()), "queued").status_code == 202  # another visitor posts on


def test_a_failed_fan_out_in_the_request_is_still_delivered(demo, make_user, client_for, run_worker, monkeypatch):
    """The tweet is accepted once committed: a delivery that fails in the request is recorded
    and the outbox relay queues it again."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from fanout import delivery, relay

    account, followers = make_audience(5)
    real_add = timelines.add

    def redis_away(**kwargs):
        raise RedisConnectionError("timeline store away")

    monkeypatch.setattr(delivery.timelines, "add", redis_away)
    response = lesson_post(client_for(make_user()), "inline")
    assert response.status_code == 202
    assert response.json()["fanout"]["state"] == "failed"
    monkeypatch.setattr(delivery.timelines, "add", real_add)

    Fanout.objects.update(next_attempt_at=timezone.now())  # due now, not after its backoff
    assert relay.relay_fanouts() == 1
    run_worker()
    assert Fanout.objects.get().state == Fanout.State.DONE
    assert all(in_timeline(f, response.json()["tweet"]["id"]) for f in followers)


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"body": "hi", "client_id": str(uuid.uuid4())}, {"way"}),
        ({"body": "hi", "client_id": str(uuid.uuid4()), "way": "sideways"}, {"way"}),
        ({"body": "hi", "client_id": str(uuid.uuid4()), "way": ["inline"]}, {"way"}),
        ({"body": "   ", "client_id": "nope", "way": "later"}, {"body", "client_id", "way"}),
        ({"body": "x" * 281, "client_id": str(uuid.uuid4()), "way": "inline"}, {"body"}),
    ],
)
def test_bad_posts_are_400_naming_every_field_and_change_nothing(demo, make_user, client_for, payload, fields):
    make_audience(1)
    response = post(client_for(make_user()), payload)
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == fields
    assert Tweet.objects.count() == 0


def test_reads_are_for_the_lessons_tweets_and_logged_in_visitors(demo, make_user, client_for, client):
    make_audience(1)
    visitor = client_for(make_user())
    tweet_id = lesson_post(visitor, "inline").json()["tweet"]["id"]
    own = visitor.post(
        "/api/tweets",
        data=json.dumps({"body": "mine", "client_id": str(uuid.uuid4())}),
        content_type="application/json",
    ).json()["tweet"]["id"]

    assert visitor.get(f"/api/lesson/posts/{tweet_id}").status_code == 200
    assert visitor.get(f"/api/lesson/posts/{own}").status_code == 404
    assert visitor.get("/api/lesson/posts/999999").status_code == 404
    assert client.get(f"/api/lesson/posts/{tweet_id}").status_code == 401
    assert lesson_post(client, "inline").status_code == 401
    stats = visitor.get("/api/lesson/stats")
    assert stats.status_code == 200
    assert {"queue", "rates", "littles_law", "workers"} <= stats.json().keys()
    assert visitor.get("/api/stats").status_code == 403  # the staff's own figures stay staff's


def test_seed_demo_makes_the_lesson_account_and_builds_its_audience(demo, store):
    call_command("seed_demo", fans=3, stars_fans=1, lesson_audience=3, stdout=open("/dev/null", "w"))
    account = User.objects.get(username=lesson.ACCOUNT)
    assert not account.has_usable_password()
    pupils = list(User.objects.filter(following_set__followee=account))
    assert len(pupils) == 3
    assert all(timelines.is_materialized(p.pk) for p in pupils)
    # The next run builds none again.
    call_command("seed_demo", fans=3, stars_fans=1, lesson_audience=3, stdout=(out := io.StringIO()))
    assert "0 timelines built now" in out.getvalue()


def test_no_template_hides_a_comment_that_django_would_show():
    """Django's {# #} comment is one line only: one that runs over shows on the page as text."""
    templates = Path(__file__).resolve().parent.parent / "templates"
    for path in templates.rglob("*.html"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert "{#" not in line or "#}" in line, f"{path.name}:{number} opens a comment it does not close"


# -- in the browser ------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.e2e
def test_posting_two_ways_and_a_burst_with_the_workers_paused(browser, live_app, make_user, transactional_db):
    """As staff on /lesson/: both ways plotted; workers paused and the cap at 10, a burst of 20
    through the queue gets exactly 10 in and 10 refused; once resumed every refused post comes
    back after its Retry-After, spread out, and each of the 20 is posted once and delivered."""
    from tests.conftest import session_cookie

    account, followers = make_audience(40)
    staff = make_user(is_staff=True)
    live_redis = Redis.from_url(LIVE_REDIS_URL)
    context = browser.new_context(base_url=live_app.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    name, value = session_cookie(staff).split("=", 1)
    context.add_cookies([{"name": name, "value": value, "url": live_app.url}])
    page = context.new_page()
    errors: list = []
    page.on("pageerror", lambda error: errors.append(error))
    try:
        page.goto("/lesson/")
        root = page.locator("#lesson")
        expect(root).to_have_attribute("data-ready", "true")
        expect(page.locator("#ops-status-text")).to_have_text("Live: updating every second.")

        for n in (1, 2):
            page.get_by_role("button", name="Post both ways").click()
            expect(root).to_have_attribute("data-busy", "false")
            expect(root).to_have_attribute("data-samples", str(n))
        inline, queued = (page.locator(f'[data-way="{way}"]') for way in ("inline", "queued"))
        for way in (inline, queued):
            expect(way.locator('[data-field="answer"]')).to_have_text(re.compile(r"^\d[\d,]* ms$"))
            expect(way.locator('[data-field="delivered"]')).to_have_text(re.compile(r"^\d[\d,]* ms$"))
        expect(queued.locator('[data-field="state"]')).to_contain_text("Delivered to 40 timelines by a worker")
        for series in ("inline", "queuedAnswer", "queuedDelivered"):
            assert page.locator(f'#lesson-latency [data-series="{series}"]').count() >= 1
        assert Tweet.objects.filter(author=account).count() == 4

        page.locator("#ops-pause").click()
        expect(page.locator("#ops-pause")).to_have_text("Resume the workers")
        page.get_by_label("Queue cap").fill("10")
        page.get_by_role("button", name="Set", exact=True).click()
        expect(page.locator('[data-stat="depth"]')).to_have_text(re.compile(r"^0 / 10$"))
        # The pause woke the idle worker, which now waits, suspended, instead of taking a job.
        wait_for(
            lambda: all(w.get_state() == "suspended" for w in Worker.all(connection=live_redis)),
            timeout=10,
            what="the worker sees the pause",
        )

        page.get_by_role("button", name="Post 20 through the queue at once").click()
        expect(root).to_have_attribute("data-burst-refusals", "10")
        expect(root).to_have_attribute("data-burst-accepted", "10")
        burst = Tweet.objects.filter(author=account, body__contains=" of 20)")
        assert burst.count() == 10
        assert live_redis.llen(admission.QUEUE_KEY) == 10, "paused: the ten wait in the queue"
        page.locator("#ops-pause").click()
        expect(page.locator("#ops-pause")).to_have_text("Pause the workers")

        # Told to come back in 30 s (nothing was draining), plus up to as long again at random.
        expect(root).to_have_attribute("data-burst-accepted", "20", timeout=90_000)
        expect(page.locator("#lesson-burst-summary")).to_contain_text("20 of 20 accepted")
        bodies = list(burst.values_list("body", flat=True))
        assert sorted(bodies) == sorted(f"Hello from the lesson page ({i} of 20)" for i in range(1, 21))
        first = burst.order_by("id")[:10].aggregate(last=Max("created_at"))["last"]
        late = burst.order_by("-id")[:10]
        spread = Tweet.objects.filter(pk__in=[t.pk for t in late]).aggregate(a=Min("created_at"), b=Max("created_at"))
        assert (spread["a"] - first).total_seconds() >= 29, "a retry came before its Retry-After"
        assert (spread["b"] - spread["a"]).total_seconds() >= 2, "the retries came back together"
        wait_for(
            lambda: Fanout.objects.filter(tweet__in=burst, state=Fanout.State.DONE, delivered=40).count() == 20,
            timeout=30,
            what="every post of the burst delivered to the 40 followers",
        )
    finally:
        live_redis.delete("rq:suspended", admission.CAP_KEY)
        context.close()
    assert not errors, errors
