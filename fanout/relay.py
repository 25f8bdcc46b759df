"""The outbox relay: queue every fan-out whose work is not provably alive.

The database row owns each fan-out until it is done; the job on the Redis queue is a fast,
losable copy of it. Every ``RELAY_EVERY`` seconds (``manage.py fanout_cron``) the relay looks at
the rows that are not done and queues again those that nothing is working on:

- ``pending`` past ``GRACE``: the request's enqueue after its commit was lost;
- ``queued`` past ``GRACE`` whose job is not on the queue: Redis lost it (a restart without its
  data, a failover), or a worker took it and died before claiming the row;
- ``running`` whose lease lapsed: the worker died, or stalled longer than the lease;
- ``failed`` whose ``next_attempt_at`` has come: the retry, after a bounded backoff.

Each re-queue first moves the row with one conditional UPDATE (from the state it was seen in),
so two relays running at once queue a fan-out once, and a lapsed owner that wakes up finds its
lease gone and stops. A job queued twice anyway (the relay and a late request) is harmless:
only one run can claim the row (``fanout.delivery.claim``), and the other finds nothing to do.
With the defaults, a fan-out whose worker is killed is running again within
``FANOUT_LEASE_SECONDS`` + ``RELAY_EVERY`` = 6 seconds.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from fanout import admission
from fanout.delivery import lease_lapsed
from fanout.models import Fanout

logger = logging.getLogger(__name__)

RELAY_EVERY = 1  # seconds
# Long enough that a request between its commit and its enqueue, or a worker between taking a
# job off the queue and claiming its row, is not raced.
GRACE = timedelta(seconds=5)
BATCH = 500


def relay_fanouts() -> int:
    """Queue again the fan-outs that nothing is working on; returns how many."""
    now = timezone.now()
    candidates = list(
        Fanout.objects.filter(
            Q(state=Fanout.State.PENDING, created_at__lt=now - GRACE)
            | Q(state=Fanout.State.QUEUED, enqueued_at__lt=now - GRACE)
            | lease_lapsed(now)
            | Q(state=Fanout.State.FAILED, next_attempt_at__lte=now)
        )
        .order_by("created_at")
        .values_list("tweet_id", "state", "enqueued_at")[:BATCH]
    )
    if not candidates:
        return 0
    waiting = admission.waiting_on_queue([tweet_id for tweet_id, _, _ in candidates])
    relayed = []
    for tweet_id, state, enqueued_at in candidates:
        if tweet_id in waiting:
            if state == Fanout.State.PENDING:  # queued by its request, which could not mark it
                Fanout.objects.filter(pk=tweet_id, state=state).update(state=Fanout.State.QUEUED, enqueued_at=now)
            continue
        if requeue(tweet_id, seen_state=state, seen_enqueued_at=enqueued_at, now=now):
            relayed.append((tweet_id, state))
    if relayed:
        logger.warning(
            "relayed %d fan-out(s) that nothing was working on: %s",
            len(relayed),
            ", ".join(f"{tweet_id} ({state})" for tweet_id, state in relayed[:20]),
        )
    return len(relayed)


def requeue(tweet_id: int, *, seen_state: str, seen_enqueued_at=None, now=None) -> bool:
    """Move the row from ``seen_state`` to queued and push its job to the front of the queue.

    False if the row moved on meanwhile (a worker claimed it, another relay queued it).
    """
    now = now or timezone.now()
    still = Fanout.objects.filter(pk=tweet_id, state=seen_state)
    if seen_state == Fanout.State.RUNNING:
        still = still.filter(lease_lapsed(now))
        note = {"last_error": "worker lost: its lease lapsed; queued again"}
    elif seen_state == Fanout.State.QUEUED:
        still = still.filter(enqueued_at=seen_enqueued_at) if seen_enqueued_at else still.filter(enqueued_at=None)
        note = {}
    else:
        note = {}
    moved = still.update(
        state=Fanout.State.QUEUED, enqueued_at=now, lease_owner="", lease_expires_at=None, next_attempt_at=None, **note
    )
    if moved:
        # If this push fails (Redis away), the row is queued with no job: the next rounds find
        # it missing from the queue once GRACE has passed and push it again.
        admission.push_job(tweet_id)
    return bool(moved)
