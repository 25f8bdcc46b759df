"""Queue metrics in Redis, in one-second buckets, shared by every web and worker process.

What Little's law needs, measured rather than assumed: the arrival rate (tweets admitted,
lambda), the drain rate (jobs leaving the queue for a worker, mu), the mean time a job waited
in the queue (W), and the depth itself (L), sampled once a second. With those, L = lambda x W
can be checked against the measured depth, and Retry-After estimated as depth / mu.

Buckets expire after ``KEEP_SECONDS``; nothing here grows without bound.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from redis import Redis

from fanout.connection import get_async_redis, get_redis

KEEP_SECONDS = 900
# Rates and means are taken over this many whole seconds before the current one.
WINDOW_SECONDS = 10
HISTORY_SECONDS = 120
SERIES = ("arrivals", "shed", "shed_queue", "shed_door", "started", "wait_ms", "depth")
# Which limit refused a post: the fan-out queue's cap (admission), or a web process's in-flight
# bound at the door (timeline.limits). Both answer 503; only the first is the queue's doing.
SHED_LIMITS = ("queue", "door")


def _key(name: str, second: int) -> str:
    return f"metrics:{name}:{second}"


def _queue_adds(pipe, amounts: dict[str, float], totals: dict[str, int] | None = None) -> None:
    second = int(time.time())
    for name, amount in amounts.items():
        pipe.incrbyfloat(_key(name, second), amount)
        pipe.expire(_key(name, second), KEEP_SECONDS)
    for name, amount in (totals or {}).items():
        pipe.incrby(f"metrics:{name}", amount)


def _add(amounts: dict[str, float], *, totals: dict[str, int] | None = None, redis: Redis | None = None) -> None:
    """Add to this second's bucket of each named series (and to running totals), in one round trip."""
    with (redis or get_redis()).pipeline(transaction=False) as pipe:
        _queue_adds(pipe, amounts, totals)
        pipe.execute()


def queue_arrival(pipe) -> None:
    """Count a tweet admitted to the queue, in the pipeline that pushes its job."""
    _queue_adds(pipe, {"arrivals": 1}, {"arrivals_total": 1})


def _shed(counts: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
    """The series and totals for ``counts`` requests shed, by the limit that shed them."""
    amounts: dict[str, float] = {"shed": sum(counts.values())}
    totals = {"shed_total": sum(counts.values())}
    for limit, count in counts.items():
        amounts[f"shed_{limit}"] = count
        totals[f"shed_{limit}_total"] = count
    return amounts, totals


def record_shed(*, limit: str = "queue", redis: Redis | None = None) -> None:
    amounts, totals = _shed({limit: 1})
    _add(amounts, totals=totals, redis=redis)


async def record_shed_async(counts: dict[str, int]) -> None:
    """record_shed, for code running in the event loop, for several requests at once
    (``counts``: how many each limit shed; see timeline.limits.ShedCounter)."""
    amounts, totals = _shed(counts)
    async with get_async_redis().pipeline(transaction=False) as pipe:
        _queue_adds(pipe, amounts, totals)
        await pipe.execute()


def record_start(*, waited_seconds: float, redis: Redis | None = None) -> None:
    _add({"started": 1, "wait_ms": max(waited_seconds, 0.0) * 1000}, redis=redis)


def sample_depth(*, redis: Redis | None = None) -> int:
    """Record the queue depth for this second (the cron process calls this every second)."""
    from fanout.admission import QUEUE_KEY

    redis = redis or get_redis()
    depth = int(redis.llen(QUEUE_KEY))
    redis.set(_key("depth", int(time.time())), depth, ex=KEEP_SECONDS)
    return depth


def _series(redis: Redis, seconds: list[int]) -> dict[str, list[float | None]]:
    with redis.pipeline(transaction=False) as pipe:
        for name in SERIES:
            pipe.mget([_key(name, s) for s in seconds])
        values = pipe.execute()
    out: dict[str, list[float | None]] = {}
    for name, raw in zip(SERIES, values, strict=True):
        default = None if name == "depth" else 0.0
        out[name] = [float(v) if v is not None else default for v in raw]
    return out


def drain_rate(*, redis: Redis | None = None) -> float:
    """Jobs per second leaving the fan-out queue, over the last WINDOW_SECONDS."""
    return drain_rate_from((redis or get_redis()).mget(drain_keys()))


def drain_keys() -> list[str]:
    """The buckets drain_rate reads (for callers that read them in a pipeline)."""
    now = int(time.time())
    return [_key("started", s) for s in range(now - WINDOW_SECONDS, now)]


def drain_rate_from(started: list[bytes | None]) -> float:
    return sum(float(v) for v in started if v is not None) / WINDOW_SECONDS


def snapshot(*, redis: Redis | None = None) -> dict[str, Any]:
    """Everything /api/stats and the ops page show."""
    from rq import Worker
    from rq.suspension import is_suspended

    from fanout.admission import QUEUE_KEY, RESERVATIONS_KEY, retry_after
    from fanout.admission import cap as admission_cap

    redis = redis or get_redis()
    depth = sample_depth(redis=redis)
    now = int(time.time())
    seconds = list(range(now - HISTORY_SECONDS, now))
    series = _series(redis, seconds)
    window = slice(-WINDOW_SECONDS, None)
    arrivals = sum(series["arrivals"][window]) / WINDOW_SECONDS
    started = sum(series["started"][window])
    drain = started / WINDOW_SECONDS
    shed = sum(series["shed"][window]) / WINDOW_SECONDS
    shed_by = {limit: sum(series[f"shed_{limit}"][window]) / WINDOW_SECONDS for limit in SHED_LIMITS}
    with redis.pipeline(transaction=False) as pipe:
        for name in ("shed_total", *(f"shed_{limit}_total" for limit in SHED_LIMITS)):
            pipe.get(f"metrics:{name}")
        shed_total, *shed_totals = (int(v or 0) for v in pipe.execute())
    # No job started in the window: the wait is unknown (not zero) until one does.
    wait = (sum(series["wait_ms"][window]) / 1000 / started) if started else None
    depths = [d for d in series["depth"][window] if d is not None]
    workers = Worker.all(connection=redis)
    reserved = int(redis.zcount(RESERVATIONS_KEY, time.time(), "+inf"))  # live ones only
    return {
        "time": time.time(),
        "queue": {
            "depth": depth,
            "reserved": reserved,
            "cap": admission_cap(redis),
            "cap_configured": settings.FANOUT_QUEUE_CAP,  # FANOUT_QUEUE_CAP; "cap" is what staff set, if they did
            # What a refused post would be told now.
            "retry_after": retry_after(depth=depth + reserved),
            "key": QUEUE_KEY,
        },
        "rates": {
            "arrival": arrivals,
            "drain": drain,
            "shed": shed,
            "shed_by": shed_by,  # which limit shed: "queue" (the cap) or "door" (a web process)
            "window_seconds": WINDOW_SECONDS,
        },
        "wait_seconds": wait,
        "littles_law": {
            "measured_depth": (sum(depths) / len(depths)) if depths else float(depth),
            "lambda_x_w": arrivals * wait if wait is not None else None,
        },
        "shed_total": shed_total,
        "shed_totals": dict(zip(SHED_LIMITS, shed_totals, strict=True)),
        "workers": {
            "total": len(workers),
            "busy": sum(1 for w in workers if w.get_state() == "busy"),
            "paused": bool(is_suspended(redis)),  # by staff on /ops/: they take no job until resumed
        },
        "history": {
            "t": seconds,
            "depth": series["depth"],
            "arrivals": series["arrivals"],
            "drain": series["started"],
            "shed": series["shed"],
            "shed_queue": series["shed_queue"],
            "shed_door": series["shed_door"],
            "wait_seconds": [
                (w / 1000 / s) if s else None for w, s in zip(series["wait_ms"], series["started"], strict=True)
            ],
        },
    }
