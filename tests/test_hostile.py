"""Hostile input and abuse: malformed input is a 4xx everywhere, auth cannot be flooded,
sockets follow their session, and the defaults are safe to deploy."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from fanout import timelines
from tests.conftest import get_json, session_cookie
from tests.test_sessions import closed_with, open_socket
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
    return await open_socket(await sync_to_async(session_cookie)(user))


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


# -- sockets ------------------------------------------------------------------------------------


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


# -- request bodies at the door -------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_huge_body(url: str, path: str, *, chunked: bool, size: int = 100 * 1024 * 1024) -> bytes:
    """Send a ``size``-byte body as fast as the server takes it; return what it answered."""
    host, port = url.removeprefix("http://").split(":")
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
    piece = b"x" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s\r\n\r\n"
            % (path.encode(), framing)
        )
        try:
            while sent < size:
                connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
        except OSError:  # refused: the server closed its end
            pass
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert sent < size, "the whole body was taken in"
    return answer


@pytest.mark.e2e
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/api/auth/login", "/healthz"])
def test_a_huge_body_is_refused_with_413_before_it_is_read(live_app, path, chunked):
    pid = live_app.processes["daphne0"].pid
    before = _rss_kib(pid)
    answer = _send_huge_body(live_app.url, path, chunked=chunked)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"too_large"' in answer and b"x-content-type-options: nosniff" in answer.lower()
    grew = _rss_kib(pid) - before
    assert grew < 8 * 1024, f"the web process grew by {grew} KiB"
    status, _, _ = get_json(f"{live_app.url}/healthz")  # and it serves on
    assert status == 200
