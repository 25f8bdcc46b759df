"""Hostile input and abuse: malformed input is a 4xx everywhere, auth cannot be flooded,
sockets follow their session, and the defaults are safe to deploy."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from fanout import timelines
from tests.conftest import get_json, post_json, session_cookie
from timeline.asgi import application
from timeline.limits import InFlightLimit
from timeline.models import Follow, Tweet

User = get_user_model()
pytestmark = pytest.mark.django_db(transaction=True)


def send(client, method, path, raw: str | bytes, content_type="application/json"):
    return getattr(client, method)(path, data=raw, content_type=content_type)


def error_code(response) -> str:
    return response.json()["error"]["code"]


# -- malformed input ----------------------------------------------------------------------------

NESTED = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("path", ["/api/tweets", "/api/auth/login", "/api/auth/signup"])
def test_deeply_nested_json_is_a_400(make_user, client_for, path):
    response = send(client_for(make_user()), "post", path, '{"body": ' + NESTED + "}")
    assert response.status_code == 400 and error_code(response) == "bad_json"
    assert not Tweet.objects.exists()


def test_a_body_larger_than_any_valid_request_is_a_413(make_user, client_for):
    body = json.dumps({"body": "x" * 100_000, "client_id": str(uuid.uuid4())})
    response = send(client_for(make_user()), "post", "/api/tweets", body)
    assert response.status_code == 413 and error_code(response) == "too_large"


def test_lone_surrogates_are_refused_before_any_quota_is_spent(make_user, client_for, redis):
    author = make_user()
    raw = '{"body": "half a pair: \\ud800", "client_id": "%s"}' % uuid.uuid4()
    response = send(client_for(author), "post", "/api/tweets", raw)
    assert response.status_code == 400 and "body" in response.json()["error"]["fields"]
    assert not Tweet.objects.exists()
    assert redis.get(f"ratelimit:tweets:{author.pk}") is None  # the rate limit was not touched
    for path in ("/api/auth/signup", "/api/auth/login"):
        for raw in (
            '{"username": "bad\\udfff", "password": "a-long-test-password"}',
            '{"username": "ok_name", "password": "\\ud800pw-long-enough"}',
        ):
            response = send(Client(), "post", path, raw)
            assert response.status_code == 400, (path, raw, response.content)
    assert not User.objects.filter(username__in=["ok_name"]).exists()


@pytest.mark.parametrize("body", ["\u200b\u200b\u200b", "\u3164", " \u2800 \u200d ", "\ufeff\u2060", "\u00a0\u202f"])
def test_a_tweet_of_only_invisible_characters_is_blank(make_user, client_for, body):
    payload = json.dumps({"body": body, "client_id": str(uuid.uuid4())})
    response = send(client_for(make_user()), "post", "/api/tweets", payload)
    assert response.status_code == 400 and "body" in response.json()["error"]["fields"]
    assert not Tweet.objects.exists()


@pytest.mark.parametrize(
    "path, status",
    [
        ("/api/timeline/home?before=" + "9" * 5000, 400),
        ("/api/timeline/home?limit=" + "1" * 5000, 400),
        ("/api/timeline/home?after=-" + "1" * 5000, 400),
        ("/api/timeline/home?after=", 400),
        ("/api/timeline/home?before=%D9%A1", 400),  # an Arabic-Indic digit one
        ("/api/timeline/home?before=9223372036854775808", 400),  # one past the largest id
        ("/?before=" + "9" * 5000, 400),
        ("/api/tweets/" + "9" * 5000, 404),
        ("/api/tweets/99999999999999999999", 404),
        ("/api/users/" + "a" * 151, 404),
    ],
)
def test_numbers_and_names_of_any_length_are_4xx(make_user, client_for, path, status):
    response = client_for(make_user()).get(path)
    assert response.status_code == status
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] in ("invalid", "not_found")


def test_the_mounted_rq_dashboard_cannot_be_made_to_fail(make_user, client_for):
    staff = client_for(make_user(is_staff=True))
    assert staff.get("/admin/rq/stats.json/\u00e9\u00e9/").status_code == 404  # no token route at all
    assert staff.get("/admin/rq/stats.json").status_code == 200
    anonymous = Client().get("/admin/rq/stats.json")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert client_for(make_user()).get("/admin/rq/").status_code == 302  # not staff


async def socket_for(user) -> WebsocketCommunicator:
    cookie = await sync_to_async(session_cookie)(user)
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie.encode())]
    communicator = WebsocketCommunicator(application, "/ws/timeline/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def closed_with(communicator: WebsocketCommunicator) -> int:
    message = await communicator.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return message["code"]


@pytest.mark.parametrize(
    "frame",
    ["[" * 300 + "]" * 300, '{"type": "ping", "x": ' + "[" * 100 + "]" * 100 + "}", "x" * 2000, "not json", "[]"],
)
async def test_socket_frames_that_cannot_be_handled_close_with_4400(make_user, frame):
    socket = await socket_for(await sync_to_async(make_user)())
    await socket.send_to(text_data=frame)
    assert await closed_with(socket) == 4400


async def test_a_binary_frame_closes_with_4400(make_user):
    socket = await socket_for(await sync_to_async(make_user)())
    await socket.send_to(bytes_data=b"\x00\x01")
    assert await closed_with(socket) == 4400


# -- usernames and passwords --------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    [".", "..", "\u0430lice", "a" * 31, "with space", "dot.ted", "at@sign", "", "emoji\U0001f600", "ALICE", "Alice"],
)
def test_usernames_are_letters_digits_and_underscores_unique_whatever_the_case(make_user, username):
    make_user("alice")
    response = send(
        Client(), "post", "/api/auth/signup", json.dumps({"username": username, "password": "correct horse battery"})
    )
    assert response.status_code == 400 and "username" in response.json()["error"]["fields"]
    assert User.objects.count() == 1


@pytest.mark.parametrize("username", ["a", "Bob_99", "x" * 30, "alice"])
def test_good_usernames_sign_up(username):
    response = send(
        Client(), "post", "/api/auth/signup", json.dumps({"username": username, "password": "correct horse battery"})
    )
    assert response.status_code == 201


def test_a_password_of_only_spaces_is_refused():
    payload = {"username": "spacey", "password": " " * 12}
    response = send(Client(), "post", "/api/auth/signup", json.dumps(payload))
    assert response.status_code == 400 and "password" in response.json()["error"]["fields"]


def test_admin_offers_no_bare_tweet_form_and_adds_follows_through_the_service(make_user, client_for, redis):
    staff = client_for(make_user(is_staff=True, is_superuser=True))
    assert staff.get("/admin/timeline/tweet/add/").status_code == 403
    reader, author = make_user(), make_user()
    timelines.begin_rebuild(reader.pk)  # a materialized timeline, which a new follow must refresh
    response = staff.post("/admin/timeline/follow/add/", {"follower": reader.pk, "followee": author.pk})
    assert response.status_code == 302
    assert Follow.objects.filter(follower=reader, followee=author).exists()
    assert not redis.exists(timelines.key(reader.pk))  # dropped, to be rebuilt with the new follow


# -- throttles ----------------------------------------------------------------------------------


def login(client, username, password):
    return send(client, "post", "/api/auth/login", json.dumps({"username": username, "password": password}))


def test_guessing_one_accounts_password_meets_a_429(make_user, settings):
    settings.THROTTLES = {**settings.THROTTLES, "login_failures_per_account": (3, 60)}
    make_user("victim", password="the-real-password")
    client = Client()
    assert [login(client, "victim", f"guess{i}").status_code for i in range(3)] == [400, 400, 400]
    refused = login(client, "VICTIM", "guess4")  # the count is per account, whatever the case
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 60
    assert login(Client(), "victim", "the-real-password").status_code == 429  # for the window only


def test_one_address_walking_through_accounts_meets_a_429(make_user, settings):
    settings.THROTTLES = {**settings.THROTTLES, "login_failures_per_address": (4, 300)}
    names = [make_user().username for _ in range(5)]
    answers = [login(Client(), name, "wrong-password").status_code for name in names]
    assert answers == [400, 400, 400, 400, 429]


def test_signups_from_one_address_meet_a_429(settings):
    settings.THROTTLES = {**settings.THROTTLES, "signups_per_address": (2, 3600)}
    payloads = [json.dumps({"username": f"new{i}", "password": "correct horse battery"}) for i in range(3)]
    answers = [send(Client(), "post", "/api/auth/signup", p).status_code for p in payloads]
    assert answers == [201, 201, 429]
    assert User.objects.count() == 2


def test_follow_toggles_meet_a_429(make_user, client_for, settings):
    settings.THROTTLES = {**settings.THROTTLES, "follow_toggles_per_user": (4, 60)}
    client, other = client_for(make_user()), make_user()
    answers = [
        getattr(client, method)(f"/api/users/{other.username}/follow").status_code
        for method in ("post", "delete", "post", "delete", "post")
    ]
    assert answers == [200, 204, 200, 204, 429]


@pytest.mark.e2e
def test_a_logged_in_reader_is_served_during_an_anonymous_login_flood(live_app, make_user):
    reader, victim = make_user(), make_user()
    cookie = session_cookie(reader)
    stop = threading.Event()
    flood_answers: list[int] = []

    def flood() -> None:
        while not stop.is_set():
            try:
                status, _, _ = post_json(
                    f"{live_app.url}/api/auth/login", {"username": victim.username, "password": "guess"}, cookie=""
                )
            except OSError:
                continue
            flood_answers.append(status)

    flooders = [threading.Thread(target=flood) for _ in range(30)]
    for thread in flooders:
        thread.start()
    try:
        while len(flood_answers) < 60:  # the flood is on
            time.sleep(0.05)
        reads = []
        for _ in range(20):
            started = time.monotonic()
            status, _, _ = get_json(f"{live_app.url}/api/timeline/home", cookie=cookie, timeout=30)
            reads.append((status, time.monotonic() - started))
    finally:
        stop.set()
        for thread in flooders:
            thread.join(timeout=30)
    assert [status for status, _ in reads] == [200] * 20
    assert set(flood_answers) <= {400, 429, 503} and {429, 503} & set(flood_answers)
    print(f"reader: slowest of 20 answers {max(t for _, t in reads):.2f} s during {len(flood_answers)} flood requests")


# -- the door -----------------------------------------------------------------------------------


async def test_the_doors_exemptions_are_exact_paths():
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    door = InFlightLimit(slow_app, limit=1)
    answers: dict[str, int] = {}

    async def request(path: str, method: str = "GET"):
        async def send(message):
            if message["type"] == "http.response.start":
                answers[path] = message["status"]

        await door({"type": "http", "path": path, "method": method}, None, send)

    busy = asyncio.create_task(request("/api/timeline/home"))
    await asyncio.sleep(0)
    await request("/healthzz")
    await request("/api/statsx")
    exempt = asyncio.create_task(request("/healthz"))
    login_task = asyncio.create_task(request("/api/auth/login", "POST"))  # its own share of the door
    await asyncio.sleep(0)
    assert answers == {"/healthzz": 503, "/api/statsx": 503}
    release.set()
    await asyncio.gather(busy, exempt, login_task)
    assert answers["/healthz"] == 200 and answers["/api/auth/login"] == 200


# -- sockets follow their session ---------------------------------------------------------------


async def test_logging_out_closes_that_sessions_sockets_only(make_user):
    user = await sync_to_async(make_user)()
    cookie = await sync_to_async(session_cookie)(user)
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie.encode())]
    this_session = WebsocketCommunicator(application, "/ws/timeline/", headers=headers)
    assert (await this_session.connect(timeout=5))[0]
    other_session = await socket_for(user)  # the same user, logged in elsewhere

    def log_out() -> int:
        client = Client()
        client.cookies["sessionid"] = cookie.split("=", 1)[1]
        return client.post("/api/auth/logout").status_code

    assert await sync_to_async(log_out)() == 200
    assert await closed_with(this_session) == 4401
    assert await other_session.receive_nothing(timeout=0.5)
    await other_session.disconnect()


async def test_a_socket_closes_when_its_session_expires(make_user):
    user = await sync_to_async(make_user)()
    cookie = await sync_to_async(session_cookie)(user)
    key = cookie.split("=", 1)[1]
    await sync_to_async(Session.objects.filter(pk=key).update)(expire_date=timezone.now() + timedelta(seconds=1))
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie.encode())]
    socket = WebsocketCommunicator(application, "/ws/timeline/", headers=headers)
    assert (await socket.connect(timeout=5))[0]
    assert await closed_with(socket) == 4401


async def test_a_user_holds_at_most_the_cap_of_sockets_and_the_oldest_go(make_user, settings):
    settings.SOCKETS_PER_USER = 2
    user = await sync_to_async(make_user)()
    first = await socket_for(user)
    second = await socket_for(user)
    third = await socket_for(user)
    assert await closed_with(first) == 4409
    assert await second.receive_nothing(timeout=0.3) and await third.receive_nothing(timeout=0.1)
    await second.disconnect()
    await third.disconnect()


# -- safe defaults ------------------------------------------------------------------------------


def test_pages_carry_a_content_security_policy_without_inline_scripts(make_user, client_for):
    response = client_for(make_user()).get("/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in response.content.decode()


def test_seeding_never_resets_a_password_someone_changed(redis):
    from django.core.management import call_command

    call_command("seed_demo", fans=2, lesson_audience=2, stdout=open("/dev/null", "w"))
    alice = User.objects.get(username="alice")
    alice.set_password("my-own-secret-now")
    alice.save()
    call_command("seed_demo", fans=2, lesson_audience=2, stdout=open("/dev/null", "w"))
    alice.refresh_from_db()
    assert alice.check_password("my-own-secret-now") and not alice.check_password("alice-demo-pass")
