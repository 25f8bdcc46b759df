"""Websocket routes, and the checks every handshake passes before it reaches a consumer.

- Same origin: a page may open a socket only to the origin it came from, scheme, host and port
  all equal (Channels' AllowedHostsOriginValidator compares the host only, so a page on another
  port or scheme of the same host could use the visitor's cookie). A socket needs the session
  cookie, so this is what stops another site's page from listening as the visitor.
- Every path has an answer: an unknown one is refused (HTTP 403 to the handshake), not a 500.
- An outage answers cleanly: the pub/sub channel layer subscribes a new socket's channel in
  Redis before the consumer sees the handshake, so with Redis away the handshake would fail with
  a 500. ``RefuseDuringOutage`` accepts and at once closes it with 4503 ("try again later"):
  the page reconnects with backoff, and fills its gap once Redis is back.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.urls import path, re_path

from timeline.consumers import CLOSE_TRY_AGAIN_LATER, TimelineConsumer
from timeline.middleware import outage_part

logger = logging.getLogger(__name__)

_HANDSHAKE_ANSWERS = frozenset({"websocket.accept", "websocket.close", "websocket.http.response.start"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


async def refuse(scope, receive, send) -> None:
    """Refuse the handshake: daphne answers it with HTTP 403."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close"})


websocket_urlpatterns = [
    path("ws/timeline/", TimelineConsumer.as_asgi()),
    re_path(r"", refuse),  # any other path
]


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    parts = urlsplit(f"{scheme}://{netloc}")
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    return (scheme, (parts.hostname or "").lower(), port) if parts.hostname else None


def same_origin(scope) -> bool:
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    origin, host = headers.get("origin"), headers.get("host")
    if not origin or not host or not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        return False
    secure = scope.get("scheme") in ("wss", "https")
    if settings.SECURE_PROXY_SSL_HEADER:  # behind a TLS proxy that says so (DJANGO_SECURE)
        header, value = settings.SECURE_PROXY_SSL_HEADER
        secure = secure or headers.get(header.removeprefix("HTTP_").replace("_", "-").lower()) == value
    claimed = urlsplit(origin)
    return claimed.scheme in _DEFAULT_PORTS and _origin(claimed.scheme, claimed.netloc) == _origin(
        "https" if secure else "http", host
    )


class SameOriginOnly:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and not same_origin(scope):
            await refuse(scope, receive, send)
            return
        await self.app(scope, receive, send)


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
