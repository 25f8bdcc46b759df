"""The one place that sends to the pages' sockets.

Events are plain dicts with a ``type`` (``tweet.new``, ``tweet.deleted``, ``mention.new``,
``fanout.progress``, ``fanout.done``) for users: each goes out once per batch, as the JSON the
page gets, with the ids of the users it is for, on one Redis channel that every web process
reads (fanout.multicast); the websocket consumer passes it on to that user's pages unchanged.
Control events for a user's sockets (``session.ended``, ``user.changed``) go the same way on
the control channel, and the consumer acts on them itself. Each socket is also in the trends
group on the channel layer.

Workers are synchronous, and the channel layer is asyncio. With the pub/sub layer (the
default, see docs/benchmarks.md) a group send is one PUBLISH, and the layer sends them one at a
time, a round trip each: a batch of a thousand followers cost a thousand. So for that layer a
batch goes out as one pipeline of PUBLISH commands on the worker's own Redis connection, with
the layer's own channel names and serializer: one round trip, and no event loop at all. For
any other layer, each process keeps one event loop in a background thread (``async_to_sync``
would start a fresh loop, and fresh connections, per call), and a batch is sent concurrently.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from redis.exceptions import RedisError

from fanout import multicast
from fanout.connection import get_redis

logger = logging.getLogger(__name__)

Event = dict[str, Any]
SEND_TIMEOUT_SECONDS = 10

_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None
_loop_lock = threading.Lock()


def session_tag(session_key: str) -> str:
    """What names a login session in control events. The key is hashed: what goes through Redis
    is visible to anyone who can read it, and a session key is a credential."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:40]


def session_ended(session_key: str) -> Event:
    """For the sockets opened with this session: it was logged out, replaced or deleted."""
    return {"type": "session.ended", "session": session_tag(session_key)}


def user_changed(*, active: bool, session_hashes: list[str]) -> Event:
    """For a user's sockets: the account changed (a new password, deactivated, deleted), and
    these are the session hashes that still authenticate it (none: nothing does)."""
    return {"type": "user.changed", "active": active, "session_hashes": session_hashes}


def tweet_new(tweet: dict[str, Any]) -> Event:
    return {"type": "tweet.new", "tweet": tweet}


def mention_new(tweet: dict[str, Any]) -> Event:
    return {"type": "mention.new", "tweet": tweet}


def tweet_deleted(tweet_id: int) -> Event:
    return {"type": "tweet.deleted", "tweet_id": tweet_id}


def fanout_event(
    *, tweet_id: int, delivered: int, recipients: int, state: str, mode: str = "write", live: int = 0
) -> Event:
    kind = "fanout.done" if state in ("done", "failed") else "fanout.progress"
    return {
        "type": kind,
        "tweet_id": tweet_id,
        "delivered": delivered,
        "recipients": recipients,
        "state": state,
        "mode": mode,
        "live": live,
    }


def send(messages: Iterable[tuple[int, Event]]) -> None:
    """Send each (user_id, event); live push is best effort, so failures are logged, not raised.

    A user who misses an event loses nothing: the page fills gaps from the home timeline
    (``?after=``) when its socket reconnects. One event object for many users (a fan-out
    batch's ``tweet.new``) is one message, in one pipeline with the batch's others, in order.
    """
    recipients: dict[int, tuple[Event, list[int]]] = {}
    for user_id, event in messages:
        recipients.setdefault(id(event), (event, []))[1].append(user_id)
    if not recipients:
        return
    try:
        with get_redis().pipeline(transaction=False) as pipe:
            for event, user_ids in recipients.values():
                pipe.publish(multicast.CHANNEL, multicast.encode(user_ids, _page_json(event)))
            pipe.execute()
    except (RedisError, OSError) as exc:  # Redis away: one line, the pages catch up later
        logger.warning("live push of %d event(s) failed: %s", len(recipients), exc)


def send_control(messages: Iterable[tuple[int, Event]]) -> None:
    """Send each (user_id, control event) to that user's sockets, in one round trip. Raises if
    Redis cannot be reached: the caller decides what an undelivered control event means."""
    messages = list(messages)
    if not messages:
        return
    with get_redis().pipeline(transaction=False) as pipe:
        for user_id, event in messages:
            pipe.publish(multicast.CONTROL_CHANNEL, multicast.encode([user_id], _page_json(event)))
        pipe.execute()


def _page_json(event: Event) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


# Events the socket only passes on to the page. They travel as the JSON the page will get,
# made once per event here: each web process then forwards a string per socket, where it would
# decode a nested message and encode it as JSON again for every socket (most of a web process's
# CPU in a fan-out to a thousand open pages: bench/live_latency.py).
FORWARDED = frozenset({"tweet.new", "tweet.deleted", "mention.new", "fanout.progress", "fanout.done", "trends.updated"})


def on_the_wire(event: Event) -> Event:
    if event.get("type") not in FORWARDED:
        return event
    return {"type": event["type"], "text": _page_json(event)}


def send_to_groups(messages: Iterable[tuple[str, Event]]) -> None:
    """Send each (group, event), best effort (see ``send``)."""
    wire: dict[int, Event] = {}  # one event object goes to many followers: encode it once
    messages = [
        (group, wire.get(id(event)) or wire.setdefault(id(event), on_the_wire(event))) for group, event in messages
    ]
    if not messages:
        return
    try:
        layer = get_channel_layer()
        if _publishes_to_our_redis(layer):
            _publish_pipelined(layer, messages)
        else:
            asyncio.run_coroutine_threadsafe(_send_all(messages), _background_loop()).result(SEND_TIMEOUT_SECONDS)
    except (RedisError, OSError) as exc:  # Redis away: one line, the pages catch up later
        logger.warning("live push of %d event(s) failed: %s", len(messages), exc)
    except Exception:
        logger.exception("live push of %d event(s) failed", len(messages))


def _publishes_to_our_redis(layer) -> bool:
    hosts = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", [])
    return isinstance(layer, RedisPubSubChannelLayer) and hosts == [settings.REDIS_URL]


def _publish_pipelined(layer: RedisPubSubChannelLayer, messages: list[tuple[str, Event]]) -> None:
    # The group channel name as channels_redis 4.x's pub/sub layer makes it (its method for
    # this needs a running event loop); the end-to-end tests fail if a new version changes it.
    prefix = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "asgi")
    serialized: dict[int, bytes] = {}  # one event object goes to many followers: encode it once
    with get_redis().pipeline(transaction=False) as pipe:
        for group, event in messages:
            data = serialized.get(id(event))
            if data is None:
                data = serialized[id(event)] = layer.serialize(event)
            pipe.publish(f"{prefix}__group__{group}", data)
        pipe.execute()


async def _send_all(messages: list[tuple[str, Event]]) -> None:
    layer = get_channel_layer()
    await asyncio.gather(*(layer.group_send(group, event) for group, event in messages))


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _loop_lock:
        # A forked child inherits the variable but not the thread: start its own.
        if _loop is None or _loop_pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
            threading.Thread(target=_loop.run_forever, name="channel-layer-push", daemon=True).start()
        return _loop
