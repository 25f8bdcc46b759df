"""The one place that talks to the channel layer.

Events are plain dicts with a ``type`` (``tweet.new``, ``fanout.progress``, ``fanout.done``),
sent to per-user groups; the websocket consumer forwards them to the browser unchanged. A
fan-out batch sends all of its events in one event-loop run, concurrently, rather than
starting an event loop per follower.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

Event = dict[str, Any]


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def tweet_new(tweet: dict[str, Any]) -> Event:
    return {"type": "tweet.new", "tweet": tweet}


def fanout_event(*, tweet_id: int, delivered: int, recipients: int, state: str) -> Event:
    kind = "fanout.done" if state in ("done", "failed") else "fanout.progress"
    return {"type": kind, "tweet_id": tweet_id, "delivered": delivered, "recipients": recipients, "state": state}


def send(messages: Iterable[tuple[int, Event]]) -> None:
    """Send each (user_id, event); live push is best effort, so failures are logged, not raised.

    A user who misses an event loses nothing: the page fills gaps from the home timeline
    (``?after=``) when its socket reconnects.
    """
    messages = list(messages)
    if not messages:
        return
    try:
        async_to_sync(_send_all)(messages)
    except Exception:
        logger.exception("live push of %d event(s) failed", len(messages))


async def _send_all(messages: list[tuple[int, Event]]) -> None:
    layer = get_channel_layer()
    await asyncio.gather(*(layer.group_send(user_group(user_id), event) for user_id, event in messages))
