"""The live timeline socket: one per open page, joined to its own user's group only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from redis.exceptions import RedisError

from fanout import presence
from fanout.push import user_group

logger = logging.getLogger(__name__)

# Clients send nothing but small pings; anything larger is a mistake or an attack.
MAX_CLIENT_FRAME = 1024
CLOSE_UNAUTHENTICATED = 4401
CLOSE_BAD_FRAME = 4400
# RFC 6455's 1013 "Try Again Later" is not a code an ASGI app may send: 4000 + HTTP's 503.
CLOSE_TRY_AGAIN_LATER = 4503
FORWARDED_EVENTS = frozenset({"tweet.new", "fanout.progress", "fanout.done"})


class TimelineConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user_id = user.pk
        self.group = user_group(user.pk)
        # With Redis away these raise, and timeline.routing closes the socket with 4503.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await presence.mark_online(self.user_id)
        await self.accept()
        self.heartbeat = asyncio.create_task(self._stay_online())

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "heartbeat"):
            self.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.heartbeat
        if hasattr(self, "group"):
            with contextlib.suppress(RedisError, OSError):  # Redis away: its subscription went with it
                await self.channel_layer.group_discard(self.group, self.channel_name)

    async def _stay_online(self) -> None:
        while True:
            await asyncio.sleep(presence.RENEW_EVERY)
            try:
                await presence.mark_online(self.user_id)
            except Exception:  # Redis away for a moment: try again next round
                logger.warning("could not renew presence of user %s", self.user_id, exc_info=True)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs) -> None:
        if bytes_data is not None or text_data is None or len(text_data) > MAX_CLIENT_FRAME:
            await self.close(code=CLOSE_BAD_FRAME)
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            await self.close(code=CLOSE_BAD_FRAME)
            return
        if not isinstance(message, dict) or message.get("type") != "ping":
            await self.close(code=CLOSE_BAD_FRAME)
            return
        await self.send_json({"type": "pong"})

    async def dispatch(self, message: dict) -> None:
        # Channels closes stale database connections, in a worker thread, before each handler:
        # a thread hop per event, a thousand in a row when one process holds a thousand
        # followers' sockets. The events below only forward a dict and touch no database.
        if message.get("type") in FORWARDED_EVENTS:
            await self.send_json(message)
            return
        await super().dispatch(message)

    # Channel-layer events, named after their types, forwarded to the browser as they are.
    # (dispatch above short-cuts them; the handlers are what Channels routes by type.)
    async def tweet_new(self, event: dict) -> None:
        await self.send_json(event)

    async def fanout_progress(self, event: dict) -> None:
        await self.send_json(event)

    async def fanout_done(self, event: dict) -> None:
        await self.send_json(event)
