"""Websocket routes, and the guard that answers every handshake cleanly.

The pub/sub channel layer subscribes a new socket's channel in Redis before the consumer sees
the handshake, so with Redis away the handshake would fail with an HTTP 500. The guard turns an
outage met before the handshake is answered into an accepted-then-closed socket with code 4503
("try again later"): the page reconnects with backoff, and fills its gap once Redis is back.
"""

from __future__ import annotations

import logging

from django.urls import path

from timeline.consumers import CLOSE_TRY_AGAIN_LATER, TimelineConsumer
from timeline.middleware import outage_part

logger = logging.getLogger(__name__)

websocket_urlpatterns = [path("ws/timeline/", TimelineConsumer.as_asgi())]

_HANDSHAKE_ANSWERS = frozenset({"websocket.accept", "websocket.close", "websocket.http.response.start"})


class RefuseDuringOutage:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        answered = False

        async def send_and_note(message) -> None:
            nonlocal answered
            answered = answered or message["type"] in _HANDSHAKE_ANSWERS
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if answered or outage_part(exc) is None:
                raise
            logger.warning("websocket %s refused: %s is away (%s)", scope.get("path"), outage_part(exc), exc)
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})
