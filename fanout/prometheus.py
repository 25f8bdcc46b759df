"""Metrics for Prometheus, served at /metrics (timeline.views.metrics).

Two kinds. What each process measures as it works (request latency by view, 429s, how long
fan-out jobs waited and ran, timelines written, open websockets) lives in prometheus_client's
metrics below. ``make run`` starts several web processes and workers, so every process writes
them to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multi-process mode; the
Makefile empties the folder at start), and a scrape adds them up. Without that variable (a
management command, the tests in one process) they stay in the process.

What the queue is now (depth, cap, reservations, workers, and the totals of admitted and shed
posts that metrics.py already keeps) is read from Redis at scrape time by ``QueueCollector``,
so every process agrees; RQ's own view of its workers and jobs comes from django-rq's collector.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Seconds: from a fast request or job to a slow one past the 30 s Retry-After ceiling.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUEST_SECONDS = Histogram(
    "timeline_http_request_duration_seconds",
    "Time Django took to answer, by view (URL name), method and status class.",
    ["view", "method", "status"],
    buckets=BUCKETS,
)
RATE_LIMITED = Counter("timeline_rate_limited_total", "Posts refused by the per-author rate limit (429).")
QUEUE_WAIT = Histogram(
    "timeline_fanout_queue_wait_seconds", "How long fan-out jobs waited on the queue.", buckets=BUCKETS
)
FANOUT_SECONDS = Histogram(
    "timeline_fanout_duration_seconds",
    "How long finished fan-outs ran, by mode (write: into followers' timelines; read: merged on read).",
    ["mode"],
    buckets=BUCKETS,
)
FANOUTS = Counter("timeline_fanouts_total", "Fan-outs finished, by mode.", ["mode"])
DELIVERIES = Counter(
    "timeline_fanout_deliveries_total",
    "Followers a finished fan-out reached: timelines written (write) or followers who read it from its author's (read).",
    ["mode"],
)
SCHEDULED_LATENESS = Histogram(
    "timeline_scheduled_lateness_seconds",
    "How long after its publish_at a scheduled tweet went out (committed).",
    buckets=BUCKETS,
)
SOCKETS = Gauge("timeline_websocket_connections", "Open websockets, per web process.", multiprocess_mode="liveall")


class QueueCollector:
    """The fan-out queue as Redis has it now, read at scrape time."""

    def collect(self):
        from rq import worker_registration

        from fanout import admission, metrics
        from fanout.connection import get_redis

        redis = get_redis()
        with redis.pipeline(transaction=False) as pipe:
            pipe.llen(admission.QUEUE_KEY)
            pipe.zcard(admission.RESERVATIONS_KEY)
            pipe.scard(worker_registration.WORKERS_BY_QUEUE_KEY % admission.FANOUT_QUEUE)
            pipe.mget(["metrics:arrivals_total", *(f"metrics:shed_{limit}_total" for limit in metrics.SHED_LIMITS)])
            pipe.get(admission.CAP_KEY)
            depth, reserved, workers, totals, cap_set = pipe.execute()
        yield GaugeMetricFamily("timeline_queue_depth", "Fan-out jobs waiting on the queue.", value=depth)
        yield GaugeMetricFamily(
            "timeline_queue_reserved", "Queue slots held by posts between admission and enqueue.", value=reserved
        )
        yield GaugeMetricFamily(
            "timeline_queue_cap",
            "The queue cap in force (FANOUT_QUEUE_CAP, or what staff set on /ops/): past it, posts are refused with 503 (0: no cap).",
            value=admission.cap_from(cap_set),
        )
        yield GaugeMetricFamily("timeline_fanout_workers", "Workers listening on the fan-out queue.", value=workers)
        arrivals, *shed = (int(value or 0) for value in totals)
        yield CounterMetricFamily("timeline_posts_admitted", "Posts admitted to the fan-out queue.", value=arrivals)
        shed_family = CounterMetricFamily(
            "timeline_posts_shed", "Requests refused with 503, by the limit that refused them.", labels=["limit"]
        )
        for limit, count in zip(metrics.SHED_LIMITS, shed, strict=True):
            shed_family.add_metric([limit], count)
        yield shed_family


def exposition() -> bytes:
    """Every metric, in Prometheus's text format."""
    from django_rq.contrib.prometheus import RQCollector

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())  # prometheus_client's own registry, as it is
    registry.register(QueueCollector())
    registry.register(RQCollector())
    return generate_latest(registry)


class _ThisProcess:
    """Every metric this process registered (no multi-process folder): the ones above and the
    rest prometheus_client and django-rq register by default."""

    def collect(self):
        yield from REGISTRY.collect()


def process_exiting() -> None:
    """Drop this process's live gauges (its open sockets) from the shared folder."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
