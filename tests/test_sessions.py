"""Sessions and the sockets they opened end together, however the session ends.

Each test holds websockets through the real ASGI application (the real Redis, the multicast
subscription and the channel layer) and ends a session one way: logging out, logging in over
it, deleting it, a new password set by its owner or by staff, the account deactivated or
deleted. The sockets of that session (and only those) close with 4401, and receive nothing
else first; one test does it on real daphne processes with a tweet posted right after.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import websockets.sync.client
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from fanout import multicast, push
from fanout.connection import get_redis
from tests.conftest import post_json, session_cookie, wait_for
from timeline import sessions
from timeline.asgi import application
from timeline.consumers import CLOSE_TOO_MANY_FRAMES, CLOSE_UNAUTHENTICATED, FRAMES_PER_WINDOW
from timeline.services import follow_create

User = get_user_model()
pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "a-long-test-password"


def headers_for(cookie: str) -> list[tuple[bytes, bytes]]:
    return [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie.encode())]


async def open_socket(cookie: str) -> WebsocketCommunicator:
    socket = WebsocketCommunicator(application, "/ws/timeline/", headers=headers_for(cookie))
    connected, _ = await socket.connect(timeout=5)
    assert connected
    return socket


async def closed_with(socket: WebsocketCommunicator) -> int:
    message = await socket.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return message["code"]


def logged_in_client(cookie: str) -> Client:
    client = Client()
    client.cookies["sessionid"] = cookie.split("=", 1)[1]
    return client


@pytest.fixture
def user(make_user):
    return make_user(password=PASSWORD)


async def two_sessions(user) -> tuple[str, WebsocketCommunicator, str, WebsocketCommunicator]:
    first, second = await sync_to_async(session_cookie)(user), await sync_to_async(session_cookie)(user)
    return first, await open_socket(first), second, await open_socket(second)


async def test_logging_out_closes_that_sessions_sockets_only(user):
    cookie, this_session, _, other_session = await two_sessions(user)
    assert await sync_to_async(lambda: logged_in_client(cookie).post("/api/auth/logout").status_code)() == 200
    assert await closed_with(this_session) == CLOSE_UNAUTHENTICATED
    assert await other_session.receive_nothing(timeout=0.5)
    await other_session.disconnect()


async def test_logging_in_over_a_session_closes_its_sockets(user, make_user):
    cookie, this_session, _, other_session = await two_sessions(user)
    someone_else = await sync_to_async(make_user)(password=PASSWORD)

    def log_in_over_it() -> int:
        body = json.dumps({"username": someone_else.username, "password": PASSWORD})
        return logged_in_client(cookie).post("/api/auth/login", body, content_type="application/json").status_code

    assert await sync_to_async(log_in_over_it)() == 200
    assert await closed_with(this_session) == CLOSE_UNAUTHENTICATED
    assert await other_session.receive_nothing(timeout=0.5)
    await other_session.disconnect()


async def test_a_session_deleted_in_bulk_closes_its_sockets_and_leaves_redis(user):
    cookie, this_session, _, other_session = await two_sessions(user)
    key = cookie.split("=", 1)[1]
    assert get_redis().exists(sessions.KEY_PREFIX + key)  # the copy the event loop reads
    await sync_to_async(lambda: Session.objects.filter(pk=key).delete())()  # not through the session store
    assert await closed_with(this_session) == CLOSE_UNAUTHENTICATED
    assert not get_redis().exists(sessions.KEY_PREFIX + key)
    assert await other_session.receive_nothing(timeout=0.5)
    await other_session.disconnect()


@pytest.mark.parametrize("change", ["new password", "deactivated", "deleted"])
async def test_a_change_to_the_account_closes_every_socket_it_no_longer_authenticates(user, make_user, change):
    _, first, _, second = await two_sessions(user)
    bystander = await open_socket(await sync_to_async(session_cookie)(await sync_to_async(make_user)()))

    def change_the_account() -> None:
        if change == "new password":
            user.set_password("another-long-password")
            user.save()
        elif change == "deactivated":
            user.is_active = False
            user.save()
        else:
            user.delete()

    await sync_to_async(change_the_account)()
    assert await closed_with(first) == CLOSE_UNAUTHENTICATED
    assert await closed_with(second) == CLOSE_UNAUTHENTICATED
    assert await bystander.receive_nothing(timeout=0.5)  # another user's socket stays
    await bystander.disconnect()


async def test_saving_an_account_without_changing_what_authenticates_it_keeps_its_sockets(user):
    socket = await open_socket(await sync_to_async(session_cookie)(user))

    def rename() -> None:
        user.first_name = "Ada"
        user.save()
        user.refresh_from_db()
        user.save(update_fields=["last_login"])

    await sync_to_async(rename)()
    assert await socket.receive_nothing(timeout=0.5)
    await socket.disconnect()


async def test_staff_setting_a_password_in_the_admin_closes_the_users_sockets(user, make_user, client_for):
    socket = await open_socket(await sync_to_async(session_cookie)(user))
    staff = await sync_to_async(make_user)(is_staff=True, is_superuser=True)

    def set_it() -> int:
        form = {"password1": "a-new-admin-set-password", "password2": "a-new-admin-set-password"}
        return client_for(staff).post(f"/admin/auth/user/{user.pk}/password/", form).status_code

    assert await sync_to_async(set_it)() == 302
    assert await closed_with(socket) == CLOSE_UNAUTHENTICATED


async def test_a_socket_closes_when_its_session_expires(user):
    cookie = await sync_to_async(session_cookie)(user)
    key = cookie.split("=", 1)[1]
    await sync_to_async(Session.objects.filter(pk=key).update)(expire_date=timezone.now() + timedelta(seconds=1))
    socket = await open_socket(cookie)
    assert await closed_with(socket) == CLOSE_UNAUTHENTICATED


async def test_a_session_that_ends_while_its_socket_opens_is_refused(user, monkeypatch):
    cookie = await sync_to_async(session_cookie)(user)
    key = cookie.split("=", 1)[1]
    # The handshake authenticates from the session as loaded; the socket checks once more after
    # it subscribes. A session gone in between (its control event sent to nobody) is caught.
    subscribe = multicast.Registry.add

    async def subscribe_then_end(self, user_id, consumer):
        await subscribe(self, user_id, consumer)
        await sync_to_async(lambda: Session.objects.filter(pk=key).delete())()

    monkeypatch.setattr(multicast.Registry, "add", subscribe_then_end)
    socket = WebsocketCommunicator(application, "/ws/timeline/", headers=headers_for(cookie))
    await socket.connect(timeout=5)
    assert await closed_with(socket) == CLOSE_UNAUTHENTICATED


async def test_a_socket_that_sends_too_many_frames_is_closed(user):
    socket = await open_socket(await sync_to_async(session_cookie)(user))
    for _ in range(FRAMES_PER_WINDOW):
        await socket.send_json_to({"type": "ping"})
    pongs = [await socket.receive_json_from(timeout=5) for _ in range(FRAMES_PER_WINDOW)]
    assert [p["type"] for p in pongs] == ["pong"] * FRAMES_PER_WINDOW
    await socket.send_json_to({"type": "ping"})
    assert await closed_with(socket) == CLOSE_TOO_MANY_FRAMES


@pytest.mark.e2e
def test_on_real_processes_a_socket_whose_password_changed_hears_nothing_after(live_app, make_user):
    follower, author = make_user(password=PASSWORD), make_user()
    follow_create(follower=follower, followee=author)
    cookie = session_cookie(follower)
    with websockets.sync.client.connect(
        live_app.ws_url(), additional_headers={"Cookie": cookie, "Origin": live_app.url}, open_timeout=10
    ) as socket:
        # Live: a tweet of the author's reaches it.
        status, _, posted = post_json(
            f"{live_app.url}/api/tweets", {"body": "before", "client_id": new_id()}, cookie=session_cookie(author)
        )
        assert status == 202
        wait_for(lambda: _next_tweet(socket) == posted["tweet"]["id"], timeout=10, what="the first tweet, live")
        follower.set_password("another-long-password")
        follower.save()
        # Posted once the change is committed: it must not reach the socket, which closes.
        status, _, _ = post_json(
            f"{live_app.url}/api/tweets", {"body": "after", "client_id": new_id()}, cookie=session_cookie(author)
        )
        assert status == 202
        heard = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                heard.append(json.loads(socket.recv(timeout=10)))
    assert closed.value.rcvd.code == CLOSE_UNAUTHENTICATED
    assert not [event for event in heard if event["type"] == "tweet.new"], heard


def _next_tweet(socket) -> int | None:
    event = json.loads(socket.recv(timeout=10))
    return event["tweet"]["id"] if event["type"] == "tweet.new" else None


def new_id() -> str:
    return str(uuid.uuid4())


def test_control_events_name_sessions_by_a_hash_only(user):
    cookie = session_cookie(user)
    key = cookie.split("=", 1)[1]
    event = push.session_ended(key)
    assert key not in json.dumps(event) and event["session"] == push.session_tag(key)


async def test_control_events_for_one_user_do_not_close_anothers_socket(user, make_user):
    socket = await open_socket(await sync_to_async(session_cookie)(user))
    other = await sync_to_async(make_user)()
    await sync_to_async(push.send_control)([(other.pk, push.user_changed(active=False, session_hashes=[]))])
    assert await socket.receive_nothing(timeout=0.5)
    await socket.disconnect()
