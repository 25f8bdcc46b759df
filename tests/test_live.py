"""Live push: the websocket consumer on the real Redis channel layer, and real processes end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from redis import Redis
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from fanout import multicast, presence, push, watermark
from fanout.connection import get_redis
from tests.conftest import LIVE_REDIS_URL, post_json, session_cookie
from timeline.asgi import application
from timeline.frames import text_frame
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

    for ws in sockets["alice"] + sockets["bob"]:
        assert await ws.receive_json_from(timeout=5) == event
    assert await sockets["carol"][0].receive_nothing(timeout=0.3)
    assert published[0][1] >= 1  # this process listens on the one channel
    for ws in [s for group in sockets.values() for s in group]:
        await ws.disconnect()
    assert not {alice.pk, bob.pk, carol.pk} & multicast.registry().sockets.keys()  # closed sockets are let go


async def test_a_web_process_keeps_the_users_of_its_open_sockets_marked_online(make_user, monkeypatch):
    # One task per process renews them all; a user whose mark lapsed (Redis lost it) is back
    # within a round, and one whose sockets closed is left to expire.
    monkeypatch.setattr(presence, "RENEW_EVERY", 0.05)
    alice, bob = await sync_to_async(make_user)(), await sync_to_async(make_user)()
    (to_alice, ok_a), (to_bob, ok_b) = await connect(alice), await connect(bob)
    assert ok_a and ok_b
    await to_bob.disconnect()
    redis = get_redis()
    redis.zrem(presence.PRESENCE_KEY, str(alice.pk), str(bob.pk))
    deadline = time.monotonic() + 5
    while redis.zscore(presence.PRESENCE_KEY, str(alice.pk)) is None:
        assert time.monotonic() < deadline, "alice's mark was not renewed"
        await asyncio.sleep(0.02)
    assert redis.zscore(presence.PRESENCE_KEY, str(bob.pk)) is None
    await to_alice.disconnect()


def test_the_multicast_message_carries_ids_and_text_unchanged():
    text = json.dumps({"type": "tweet.new", "tweet": {"body": "line one\nline two, ünïcode"}})
    assert multicast.split(multicast.encode([3, 1, 2], text)) == ([3, 1, 2], text.encode())
    assert multicast.split(multicast.encode([], text)) == ([], text.encode())


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_a_prepared_frame_is_what_a_websocket_client_reads_as_one_text_message(size):
    # Each length encoding (RFC 6455: 7 bits, 16 bits, 64 bits), read by another implementation.
    payload = bytes(range(32, 127)) * (size // 95 + 1)
    payload = payload[:size]
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    frame = parsed.value.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)
    assert not reader.buffer  # nothing after the frame


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


def raw_websocket(live_app, cookie: str) -> socket.socket:
    """A websocket opened by hand on a TCP socket with a small receive buffer, which this test
    reads only when it chooses: the server's writes to it back up."""
    host, port = live_app.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/timeline/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {live_app.url}\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@pytest.mark.e2e
async def test_prepared_frames_to_a_socket_that_reads_slowly_arrive_whole_and_in_order(live_app, make_user):
    # timeline.serve hands a prepared frame to the kernel at once, and leaves to Twisted what
    # the kernel would not take. Here the kernel's buffers fill: far more than they hold is
    # sent to a socket that does not read, so frames go both ways, and must come out as sent.
    slow_user, other_user = [await sync_to_async(make_user)() for _ in range(2)]
    slow = raw_websocket(live_app, await sync_to_async(session_cookie)(slow_user))
    other = await open_socket(live_app, other_user)
    body, count = "x" * 8000, 1500  # 12 MB, three times the most a send buffer grows to here
    try:
        redis = Redis.from_url(LIVE_REDIS_URL)
        for number in range(count):
            event = json.dumps({"type": "tweet.new", "tweet": {"id": number, "body": body}})
            redis.publish(multicast.CHANNEL, multicast.encode([slow_user.pk], event))
        redis.publish(multicast.CHANNEL, multicast.encode([other_user.pk], json.dumps({"type": "marker"})))
        # The server reads its subscription in order: once the marker is out, every frame for
        # the slow socket has been written or buffered.
        assert await frames_until(other, lambda f: f["type"] == "marker", timeout=30)

        reader, parser, ids = StreamReader(), None, []
        deadline = time.monotonic() + 30
        while len(ids) < count:
            assert time.monotonic() < deadline, f"{len(ids)} of {count} frames by the deadline"
            reader.feed_data(await asyncio.to_thread(slow.recv, 1 << 16))
            while True:
                parser = parser or Frame.parse(reader.read_exact, mask=False)
                try:
                    next(parser)
                    break  # not a whole frame yet: the same parser goes on once more has come
                except StopIteration as parsed:
                    frame, parser = parsed.value, None
                if frame.opcode == Opcode.TEXT:
                    message = json.loads(frame.data)
                    assert message["tweet"]["body"] == body
                    ids.append(message["tweet"]["id"])
        assert ids == list(range(count))
    finally:
        slow.close()
        await other.close()


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
