"""Trends: the ten #tags used most in the last hour, counted in Redis, published by a job.

A post adds one to each of its tags (``timeline.text.tags``: compared forms, so ``#Django`` and
``#DJANGO`` count together) in the current minute's sorted set, ``trends:m:<minute>``, which
expires once it is out of the window. Every ``EVERY_SECONDS`` the cron (``manage.py
fanout_cron``) queues ``publish`` as a job on the default queue; it adds up the window's
minutes, keeps the top ten in ``trends:top`` for ``GET /api/trends`` and the home page, and
sends ``{"type": "trends.updated", "trends"}`` to every open page. A deleted tweet's tags stay
counted: trends are a sample of what people are saying, not a record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from django.utils import timezone
from django_rq import get_queue
from redis import Redis

from fanout import push
from fanout.connection import get_redis

WINDOW_MINUTES = 60
TOP = 10
EVERY_SECONDS = 10
TOP_KEY = "trends:top"
GROUP = "trends"  # every open page's socket is in it
JOB_ID = "trends-publish"


def _minute_key(minute: int) -> str:
    return f"trends:m:{minute}"


def count(tags: Sequence[str], *, redis: Redis | None = None, now: float | None = None) -> None:
    """Count one use of each tag (compared forms) in this minute."""
    if not tags:
        return
    key = _minute_key(int((now or time.time()) // 60))
    with (redis or get_redis()).pipeline(transaction=False) as pipe:
        for tag in tags:
            pipe.zincrby(key, 1, tag)
        pipe.expire(key, (WINDOW_MINUTES + 2) * 60)
        pipe.execute()


def top(*, redis: Redis | None = None, now: float | None = None) -> list[dict]:
    """The most used tags over the window, most used first (ties: by tag)."""
    redis = redis or get_redis()
    minute = int((now or time.time()) // 60)
    keys = [_minute_key(m) for m in range(minute - WINDOW_MINUTES + 1, minute + 1)]
    scratch = f"trends:sum:{uuid.uuid4().hex}"
    with redis.pipeline(transaction=False) as pipe:
        pipe.zunionstore(scratch, keys)
        pipe.zrange(scratch, 0, -1, withscores=True)
        pipe.delete(scratch)
        _, counted, _ = pipe.execute()
    ranked = sorted(((tag.decode(), int(n)) for tag, n in counted), key=lambda item: (-item[1], item[0]))
    return [{"tag": tag, "count": n} for tag, n in ranked[:TOP]]


def publish(*, redis: Redis | None = None) -> dict:
    """Work out the top ten, keep them for readers, and tell every open page."""
    redis = redis or get_redis()
    snapshot = _snapshot(redis)
    redis.set(TOP_KEY, json.dumps(snapshot), ex=WINDOW_MINUTES * 60)
    push.send_to_groups([(GROUP, {"type": "trends.updated", **snapshot})])
    return snapshot


def current(*, redis: Redis | None = None) -> dict:
    """The last published top ten (worked out now if none is kept)."""
    raw = (redis or get_redis()).get(TOP_KEY)
    if raw is not None:
        return json.loads(raw)
    return _snapshot(redis)


def _snapshot(redis: Redis | None) -> dict:
    return {"trends": top(redis=redis), "window_minutes": WINDOW_MINUTES, "updated_at": _now_iso()}


def enqueue_publish() -> None:
    """Queue the publishing job, unless one is waiting already (the cron calls this)."""
    redis = get_redis()
    queue = get_queue("default", connection=redis)
    if redis.lpos(queue.key, JOB_ID) is not None:
        return
    queue.enqueue_call("fanout.jobs.publish_trends", job_id=JOB_ID, result_ttl=0, failure_ttl=3600)


def _now_iso() -> str:
    return timezone.now().isoformat().replace("+00:00", "Z")
