"""One message for many sockets: how a web process hears the events it passes on to pages.

A fan-out to N online followers used to be N messages on the channel layer, one per follower's
group: N PUBLISHes, and in each web process N messages to decode and dispatch, one at a time,
through the layer's queue to a consumer. That per-message work was most of a web process's CPU
in a large fan-out (bench/live_latency.py: about 0.24 ms per follower at 10,000).

Here the sender publishes one message per event and batch on one Redis channel: the event's JSON
as the page gets it, and the ids of the users it is for. Every web process subscribes once, and
keeps its own sockets by user id, so it reads the list and writes the same string to each of
its sockets among those users: under ``timeline.serve``, as one websocket frame built once and
written to each socket's transport, with no ASGI message per socket (see that module). The
channel layer keeps what it is good at: a socket's session and trends groups, and control
messages to one socket.

Control events for a user's sockets (``session.ended``, ``user.changed``: see
timeline.consumers) travel the same way on a second channel, read on the same subscription, so
they are ordered with the page events: a socket told that its session ended is never passed an
event published after that.

Ordering holds per user as before: every event for a user's pages goes through this one
subscription, in the order it was published. Delivery is best effort, as the pub/sub channel layer's was: a
web process that was away from Redis misses what was sent meanwhile, and its pages catch up from
the home timeline when they reconnect (fanout.watermark).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable

from django.conf import settings
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from fanout import presence
from fanout.connection import CONNECT_TIMEOUT_SECONDS
from timeline.frames import text_frame

logger = logging.getLogger(__name__)

CHANNEL = "push:multicast"
CONTROL_CHANNEL = "push:control"
RETRY_SECONDS = 1.0
SUBSCRIBE_TIMEOUT_SECONDS = 5.0


def encode(user_ids: Iterable[int], text: str) -> bytes:
    """The message: the users' ids, comma-separated, a newline, then the page's JSON."""
    return b"%s\n%s" % (",".join(map(str, user_ids)).encode(), text.encode())


def split(data: bytes) -> tuple[list[int], bytes]:
    """The users' ids, and the page's JSON as UTF-8."""
    ids, _, payload = data.partition(b"\n")
    return [int(i) for i in ids.split(b",") if i], payload


class Registry:
    """This web process's sockets by user, the one subscription that feeds them, and the one
    task that keeps their users marked online."""

    def __init__(self) -> None:
        self.sockets: dict[int, set] = defaultdict(set)
        self.listening: asyncio.Task | None = None
        self.renewing: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def add(self, user_id: int, consumer) -> None:
        """Pass this user's events on to ``consumer``, from as soon as the subscription is up:
        raises if Redis cannot be reached (the socket is refused). ``consumer.forward(frame,
        text)`` writes the event at once and returns None, or returns an awaitable that does;
        ``consumer.control(event)`` takes a control event (a dict), at once."""
        if self.listening is None or self.listening.done():
            self.ready = asyncio.Event()
            self.listening = asyncio.create_task(self._listen(), name="push-multicast")
        if not self.ready.is_set():
            waiter = asyncio.ensure_future(self.ready.wait())
            done, _ = await asyncio.wait(
                {waiter, self.listening}, timeout=SUBSCRIBE_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                waiter.cancel()
                if self.listening.done():
                    self.listening.result()  # raises what stopped it
                raise RedisConnectionError("the live push subscription is not up")
        self.sockets[user_id].add(consumer)
        if self.renewing is None or self.renewing.done():
            self.renewing = asyncio.create_task(self._renew_presence(), name="presence-renewal")

    def discard(self, user_id: int, consumer) -> None:
        sockets = self.sockets.get(user_id)
        if sockets is not None:
            sockets.discard(consumer)
            if not sockets:
                del self.sockets[user_id]

    async def _listen(self) -> None:
        first = True
        while True:
            client = AsyncRedis.from_url(
                settings.REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, health_check_interval=30
            )
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL, CONTROL_CHANNEL)
                    self.ready.set()
                    first = False
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        if message["channel"] == CONTROL_CHANNEL.encode():
                            self._control(message["data"])
                        else:
                            await self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                if first:  # the socket waiting on it is refused; the next one starts again
                    raise
                logger.warning("live push subscription lost (%s); subscribing again", exc)
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _renew_presence(self) -> None:
        """Every ``presence.RENEW_EVERY`` seconds, mark every user with a socket here online
        again, in one round trip. (A task per socket did it with a command each: with 10,000
        sockets opened together, 10,000 commands at once, more than the connection pool holds.)"""
        while True:
            await asyncio.sleep(presence.RENEW_EVERY)
            try:
                await presence.mark_all_online(list(self.sockets))
            except Exception as exc:  # Redis away for a moment: the next round tries again
                logger.warning("could not renew the presence of this process's users (%s)", exc)

    async def _deliver(self, data: bytes) -> None:
        user_ids, payload = split(data)
        frame, text = text_frame(payload), payload.decode()
        sockets = self.sockets
        for user_id in user_ids:
            for consumer in tuple(sockets.get(user_id, ())):
                try:
                    pending = consumer.forward(frame, text)
                    if pending is not None:
                        await pending
                except Exception:  # one closing socket does not stop the others
                    logger.debug("live push to a socket of user %s failed", user_id, exc_info=True)

    def _control(self, data: bytes) -> None:
        user_ids, payload = split(data)
        event = json.loads(payload)
        for user_id in user_ids:
            for consumer in tuple(self.sockets.get(user_id, ())):
                try:
                    consumer.control(event)
                except Exception:
                    logger.exception("control event %s for a socket of user %s failed", event.get("type"), user_id)


_registries: dict[asyncio.AbstractEventLoop, Registry] = {}


def registry() -> Registry:
    """This process's registry (one per event loop: daphne runs one)."""
    loop = asyncio.get_running_loop()
    found = _registries.get(loop)
    if found is None:
        found = _registries[loop] = Registry()
    return found
