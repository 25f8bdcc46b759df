"""The low watermark: the highest tweet id at or below which every fan-out is done.

A page that reconnects asks the home timeline for what it missed with ``after=<id>``. Asking
after the newest id it shows is not enough, because tweets do not reach a timeline in id order:
two workers run two fan-outs at once, and the one for the older tweet (more followers, or a
retry after a crash) can finish later. A page that saw the newer tweet and then lost its
socket would never be told of the older one.

The watermark W closes that gap. Every tweet with an id at or below W is delivered to every
timeline it will ever reach, so a page that remembers the W it last heard can ask
``after=min(newest shown, W)`` and miss nothing; it drops the few tweets it already shows. The
server hands W out with every home-timeline page and every pong on the socket.

For W to mean that, ids must become visible in id order. SQLite commits one write at a time,
so they do. PostgreSQL hands out ids when a row is inserted, and a transaction that took a
smaller id can commit after one that took a larger: posting therefore takes a transaction-level
advisory lock first (timeline.services), so tweet ids commit in order there too.

W = min(newest tweet id, oldest unfinished fan-out - 1). The newest id is read first, so a tweet
committed in between has a larger id and cannot lift W past its own unfinished fan-out. The cron
publishes W to Redis every second; readers fall back to computing it. A stale W is lower, which
only makes the page fetch a few tweets twice.
"""

from __future__ import annotations

from django.db.models import Max, Min
from redis import Redis

from fanout.connection import get_async_redis, get_redis
from fanout.models import Fanout
from timeline.models import Tweet

KEY = "fanout:watermark"
# Published every second by the cron; if it stops, readers compute W themselves after this.
TTL_SECONDS = 5


def compute() -> int:
    # Scheduled tweets' rows count too: no page shows them, and MAX over every row is read
    # from the primary key's index alone.
    newest = Tweet.all_objects.aggregate(newest=Max("id"))["newest"] or 0
    oldest_open = Fanout.objects.exclude(state=Fanout.State.DONE).aggregate(oldest=Min("tweet_id"))["oldest"]
    return newest if oldest_open is None else min(newest, oldest_open - 1)


def publish(*, redis: Redis | None = None) -> int:
    """Compute W and publish it (the cron calls this every second)."""
    value = compute()
    (redis or get_redis()).set(KEY, value, ex=TTL_SECONDS)
    return value


def current(*, redis: Redis | None = None) -> int:
    """W as published, or computed now if the cron has not published it lately."""
    value = (redis or get_redis()).get(KEY)
    return int(value) if value is not None else publish(redis=redis)


async def current_async() -> int | None:
    """W as published, for the socket's pongs (None if not published lately: the page keeps its own)."""
    value = await get_async_redis().get(KEY)
    return int(value) if value is not None else None
