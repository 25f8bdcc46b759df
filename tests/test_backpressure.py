"""Back pressure: the queue cap, 503 with a computed Retry-After, the rate limit, and stats."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django_rq import get_queue
from redis import Redis
from rq import worker_registration

from fanout import admission, metrics
from fanout.admission import FANOUT_QUEUE, QUEUE_KEY, RESERVATIONS_KEY
from fanout.models import Fanout
from tests.conftest import post_json, session_cookie, start_live_app
from timeline.models import Tweet
from timeline.services import follow_create

pytestmark = pytest.mark.django_db(transaction=True)


def post(client, client_id=None, body="hello"):
    payload = {"body": body, "client_id": client_id or str(uuid.uuid4())}
    return client.post("/api/tweets", data=json.dumps(payload), content_type="application/json")


def test_over_the_cap_is_503_with_retry_after_and_nothing_is_made(make_user, client_for, settings):
    settings.FANOUT_QUEUE_CAP = 5
    client = client_for(make_user())
    answers = [post(client) for _ in range(8)]

    assert [a.status_code for a in answers] == [202] * 5 + [503] * 3
    for shed in answers[5:]:
        assert shed.json()["error"]["code"] == "overloaded"
        assert 1 <= int(shed["Retry-After"]) <= admission.RETRY_AFTER_MAX
    assert Tweet.objects.count() == Fanout.objects.count() == 5
    assert get_queue(FANOUT_QUEUE).count == 5


def test_a_shed_post_retried_with_the_same_client_id_makes_exactly_one_tweet(
    make_user, client_for, settings, run_worker
):
    settings.FANOUT_QUEUE_CAP = 1
    client = client_for(make_user())
    assert post(client).status_code == 202
    client_id = str(uuid.uuid4())
    assert post(client, client_id).status_code == 503

    run_worker()  # the queue drains
    retried = post(client, client_id)
    again = post(client, client_id)

    assert (retried.status_code, again.status_code) == (202, 200)


def test_an_accepted_post_retried_while_the_queue_is_full_or_the_author_limited_gets_its_tweet(
    make_user, client_for, settings
):
    """The retry of a post whose 202 was lost learns it was accepted, whatever the limits say."""
    settings.FANOUT_QUEUE_CAP, settings.TWEET_RATE_LIMIT = 1, 0
    client = client_for(make_user())
    client_id = str(uuid.uuid4())
    made = post(client, client_id)
    assert made.status_code == 202
    assert post(client).status_code == 503  # the queue is full now

    retried = post(client, client_id)
    settings.FANOUT_QUEUE_CAP, settings.TWEET_RATE_LIMIT = 0, 1
    assert [post(client).status_code for _ in range(2)] == [202, 429]  # the author is at the limit
    limited = post(client, client_id)

    assert (retried.status_code, limited.status_code) == (200, 200)
    assert retried.json()["tweet"] == limited.json()["tweet"] == made.json()["tweet"]
    assert Tweet.objects.filter(client_id=client_id).count() == 1

    assert Tweet.objects.filter(client_id=client_id).count() == 1


def test_cap_zero_turns_admission_off(make_user, client_for, settings):
    settings.FANOUT_QUEUE_CAP = 0
    client = client_for(make_user())
    assert all(post(client).status_code == 202 for _ in range(30))


def test_retry_after_is_depth_over_the_measured_drain_rate(redis):
    now = int(time.time())
    # 4 jobs a second left the queue over the whole window.
    for second in range(now - metrics.WINDOW_SECONDS, now):
        redis.set(metrics._key("started", second), 4)
    assert metrics.drain_rate() == pytest.approx(4.0)
    listening = worker_registration.WORKERS_BY_QUEUE_KEY % admission.FANOUT_QUEUE
    redis.sadd(listening, "rq:worker:one")  # as a running worker registers itself
    assert admission.retry_after(depth=20) == 5
    assert admission.retry_after(depth=1) == admission.RETRY_AFTER_MIN
    assert admission.retry_after(depth=10_000) == admission.RETRY_AFTER_MAX
    redis.srem(listening, "rq:worker:one")  # the workers stopped; the window still shows them
    assert admission.retry_after(depth=20) == admission.RETRY_AFTER_MAX


def test_retry_after_with_no_drain_is_the_maximum(redis):
    assert admission.retry_after(depth=3) == admission.RETRY_AFTER_MAX


def test_a_reservation_left_by_a_dead_process_expires(settings, redis, make_user):
    settings.FANOUT_QUEUE_CAP = 1
    user = make_user()
    admission.admit(author_id=user.pk)  # never enqueued nor released: the process "died"
    with pytest.raises(admission.Overloaded):
        admission.admit(author_id=user.pk)
    # Move the reservation's expiry into the past, as time would.
    token = redis.zrange(RESERVATIONS_KEY, 0, -1)[0]
    redis.zadd(RESERVATIONS_KEY, {token: time.time() - 1})
    ticket = admission.admit(author_id=user.pk)
    admission.release(ticket)
    assert redis.zcard(RESERVATIONS_KEY) == 0


def test_rate_limit_is_429_not_503_and_makes_nothing(make_user, client_for, settings):
    settings.TWEET_RATE_LIMIT = 3
    user = make_user()
    client = client_for(user)
    answers = [post(client) for _ in range(4)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    assert int(answers[-1]["Retry-After"]) >= 1
    assert Tweet.objects.count() == 3
    # Another author is not limited by this one.
    assert post(client_for(make_user())).status_code == 202


def test_stats_are_staff_only(make_user, client_for, client):
    assert client.get("/api/stats").status_code == 401
    assert client_for(make_user()).get("/api/stats").status_code == 403
    data = client_for(make_user(is_staff=True)).get("/api/stats").json()
    assert data["queue"]["cap"] >= 0 and data["queue"]["depth"] == 0
    assert set(data["rates"]) >= {"arrival", "drain", "shed"}
    assert len(data["history"]["t"]) == len(data["history"]["depth"]) == metrics.HISTORY_SECONDS


def test_stats_count_arrivals_and_shed(make_user, client_for, settings):
    settings.FANOUT_QUEUE_CAP = 2
    poster = client_for(make_user())
    for _ in range(5):
        post(poster)
    data = client_for(make_user(is_staff=True)).get("/api/stats").json()
    assert data["shed_total"] == 3
    assert data["shed_totals"] == {"queue": 3, "door": 0}  # the queue cap shed them, not the door
    assert data["queue"]["depth"] == 2


@pytest.mark.e2e
def test_admission_holds_under_concurrent_posters_on_two_web_processes(make_user, tmp_path, redis):
    """Many posters, two daphne processes, no worker: the depth never passes the cap,
    every 503 carries Retry-After and left nothing behind, and every 202 is delivered."""
    cap = 15
    redis_url = redis.connection_pool.connection_kwargs
    url = f"redis://127.0.0.1:{redis_url['port']}/2"
    db = Redis.from_url(url)
    db.flushdb()
    authors = [make_user() for _ in range(6)]
    reader = make_user()
    for author in authors:
        follow_create(follower=reader, followee=author)
    app = start_live_app(tmp_path, redis_url=url, webs=2, workers=0, FANOUT_QUEUE_CAP=str(cap), TWEET_RATE_LIMIT="0")
    try:
        cookies = [session_cookie(a) for a in authors]
        max_depth, stop = [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                max_depth[0] = max(max_depth[0], db.llen(QUEUE_KEY) + db.zcard(RESERVATIONS_KEY))

        def attempt(i: int):
            return post_json(
                f"{app.urls[i % 2]}/api/tweets",
                {"body": f"post {i}", "client_id": str(uuid.uuid4())},
                cookie=cookies[i % len(cookies)],
            )

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(attempt, range(60)))
        stop.set()
        sampler.join()

        accepted = [body["tweet"]["id"] for status, _, body in answers if status == 202]
        shed = [(headers, body) for status, headers, body in answers if status == 503]
        assert len(accepted) == cap and len(shed) == 60 - cap
        assert max_depth[0] <= cap
        assert db.llen(QUEUE_KEY) == cap
        for headers, body in shed:
            assert body["error"]["code"] == "overloaded" and int(headers["Retry-After"]) >= 1
        assert sorted(Tweet.objects.values_list("id", flat=True)) == sorted(accepted)

        worker = start_live_app(tmp_path / "w", redis_url=url, webs=1, workers=1)
        try:
            deadline = time.monotonic() + 30
            while Fanout.objects.filter(state="done").count() < cap:
                assert time.monotonic() < deadline, "accepted tweets were not all delivered in time"
                time.sleep(0.05)
        finally:
            worker.stop()
        assert set(Fanout.objects.values_list("delivered", flat=True)) == {1}
    finally:
        app.stop()


def test_no_javascript_compose_over_the_cap_is_503_page_keeping_the_text(make_user, client_for, settings):
    settings.FANOUT_QUEUE_CAP = 1
    client = client_for(make_user())
    assert post(client).status_code == 202
    client_id = str(uuid.uuid4())
    response = client.post("/tweets/new", {"body": "keep me", "client_id": client_id})
    assert response.status_code == 503 and int(response["Retry-After"]) >= 1
    html = response.content.decode()
    assert "nothing was posted" in html and "keep me" in html and client_id in html
    assert not Tweet.objects.filter(client_id=client_id).exists()


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0)


def held_app(release: asyncio.Event, reached: list[str]):
    """An ASGI app that notes each request's path, then answers 200 once ``release`` is set."""

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def ask(app, path: str) -> list[dict]:
    """GET ``path`` of ``app``: the messages it sent."""
    sent = []

    async def send(message):
        sent.append(message)

    await app({"type": "http", "path": path, "method": "GET"}, None, send)
    return sent


async def test_the_in_flight_limit_sheds_at_the_door_and_recovers(redis):
    """Past the limit, requests get 503 + Retry-After at once, without reaching Django."""
    from timeline.limits import InFlightLimit

    release, reached = asyncio.Event(), []

    limited = InFlightLimit(held_app(release, reached), limit=2)

    async def request(path: str) -> tuple[int, dict[bytes, bytes], bytes]:
        sent = await ask(limited, path)
        return sent[0]["status"], dict(sent[0].get("headers", [])), sent[1]["body"]

    busy = [asyncio.create_task(request("/api/tweets")) for _ in range(2)]
    await asyncio.wait_for(until(lambda: len(reached) == 2), timeout=5)
    status, headers, body = await request("/api/tweets")
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert json.loads(body)["error"]["code"] == "overloaded"
    assert reached == ["/api/tweets"] * 2  # the shed request never reached the app

    exempt = asyncio.create_task(request("/healthz"))  # how overload is seen: never shed
    await asyncio.wait_for(until(lambda: len(reached) == 3), timeout=5)
    release.set()
    assert [(await t)[0] for t in (*busy, exempt)] == [200, 200, 200]
    assert (await request("/api/tweets"))[0] == 200
    assert limited.in_flight == 0
    deadline = time.monotonic() + 5
    while int(redis.get("metrics:shed_door_total") or 0) != 1:  # counted for /ops/, as the door's
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_past_web_threads_requests_wait_in_the_event_loop_and_past_the_door_are_shed(redis):
    """Of the requests let in, only ``running`` reach Django at once; the rest wait without a
    thread and run in turn, and only past the door's limit is a request refused."""
    from timeline.limits import InFlightLimit

    release, reached = asyncio.Event(), []

    limited = InFlightLimit(held_app(release, reached), limit=4, running=2)

    async def request() -> int:
        return (await ask(limited, "/api/tweets"))[0]["status"]

    let_in = [asyncio.create_task(request()) for _ in range(4)]
    await asyncio.wait_for(until(lambda: limited.in_flight == 4 and len(reached) == 2), timeout=5)
    assert len(reached) == 2  # two run; two wait, let in but not in Django
    assert await request() == 503  # the door is full: waiting counts
    release.set()
    assert [await t for t in let_in] == [200] * 4
    assert len(reached) == 4 and limited.in_flight == 0


async def test_posts_over_the_cap_are_refused_in_the_event_loop(make_user, settings, redis):
    """A logged-in post asks for its queue slot before Django: over the cap it is refused there,
    with Django's answer, and Django never sees it; admitted, the view uses that slot rather than
    asking again, and whatever Django answers, the slot is not left held."""
    from asgiref.sync import sync_to_async
    from channels.testing import HttpCommunicator
    from django.core.asgi import get_asgi_application

    from timeline.limits import SLOT, QueueAdmission

    settings.FANOUT_QUEUE_CAP = 1
    reached = []

    async def django(scope, receive, send):
        reached.append(scope.get(SLOT))
        await get_asgi_application()(scope, receive, send)

    gate = QueueAdmission(django, remember=0)  # every post asks Redis (the memory: below)
    cookie = await sync_to_async(session_cookie)(await sync_to_async(make_user)())
    token = "t" * 32
    csrf = [(b"x-csrftoken", token.encode()), (b"content-type", b"application/json"), (b"host", b"127.0.0.1")]

    async def post(app=gate, *, body="hello", cookie=cookie) -> tuple[int, dict, dict]:
        payload = json.dumps({"body": body, "client_id": str(uuid.uuid4())}).encode()
        headers = [*csrf, (b"cookie", f"{cookie}; csrftoken={token}".encode())]
        answer = await HttpCommunicator(app, "POST", "/api/tweets", body=payload, headers=headers).get_response(10)
        return (
            answer["status"],
            {k.decode().lower(): v.decode() for k, v in answer["headers"]},
            json.loads(answer["body"]),
        )

    async def none_held() -> bool:  # the gate gives the slot back once Django's answer is sent
        await asyncio.wait_for(until(lambda: redis.zcard(RESERVATIONS_KEY) == 0), timeout=5)
        return True

    # Cap 1: the gate's slot is the queue's only one, so a view that asked for another is refused.
    assert (await post())[0] == 202
    assert reached[0] is not None and redis.llen(QUEUE_KEY) == 1 and await none_held()

    by_gate = await post()
    assert len(reached) == 1  # Django never saw it
    by_django = await post(get_asgi_application())  # Django's own refusal, for comparison
    assert by_gate[0] == by_django[0] == 503
    assert by_gate[2] == by_django[2] and by_gate[2]["error"]["code"] == "overloaded"
    assert by_gate[1]["retry-after"] == by_django[1]["retry-after"]
    assert by_gate[1]["x-content-type-options"] == "nosniff" and "set-cookie" not in by_gate[1]
    assert await sync_to_async(Tweet.objects.count)() == 1

    await sync_to_async(redis.delete)(QUEUE_KEY)  # the queue drains
    assert (await post(body=""))[0] == 400  # admitted by the gate, refused by Django: the slot is given back
    assert len(reached) == 2 and reached[1] is not None and await none_held()
    status, _, _ = await post(cookie="sessionid=not-a-session")  # nobody: Django says so, no slot taken
    assert status in (401, 403) and reached[2] is None and redis.zcard(RESERVATIONS_KEY) == 0

    settings.TWEET_RATE_LIMIT = 2  # the author's rate limit is still Django's (one post counted so far)
    settings.FANOUT_QUEUE_CAP = 10
    assert [(await post())[0] for _ in range(2)] == [202, 429]
    assert await none_held() and await sync_to_async(Tweet.objects.count)() == 2


async def test_after_a_refusal_posts_are_refused_without_asking_for_a_moment(make_user, settings, redis):
    from asgiref.sync import sync_to_async
    from channels.testing import HttpCommunicator
    from django.core.asgi import get_asgi_application

    from timeline.limits import QueueAdmission

    settings.FANOUT_QUEUE_CAP = 1
    gate = QueueAdmission(get_asgi_application(), remember=60)
    cookie = await sync_to_async(session_cookie)(await sync_to_async(make_user)())
    token = "t" * 32
    headers = [
        (b"host", b"127.0.0.1"),
        (b"cookie", f"{cookie}; csrftoken={token}".encode()),
        (b"x-csrftoken", token.encode()),
        (b"content-type", b"application/json"),
    ]

    async def post() -> int:
        body = json.dumps({"body": "hello", "client_id": str(uuid.uuid4())}).encode()
        answer = await HttpCommunicator(gate, "POST", "/api/tweets", body=body, headers=headers).get_response(10)
        return answer["status"]

    assert [await post(), await post()] == [202, 503]  # the queue's one place, then the cap
    await sync_to_async(redis.delete)(QUEUE_KEY)  # the queue drains...
    assert await post() == 503  # ...but this process still remembers it full
    gate.full = (0.0, 0)  # the moment has passed
    assert await post() == 202
    assert await sync_to_async(Tweet.objects.count)() == 2


def test_staff_levers_pause_the_workers_and_set_the_cap(make_user, client_for, run_worker, settings):
    from django_rq import get_queue
    from rq.suspension import is_suspended

    from fanout.admission import FANOUT_QUEUE
    from fanout.connection import get_redis

    settings.FANOUT_QUEUE_CAP = 100
    staff, author = make_user(is_staff=True), make_user()
    levers = client_for(staff)

    def put(body, client=levers):
        return client.put("/api/ops/controls", body, content_type="application/json")

    assert put({"cap": 1}, client_for(author)).status_code == 403
    for bad in ({}, {"cap": -1}, {"cap": 1.5}, {"cap": "2"}, {"cap": True}, {"workers_paused": "yes"}, [1]):
        answer = put(bad)
        assert answer.status_code == 400, (bad, answer.content)
    assert not is_suspended(get_redis()) and levers.get("/api/stats").json()["queue"]["cap"] == 100

    answer = put({"cap": 2, "workers_paused": True})
    assert answer.status_code == 200
    assert answer.json()["queue"]["cap"] == 2 and answer.json()["workers"]["paused"] is True
    posts = [post(client_for(author)) for _ in range(3)]
    assert [p.status_code for p in posts] == [202, 202, 503]  # the cap staff set, not the setting's
    run_worker()  # paused: it takes nothing
    assert get_queue(FANOUT_QUEUE).count == 2

    assert put({"workers_paused": False, "cap": None}).json()["queue"]["cap"] == 100
    run_worker()
    assert get_queue(FANOUT_QUEUE).count == 0
