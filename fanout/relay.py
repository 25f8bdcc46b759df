"""The outbox relay: queue fan-outs whose tweet committed but whose enqueue was lost.

The request enqueues right after its commit; if that fails (Redis unreachable for a moment,
the process killed between the two), the Fanout row stays ``pending``. The relay runs every
few seconds (``manage.py fanout_cron``) and queues such rows again. Jobs are idempotent, so a
row that was in fact queued and is queued twice costs a little work and nothing else.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from fanout.admission import enqueue_fanout
from fanout.models import Fanout

logger = logging.getLogger(__name__)

# Long enough that a request between its commit and its enqueue is not raced.
PENDING_GRACE = timedelta(seconds=10)
BATCH = 500


def relay_pending_fanouts() -> int:
    cutoff = timezone.now() - PENDING_GRACE
    ids = list(
        Fanout.objects.filter(state=Fanout.State.PENDING, created_at__lt=cutoff)
        .order_by("created_at")
        .values_list("tweet_id", flat=True)[:BATCH]
    )
    for tweet_id in ids:
        enqueue_fanout(tweet_id)
    if ids:
        logger.warning("relayed %d pending fan-out(s) whose enqueue was lost", len(ids))
    return len(ids)
