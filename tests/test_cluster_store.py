"""Timelines on a Redis Cluster: what only a cluster can do to a fan-out.

These run when the timeline store is a cluster (TEST_TIMELINE_STORE=cluster, as `make test`
runs the timeline and fan-out tests a second time); the rest of those tests (test_fanout,
test_hybrid, test_outbox, test_reads) run against the cluster then too.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest
from django.conf import settings
from redis import Redis

from fanout import delivery, timelines
from timeline import selectors
from timeline.services import follow_create, tweet_create

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.TIMELINE_REDIS_CLUSTER, reason="needs TEST_TIMELINE_STORE=cluster"),
]


def post_and_deliver(author, body: str) -> int:
    tweet = tweet_create(author=author, body=body, client_id=uuid.uuid4(), admission_control=False).tweet
    delivery.deliver_tweet(tweet_id=tweet.pk)
    return tweet.pk


def node_of(store, key: str) -> Redis:
    """A plain client of the master that holds ``key``'s slot now."""
    node = store.get_node_from_key(key)
    return Redis(host=node.host, port=node.port)


def test_one_batch_reaches_followers_on_every_master(make_user, store):
    author = make_user()
    followers = [make_user() for _ in range(30)]
    for follower in followers:
        follow_create(follower=follower, followee=author)
        selectors.home_timeline(user=follower)
    masters = {store.get_node_from_key(timelines.key(f.pk)).name for f in followers}
    assert len(masters) == len(store.get_primaries())  # the batch really is spread

    tweet_id = post_and_deliver(author, "to everyone")

    for follower in followers:
        assert node_of(store, timelines.key(follower.pk)).zscore(timelines.key(follower.pk), tweet_id) == tweet_id
    assert selectors.home_timeline(user=followers[0]).tweets[0].pk == tweet_id


def test_a_slot_moved_in_the_middle_of_a_fanout_loses_nothing(make_user, store):
    """The client's map of the slots goes stale twice: while the slot migrates (ASK) and after
    (MOVED). Both times the fan-out's write lands on the master that owns the key."""
    author, follower = make_user(), make_user()
    follow_create(follower=follower, followee=author)
    selectors.home_timeline(user=follower)
    key = timelines.key(follower.pk)
    first = post_and_deliver(author, "before the move")
    slot = store.keyslot(key)
    source = node_of(store, key)
    target = next(
        Redis(host=n.host, port=n.port)
        for n in store.get_primaries()
        if n.port != source.connection_pool.connection_kwargs["port"]
    )
    source_id, target_id = source.cluster("myid"), target.cluster("myid")

    target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    port = target.connection_pool.connection_kwargs["port"]
    source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", key)
    during = post_and_deliver(author, "while it moves")  # the source answers ASK

    for master in store.get_primaries():
        Redis(host=master.host, port=master.port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    after = post_and_deliver(author, "after the move")  # the source answers MOVED

    assert [int(m) for m in target.zrevrange(key, 0, -1)] == [after, during, first, 0]
    assert source.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0  # nothing left behind
    assert [t.pk for t in selectors.home_timeline(user=follower).tweets] == [after, during, first]


def test_a_master_that_lost_its_scripts_is_given_them_again(make_user, store):
    author, follower = make_user(), make_user()
    follow_create(follower=follower, followee=author)
    selectors.home_timeline(user=follower)
    store.script_flush()  # on every master, as after a restart or a failover
    add_script = hashlib.sha1(timelines._ADD_SCRIPT.encode()).hexdigest()
    assert store.script_exists(add_script) == [False]

    tweet_id = post_and_deliver(author, "after the flush")

    assert store.zscore(timelines.key(follower.pk), tweet_id) == tweet_id
