"""The live timeline socket: one per open page, fed its own user's events only (fanout.multicast).

A socket lives as long as the login session it was opened with, and as long as that session
still authenticates its user. Two control events close it, on the same subscription as its
events (so nothing published after them reaches the page): ``session.ended`` when its session is
gone, however it went (logged out, replaced by another login, deleted: timeline.sessions), and
``user.changed`` when its user's account changed so that its session no longer counts (a new
password, the account deactivated or deleted: timeline.identity). A timer closes it when the
session expires. One user holds at most ``SOCKETS_PER_USER`` sockets; a newer one closes the
oldest (fanout.presence).

The page sends nothing but a ping every 25 s; a socket that sends more than
``FRAMES_PER_WINDOW`` frames in ``FRAME_WINDOW_SECONDS`` is closed with 4429, so that one
client cannot spend the server's Redis on pongs.
"""

from __future__ import annotations

import asyncio
import contextlib

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.utils import timezone
from redis.exceptions import RedisError

from fanout import multicast, presence, prometheus, trends, watermark
from fanout.push import FORWARDED as FORWARDED_EVENTS
from fanout.push import session_tag
from timeline import identity, validation
from timeline.frames import EXTENSION

# Clients send nothing but small pings; anything larger is a mistake or an attack.
MAX_CLIENT_FRAME = 1024
# The page pings every 25 s; a few more, for reconnections and tests, and no more than that.
FRAMES_PER_WINDOW = 10
FRAME_WINDOW_SECONDS = 10.0
# Close codes the page acts on (static/js/live.js): 4401 and 4409 stop it reconnecting.
CLOSE_BAD_FRAME = 4400
CLOSE_UNAUTHENTICATED = 4401  # never logged in, logged out, or the session expired
CLOSE_REPLACED = 4409  # the account opened more than SOCKETS_PER_USER sockets: this was the oldest
CLOSE_TOO_MANY_FRAMES = 4429  # 4000 + HTTP's 429
# RFC 6455's 1013 "Try Again Later" is not a code an ASGI app may send: 4000 + HTTP's 503.
CLOSE_TRY_AGAIN_LATER = 4503


@database_sync_to_async
def _still_logged_in(session, user_id: int) -> tuple:
    """(when the session expires, its auth hash) if it is in the database and still
    authenticates ``user_id`` (timeline.identity's rule); (None, None) if not."""
    expires = (
        Session.objects.filter(session_key=session.session_key, expire_date__gt=timezone.now())
        .values_list("expire_date", flat=True)
        .first()
    )
    user = get_user_model().objects.filter(pk=user_id).first()
    session_hash = session.get(HASH_SESSION_KEY)
    if expires is None or user is None or not identity.vouches(identity.entry_for(user), session_hash):
        return None, None
    return expires, session_hash


class TimelineConsumer(AsyncJsonWebsocketConsumer):
    groups_joined: tuple[str, ...] = ()
    counted = False  # in the open-sockets gauge
    session_hash: str | None = None  # known once connect() has checked the session
    ended = False  # told its session no longer counts: it forwards nothing more, and closes

    async def connect(self) -> None:
        user, session = self.scope.get("user"), self.scope.get("session")
        if user is None or not user.is_authenticated or session is None or not session.session_key:
            await self._refuse()
            return
        self.user_id = user.pk
        self.session_tag = session_tag(session.session_key)
        self.frames = (0.0, 0)  # (when the current window began, frames received in it)
        self.tasks: list[asyncio.Task] = []
        # The server's prepared-frame writer for this socket (timeline.serve), if it has one.
        self.send_frame = self.scope.get("extensions", {}).get(EXTENSION, {}).get("send")
        # With Redis away these raise, and timeline.routing closes the socket with 4503.
        self.groups_joined = (trends.GROUP,)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        # The user's own events and control events come through this process's one multicast
        # subscription. Once it is up, the session is checked (again: the handshake did once),
        # so that a session ended or a password changed in between is not missed: whatever
        # commits after this check is told to control().
        await multicast.registry().add(self.user_id, self)
        expires, self.session_hash = await _still_logged_in(session, self.user_id)
        if expires is None:
            await self._refuse()
            return
        await presence.mark_online(self.user_id)
        evicted = await presence.add_socket(self.user_id, self.channel_name, cap=settings.SOCKETS_PER_USER)
        await self.accept()
        prometheus.SOCKETS.inc()
        self.counted = True
        for channel in evicted:
            await self.channel_layer.send(channel, {"type": "socket.replaced"})
        # While it is open, its user stays marked online with this process's others (multicast).
        self.tasks.append(asyncio.create_task(self._close_at((expires - timezone.now()).total_seconds())))

    async def _refuse(self) -> None:
        # Accepted only to be closed with a code the page understands (stop reconnecting); a
        # refused handshake would reach it as a bare 1006, and it would keep trying.
        await self.accept()
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "user_id"):  # whether or not it was added: discarding is safe
            multicast.registry().discard(self.user_id, self)
        if self.counted:
            prometheus.SOCKETS.dec()
            self.counted = False
        for task in getattr(self, "tasks", []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError):  # Redis away: its subscriptions went with it
            for group in self.groups_joined:
                await self.channel_layer.group_discard(group, self.channel_name)
            if hasattr(self, "user_id"):
                await presence.remove_socket(self.user_id, self.channel_name)

    async def _close_at(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0))
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs) -> None:
        now = asyncio.get_running_loop().time()
        began, count = self.frames if now - self.frames[0] < FRAME_WINDOW_SECONDS else (now, 0)
        self.frames = (began, count + 1)
        if count >= FRAMES_PER_WINDOW:
            await self.close(code=CLOSE_TOO_MANY_FRAMES)
            return
        try:
            if text_data is None:
                raise validation.BadInput("binary frame")
            message = validation.parse_json(text_data, max_bytes=MAX_CLIENT_FRAME)
        except validation.BadInput:
            await self.close(code=CLOSE_BAD_FRAME)
            return
        if not isinstance(message, dict) or message.get("type") != "ping":
            await self.close(code=CLOSE_BAD_FRAME)
            return
        # With the watermark as it is now: every tweet at or below it has been pushed to this
        # connected page, so after a reconnection it asks for what came after (fanout.watermark).
        try:
            low_watermark = await watermark.current_async()
        except (RedisError, OSError):
            low_watermark = None
        await self.send_json({"type": "pong", "watermark": low_watermark})

    async def dispatch(self, message: dict) -> None:
        # Events for the page (fanout.push.FORWARDED) are passed on here and need no handler.
        # Channels' own dispatch would first close stale database connections in a worker
        # thread: a thread hop per event, a thousand in a row when one process holds a thousand
        # followers' sockets, for events that touch no database.
        if message.get("type") in FORWARDED_EVENTS:
            await self._forward(message)
            return
        await super().dispatch(message)

    async def _forward(self, event: dict) -> None:
        if self.ended:
            return
        text = event.get("text")  # the JSON, made once by its sender (fanout.push.on_the_wire)
        await (self.send(text_data=text) if isinstance(text, str) else self.send_json(event))

    def forward(self, frame: bytes, text: str):
        """An event for this socket's user, from fanout.multicast: the page's JSON as it is, and
        as a websocket frame. Written at once where the server takes frames (timeline.serve);
        otherwise the awaitable that sends it."""
        if self.ended:
            return None
        if self.send_frame is not None:
            self.send_frame(frame, text)
            return None
        return self.base_send({"type": "websocket.send", "text": text})

    def control(self, event: dict) -> None:
        """A control event for this socket's user, from fanout.multicast: close this socket if
        its session ended, or no longer authenticates the account. At once: from here on it
        forwards nothing, whatever comes next on the subscription."""
        if self.session_hash is None:
            return  # connect() has yet to check the session, and will see this change itself
        kind = event.get("type")
        if kind == "session.ended":
            over = event.get("session") == self.session_tag
        elif kind == "user.changed":
            over = not identity.vouches(event, self.session_hash)
        else:
            return
        if over and not self.ended:
            self.ended = True
            self.tasks.append(asyncio.create_task(self.close(code=CLOSE_UNAUTHENTICATED)))

    # Control events for this socket only, on the channel layer.
    async def socket_replaced(self, event: dict) -> None:
        await self.close(code=CLOSE_REPLACED)
