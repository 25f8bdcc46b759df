"""Live push: the websocket consumer on the real Redis channel layer, and real processes end to end."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from fanout import multicast, presence, push, watermark
from fanout.connection import get_redis
from tests.conftest import post_json, session_cookie
from timeline.asgi import application
from timeline.services import follow_create

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")


async def connect(user=None, origin=ORIGIN) -> tuple[WebsocketCommunicator, bool]:
    headers = [origin, (b"host", b"127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", (await sync_to_async(session_cookie)(user)).encode()))
    communicator = WebsocketCommunicator(application, "/ws/timeline/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def test_anonymous_socket_is_closed_with_a_code_the_page_understands():
    communicator, connected = await connect(None)
    assert connected  # accepted only to say why it closes
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}


async def test_cross_origin_socket_is_refused(make_user):
    user = await sync_to_async(make_user)()
    communicator, connected = await connect(user, origin=(b"origin", b"http://evil.example"))
    assert not connected


async def test_events_reach_only_the_intended_user(make_user):
    alice, bob = await sync_to_async(make_user)(), await sync_to_async(make_user)()
    to_alice, ok_a = await connect(alice)
    to_bob, ok_b = await connect(bob)
    assert ok_a and ok_b
    assert await sync_to_async(presence.online_among)([alice.pk, bob.pk]) == [alice.pk, bob.pk]

    event = push.tweet_new({"id": 1, "body": "for alice"})
    await sync_to_async(push.send)([(alice.pk, event)])

    assert await to_alice.receive_json_from(timeout=5) == event
    assert await to_bob.receive_nothing(timeout=0.3)
    await to_alice.disconnect()
    await to_bob.disconnect()


async def test_one_message_reaches_every_socket_of_every_user_it_names_and_no_other(make_user):
    """fanout.multicast: one published message per event, however many users and sockets."""
    alice, bob, carol = [await sync_to_async(make_user)() for _ in range(3)]
    sockets = {name: [(await connect(user))[0] for _ in range(2)] for name, user in (("alice", alice), ("bob", bob))}
    sockets["carol"] = [(await connect(carol))[0]]
    received = multicast.registry().sockets
    assert {alice.pk, bob.pk, carol.pk} <= received.keys()

    event = push.tweet_new({"id": 7, "body": "to two of three"})
    published = get_redis().pubsub_numsub(multicast.CHANNEL)
    await sync_to_async(push.send)([(alice.pk, event), (bob.pk, event)])

    for socket in sockets["alice"] + sockets["bob"]:
        assert await socket.receive_json_from(timeout=5) == event
    assert await sockets["carol"][0].receive_nothing(timeout=0.3)
    assert published[0][1] >= 1  # this process listens on the one channel
    for socket in [s for group in sockets.values() for s in group]:
        await socket.disconnect()
    assert not {alice.pk, bob.pk, carol.pk} & multicast.registry().sockets.keys()  # closed sockets are let go


def test_the_multicast_message_carries_ids_and_text_unchanged():
    text = json.dumps({"type": "tweet.new", "tweet": {"body": "line one\nline two, ünïcode"}})
    assert multicast.decode(multicast.encode([3, 1, 2], text)) == ([3, 1, 2], text)
    assert multicast.decode(multicast.encode([], text)) == ([], text)


async def test_client_cannot_join_another_group_and_bad_frames_close_the_socket(make_user):
    alice, bob = await sync_to_async(make_user)(), await sync_to_async(make_user)()
    socket, connected = await connect(alice)
    assert connected
    published = await sync_to_async(watermark.publish)()
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from(timeout=5) == {"type": "pong", "watermark": published}

    await socket.send_json_to({"type": "subscribe", "group": f"user.{bob.pk}"})
    closed = await socket.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4400}

    for frame in ["not json", json.dumps({"type": "ping", "pad": "x" * 5000})]:
        socket, connected = await connect(alice)
        await socket.send_to(text_data=frame)
        assert (await socket.receive_output(timeout=5))["type"] == "websocket.close"


async def test_author_sees_progress_per_batch_then_done_and_online_followers_get_the_tweet(make_user, settings):
    from fanout import delivery
    from timeline.services import tweet_create

    settings.FANOUT_BATCH_SIZE = 2
    author = await sync_to_async(make_user)()
    followers = [await sync_to_async(make_user)() for _ in range(5)]
    for follower in followers:
        await sync_to_async(follow_create)(follower=follower, followee=author)
    author_ws, _ = await connect(author)
    online_ws, _ = await connect(followers[3])  # one follower online, in the second batch
    tweet = (await sync_to_async(tweet_create)(author=author, body="batched", client_id=uuid.uuid4())).tweet

    await sync_to_async(delivery.deliver_tweet)(tweet_id=tweet.pk)

    frames = [await author_ws.receive_json_from(timeout=5) for _ in range(3)]
    assert [(f["type"], f["delivered"], f["recipients"]) for f in frames] == [
        ("fanout.progress", 2, 5),
        ("fanout.progress", 4, 5),
        ("fanout.done", 5, 5),
    ]
    assert all(f["tweet_id"] == tweet.pk for f in frames)
    new = await online_ws.receive_json_from(timeout=5)
    assert new["type"] == "tweet.new" and new["tweet"]["id"] == tweet.pk
    assert await online_ws.receive_nothing(timeout=0.3)
    await author_ws.disconnect()
    await online_ws.disconnect()


# -- end to end: daphne and an RQ worker as real processes -----------------------------------------


def api_post_tweet(live_app, user, body: str) -> dict:
    status, _, answer = post_json(
        live_app.url + "/api/tweets", {"body": body, "client_id": str(uuid.uuid4())}, cookie=session_cookie(user)
    )
    assert status == 202
    return answer


async def open_socket(live_app, user):
    cookie = await sync_to_async(session_cookie)(user)
    return await websockets.connect(
        live_app.ws_url(), additional_headers={"Cookie": cookie}, origin=live_app.url, open_timeout=10
    )


async def frames_until(socket, predicate, *, timeout: float) -> list[dict]:
    """Read frames until one satisfies predicate; fail if the deadline passes first."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no matching frame within {timeout}s; saw {seen}"
        frame = json.loads(await asyncio.wait_for(socket.recv(), remaining))
        seen.append(frame)
        if predicate(frame):
            return seen


@pytest.mark.e2e
async def test_posted_tweet_reaches_followers_socket_and_author_sees_progress(live_app, make_user):
    author, follower, stranger = [await sync_to_async(make_user)() for _ in range(3)]
    await sync_to_async(follow_create)(follower=follower, followee=author)
    author_ws, follower_ws, stranger_ws = [await open_socket(live_app, u) for u in (author, follower, stranger)]
    try:
        answer = await sync_to_async(api_post_tweet)(live_app, author, "live hello")
        tweet_id = answer["tweet"]["id"]

        frames = await frames_until(follower_ws, lambda f: f["type"] == "tweet.new", timeout=10)
        assert frames[-1]["tweet"] == answer["tweet"]

        author_frames = await frames_until(author_ws, lambda f: f["type"] == "fanout.done", timeout=10)
        done = author_frames[-1]
        assert done == {
            "type": "fanout.done",
            "tweet_id": tweet_id,
            "delivered": 1,
            "recipients": 1,
            "state": "done",
            "mode": "write",
            "live": 1,  # the follower had the page open
        }

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stranger_ws.recv(), 0.5)
    finally:
        for ws in (author_ws, follower_ws, stranger_ws):
            await ws.close()


@pytest.mark.e2e
async def test_anonymous_and_cross_origin_sockets_are_refused_by_daphne(live_app, make_user):
    async with websockets.connect(live_app.ws_url(), origin=live_app.url, open_timeout=10) as anonymous:
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await anonymous.recv()
    assert closed.value.rcvd.code == 4401
    user = await sync_to_async(make_user)()
    cookie = await sync_to_async(session_cookie)(user)
    port = live_app.url.rsplit(":", 1)[1]
    for origin in ("http://evil.example", f"http://127.0.0.1:{int(port) + 1}", f"https://127.0.0.1:{port}", None):
        with pytest.raises(websockets.exceptions.InvalidStatus):  # another site, port or scheme; or none
            await websockets.connect(
                live_app.ws_url(), additional_headers={"Cookie": cookie}, origin=origin, open_timeout=10
            )
    for path in ("/ws/nowhere/", "/ws/timeline/extra", "/"):  # no route: refused, not a 500
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await websockets.connect(
                live_app.url.replace("http", "ws") + path, additional_headers={"Cookie": cookie}, origin=live_app.url
            )
        assert refused.value.response.status_code == 403
