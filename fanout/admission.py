"""Admission control (back pressure) and the one place that puts fan-out work on the queue.

RQ queues are unbounded, so the bound is ours. A tweet is admitted only while fewer than
``FANOUT_QUEUE_CAP`` fan-out jobs wait; past that, POST /api/tweets answers 503 with a
Retry-After computed from the measured drain rate, and nothing is written.

The check and the enqueue cannot be one Redis command, because the tweet must commit to the
database between them. So admission *reserves* a slot, atomically with the check (one Lua
script), and the enqueue after the commit releases the reservation in the same MULTI as the
job's push. Waiting jobs plus live reservations never exceed the cap, however many web
processes post at once. A reservation left by a process that died before enqueueing expires
after ``RESERVATION_TTL`` seconds (its tweet, if it committed, is then queued by the relay).

Work for tweets already accepted (the relay's re-enqueues and retries) goes to the front of the
queue without asking: it was admitted once, and must finish in bounded time.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.db import DatabaseError
from django.utils import timezone
from django_rq import get_queue
from rq import worker_registration

from fanout import metrics, prometheus
from fanout.connection import get_async_redis, get_redis
from fanout.models import Fanout

logger = logging.getLogger(__name__)

FANOUT_QUEUE = "fanout"
# Scheduled tweets' publication (fanout.scheduled): first, as a person is waiting for that minute.
SCHEDULED_QUEUE = "scheduled"
# Workers take jobs from these queues in this order.
WORKER_QUEUES = (SCHEDULED_QUEUE, FANOUT_QUEUE, "default")
QUEUE_KEY = f"rq:queue:{FANOUT_QUEUE}"
WORKERS_KEY = worker_registration.WORKERS_BY_QUEUE_KEY % FANOUT_QUEUE
RESERVATIONS_KEY = "fanout:admission:reserved"
RESERVATION_TTL = 30
# Set by staff on /ops/ (to watch the queue fill to a small cap, say): the cap in force instead
# of FANOUT_QUEUE_CAP until cleared. Read by the admission script itself, so no extra round trip.
CAP_KEY = "fanout:admission:cap"
# RQ keeps a failed job this long for /admin/rq/; the outbox row keeps its error for good.
FAILURE_TTL = 24 * 3600
# Retry-After is the expected time for the queue to drain, kept within these bounds: at
# least a second (the header's unit), and at most what a person will wait for a post.
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 30

# The queue's part of both scripts below, as a Lua function: drop lapsed reservations, then
# reserve a slot unless waiting jobs plus reservations have reached the cap in force (the one
# staff set, else the default). Returns whether it reserved, and the depth it saw.
_RESERVE = """
local function reserve(queue, reservations, cap_key, default_cap, now, token, ttl)
  redis.call('ZREMRANGEBYSCORE', reservations, '-inf', now)
  local depth = redis.call('LLEN', queue) + redis.call('ZCARD', reservations)
  local cap = tonumber(redis.call('GET', cap_key) or default_cap)
  if cap > 0 and depth >= cap then
    return false, depth
  end
  redis.call('ZADD', reservations, now + ttl, token)
  return true, depth
end
"""

# KEYS: the queue list, the reservations zset, the author's rate-limit counter, the cap staff set.
# ARGV: cap (0 = off; the key above wins when set), now, reservation token, reservation ttl, rate limit (0 = off), window,
# reserve (0: the rate limit alone).
# Returns {1, depth} admitted; {0, depth} over the cap; {-1, ttl} over the rate limit.
_ADMIT_SCRIPT = (
    _RESERVE
    + """
local limit = tonumber(ARGV[5])
if limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used >= limit then
    return {-1, redis.call('TTL', KEYS[3])}
  end
end
local depth = 0
if ARGV[7] == '1' then
  local reserved
  reserved, depth = reserve(KEYS[1], KEYS[2], KEYS[4], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]))
  if not reserved then
    return {0, depth}
  end
end
if limit > 0 and redis.call('INCR', KEYS[3]) == 1 then
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
return {1, depth}
"""
)

# The queue's part alone, for a post whose session Redis holds logged in (the rate limit is
# left to _ADMIT_SCRIPT, in Django).
# KEYS: the queue list, the reservations zset, the cap staff set, the session's cached data.
# ARGV: cap, now, reservation token, reservation ttl, the session's user-id field.
# Returns {1, depth} reserved; {0, depth} over the cap; {-1, 0} no logged-in session cached.
_RESERVE_FOR_SESSION_SCRIPT = (
    _RESERVE
    + """
local cached = redis.call('GET', KEYS[4])
if not cached then
  return {-1, 0}
end
local decoded, session = pcall(cjson.decode, cached)
if not decoded or type(session) ~= 'table' or not session[ARGV[5]] then
  return {-1, 0}
end
local reserved, depth = reserve(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]))
return {reserved and 1 or 0, depth}
"""
)


class Overloaded(Exception):
    """The fan-out queue is at its cap: try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, depth: int) -> None:
        super().__init__(f"fan-out queue full ({depth} waiting)")
        self.retry_after, self.depth = retry_after, depth


class RateLimited(Exception):
    """This author posted too much in the current window."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("rate limited")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Ticket:
    """A reserved queue slot, spent by ``enqueue_fanout`` or given back by ``release``."""

    token: str


def job_id(tweet_id: int) -> str:
    return f"fanout-{tweet_id}"


def admit(
    *, author_id: int, rate_limit: bool = True, reserve: bool = True, reserved: Ticket | None = None
) -> Ticket | None:
    """Reserve a queue slot for a new tweet, or raise Overloaded or RateLimited.

    A scheduled tweet is counted against its author's rate limit when it is scheduled
    (``reserve=False``: no slot, the queue is not touched yet) and asks for its slot when it is
    published (``rate_limit=False``: it was counted already). A post whose slot the web process
    reserved in the event loop (``reserved``; see timeline.limits) is only counted against the
    rate limit here, and gets that slot back (given back if the rate limit refuses it).
    """
    redis = get_redis()
    token = uuid.uuid4().hex
    limit = settings.TWEET_RATE_LIMIT if rate_limit else 0
    if reserved is not None:
        reserve = False
    admitted, value = redis.register_script(_ADMIT_SCRIPT)(**_admit_call(author_id, token, limit, reserve))
    if admitted == -1:
        if reserved is not None:
            release(reserved)
        prometheus.RATE_LIMITED.inc()
        raise RateLimited(retry_after=max(int(value), 1))
    if admitted == 0:
        metrics.record_shed(limit="queue", redis=redis)
        raise Overloaded(retry_after=retry_after(depth=int(value)), depth=int(value))
    return reserved if reserved is not None else Ticket(token) if reserve else None


async def reserve_for_session(session_cache_key: str) -> tuple[Ticket | None, int] | None:
    """The queue part of ``admit``, for the event loop, for a post from the session cached at
    ``session_cache_key``: (a ticket, depth), (None, depth) when the queue is at its cap, or
    None when Redis holds no logged-in session there. The rate limit is left to
    ``admit(reserved=...)``. One round trip."""
    token = uuid.uuid4().hex
    admitted, depth = await get_async_redis().register_script(_RESERVE_FOR_SESSION_SCRIPT)(
        keys=[QUEUE_KEY, RESERVATIONS_KEY, CAP_KEY, session_cache_key],
        args=[settings.FANOUT_QUEUE_CAP, time.time(), token, RESERVATION_TTL, SESSION_KEY],
    )
    if admitted == -1:
        return None
    return (Ticket(token) if admitted == 1 else None), int(depth)


def _admit_call(author_id: int, token: str, limit: int, reserve: bool) -> dict:
    return {
        "keys": [QUEUE_KEY, RESERVATIONS_KEY, f"ratelimit:tweets:{author_id}", CAP_KEY],
        "args": [
            settings.FANOUT_QUEUE_CAP,
            time.time(),
            token,
            RESERVATION_TTL,
            limit,
            settings.TWEET_RATE_WINDOW,
            int(reserve),
        ],
    }


def cap(redis=None) -> int:
    """The queue cap in force: the one staff set on /ops/, else FANOUT_QUEUE_CAP."""
    return cap_from((redis or get_redis()).get(CAP_KEY))


def cap_from(stored: bytes | None) -> int:
    """The cap in force, from CAP_KEY's value as read (for callers that read it in a pipeline)."""
    return int(stored) if stored is not None else settings.FANOUT_QUEUE_CAP


def set_cap(value: int | None) -> None:
    """Set the cap in force (0: no cap), or with None go back to FANOUT_QUEUE_CAP."""
    if value is None:
        get_redis().delete(CAP_KEY)
    else:
        get_redis().set(CAP_KEY, int(value))


def release(ticket: Ticket) -> None:
    get_redis().zrem(RESERVATIONS_KEY, ticket.token)


async def release_async(ticket: Ticket) -> None:
    await get_async_redis().zrem(RESERVATIONS_KEY, ticket.token)


def retry_after(*, depth: int) -> int:
    """Seconds until the queue has drained, by Little's law: wait = depth / drain rate."""
    return retry_after_from(depth, drain=metrics.drain_rate(), workers=workers_listening())


async def drain_and_workers_async() -> tuple[float, int]:
    """The drain rate and the workers listening, for retry_after_from, in one round trip."""
    async with get_async_redis().pipeline(transaction=False) as pipe:
        pipe.mget(metrics.drain_keys())
        pipe.scard(WORKERS_KEY)
        started, workers = await pipe.execute()
    return metrics.drain_rate_from(started), int(workers)


def retry_after_from(depth: int, *, drain: float, workers: int) -> int:
    if drain <= 0 or not workers:
        return RETRY_AFTER_MAX  # no worker is draining: the honest answer is "a while"
    return min(max(math.ceil(depth / drain), RETRY_AFTER_MIN), RETRY_AFTER_MAX)


def push_job(tweet_id: int, *, ticket: Ticket | None = None) -> None:
    """Put the fan-out job of a committed tweet on the queue (Redis only; see enqueue_fanout).

    With a ticket (a new tweet) the job joins the back of the queue, and the reservation is
    released and the arrival counted in the same transaction; without one (work already
    accepted once: the relay, staff) it goes to the front. RQ retries nothing: a failed attempt
    is recorded on the outbox row, and the relay, which owns retries, queues the next one (see
    fanout.relay).
    """
    redis = get_redis()
    with redis.pipeline() as pipe:
        get_queue(FANOUT_QUEUE, connection=redis).enqueue_call(
            "fanout.jobs.fanout_tweet",
            args=(tweet_id,),
            job_id=job_id(tweet_id),
            result_ttl=0,
            failure_ttl=FAILURE_TTL,
            at_front=ticket is None,
            pipeline=pipe,
        )
        if ticket is not None:
            pipe.zrem(RESERVATIONS_KEY, ticket.token)
            metrics.queue_arrival(pipe)
        pipe.execute()


def enqueue_fanout(fanout: Fanout, *, ticket: Ticket | None = None) -> None:
    """Queue the fan-out job of a committed tweet and mark its outbox row (and ``fanout``,
    the caller's copy of it) queued."""
    now = timezone.now()
    push_job(fanout.pk, ticket=ticket)
    # The worker may already be running the job: only a pending row becomes queued. The job
    # is on the queue whatever happens to this bookkeeping (a busy SQLite can refuse it): a row
    # left pending is found on the queue by the relay, which then only marks it.
    try:
        Fanout.objects.filter(pk=fanout.pk, state=Fanout.State.PENDING).update(
            enqueued_at=now, state=Fanout.State.QUEUED
        )
    except DatabaseError:
        logger.warning("fan-out of tweet %s queued, but its row could not be marked queued", fanout.pk, exc_info=True)
    else:
        fanout.state, fanout.enqueued_at = Fanout.State.QUEUED, now


def waiting_on_queue(tweet_ids: Sequence[int]) -> set[int]:
    """Those of ``tweet_ids`` whose fan-out job is on the queue now, in one round trip."""
    waiting = waiting_jobs([job_id(tweet_id) for tweet_id in tweet_ids])
    return {tweet_id for tweet_id in tweet_ids if job_id(tweet_id) in waiting}


def waiting_jobs(job_ids: Sequence[str]) -> set[str]:
    """Those of ``job_ids`` on the fan-out queue now, in one round trip."""
    if not job_ids:
        return set()
    with get_redis().pipeline(transaction=False) as pipe:
        for one in job_ids:
            pipe.lpos(QUEUE_KEY, one)
        positions = pipe.execute()
    return {one for one, pos in zip(job_ids, positions, strict=True) if pos is not None}


def workers_listening() -> int:
    """Workers registered on the fan-out queue now (the drain rate looks 10 s back: they may have
    stopped since)."""
    return int(get_redis().scard(WORKERS_KEY))


def depth() -> int:
    """Fan-out jobs waiting to start (reservations not counted)."""
    return int(get_redis().llen(QUEUE_KEY))
