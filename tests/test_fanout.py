"""Fan-out through a real RQ worker into the real Redis, and the home timelines it feeds."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_rq import get_queue
from redis.exceptions import RedisError

from fanout import delivery, timelines, watermark
from fanout.admission import FANOUT_QUEUE, enqueue_fanout
from fanout.models import Fanout
from fanout.relay import relay_fanouts
from tests.conftest import every_page
from timeline import selectors
from timeline.models import Follow, Tweet
from timeline.services import follow_create, follow_delete, tweet_create

pytestmark = pytest.mark.django_db(transaction=True)


def materialize(*users) -> None:
    """Read each home timeline once, as an online user would, so it lives in Redis."""
    for user in users:
        selectors.home_timeline(user=user)


def home_ids(user, **kwargs) -> list[int]:
    return [t.pk for t in selectors.home_timeline(user=user, limit=100, **kwargs).tweets]


def post(author, body="hello"):
    return tweet_create(author=author, body=body, client_id=uuid.uuid4()).tweet


def test_worker_delivers_to_every_follower_and_counts_are_true(make_user, run_worker, settings, store):
    settings.FANOUT_BATCH_SIZE = 4  # several keyset batches
    author = make_user()
    followers = [make_user() for _ in range(10)]
    outsider = make_user()
    for follower in followers:
        follow_create(follower=follower, followee=author)
    materialize(author, outsider, *followers)

    tweet = post(author)
    run_worker()

    fanout = Fanout.objects.get(pk=tweet.pk)
    assert (fanout.state, fanout.delivered, fanout.recipients, fanout.attempts) == ("done", 10, 10, 1)
    assert fanout.started_at <= fanout.finished_at
    for follower in followers:
        assert store.zscore(timelines.key(follower.pk), tweet.pk) == tweet.pk
    assert store.zscore(timelines.key(outsider.pk), tweet.pk) is None
    assert home_ids(followers[0]) == [tweet.pk]
    assert home_ids(outsider) == []


def test_running_the_job_twice_leaves_the_same_timelines_and_counts(make_user, run_worker, store):
    author = make_user()
    followers = [make_user() for _ in range(5)]
    for follower in followers:
        follow_create(follower=follower, followee=author)
    materialize(*followers)
    tweet = post(author)
    run_worker()
    before = {f.pk: store.zrange(timelines.key(f.pk), 0, -1, withscores=True) for f in followers}
    first = Fanout.objects.values("state", "delivered", "recipients").get(pk=tweet.pk)

    # Both ways a job can run again: RQ running it a second time, and the delivery code itself
    # running over a row it already finished (a retry after a crash that left it "running").
    enqueue_fanout(Fanout.objects.get(pk=tweet.pk))
    run_worker()
    Fanout.objects.filter(pk=tweet.pk).update(state=Fanout.State.RUNNING)
    delivery.deliver_tweet(tweet_id=tweet.pk)

    after = {f.pk: store.zrange(timelines.key(f.pk), 0, -1, withscores=True) for f in followers}
    assert after == before
    assert Fanout.objects.values("state", "delivered", "recipients").get(pk=tweet.pk) == first


def test_fanout_does_not_create_timelines_that_were_never_read(make_user, run_worker, store):
    author, follower = make_user(), make_user()
    follow_create(follower=follower, followee=author)
    tweet = post(author)
    run_worker()

    assert not store.exists(timelines.key(follower.pk))
    assert Fanout.objects.get(pk=tweet.pk).delivered == 1
    # ...and the first read builds it from the database, tweet included.
    assert home_ids(follower) == [tweet.pk]
    assert store.exists(timelines.key(follower.pk))


def test_timeline_is_rebuilt_from_the_database_after_its_key_is_deleted(make_user, run_worker, store):
    author, follower = make_user(), make_user()
    follow_create(follower=follower, followee=author)
    materialize(follower)
    tweets = [post(author, f"t{i}") for i in range(3)]
    own = post(follower, "mine")
    run_worker()
    expected = [own.pk] + [t.pk for t in reversed(tweets)]
    assert home_ids(follower) == expected

    store.delete(timelines.key(follower.pk))

    assert home_ids(follower) == expected
    assert [int(m) for m in store.zrevrange(timelines.key(follower.pk), 0, -1)] == expected + [0]  # sentinel last


def test_a_fanout_racing_a_rebuild_is_not_lost(make_user, store):
    """The sentinel goes in before the rebuild reads the database: see fanout.timelines."""
    author, follower = make_user(), make_user()
    Follow.objects.create(follower=follower, followee=author)
    timelines.begin_rebuild(follower.pk)
    stale_ids = selectors._home_ids_from_db(follower.pk, limit=800)  # read before the tweet commits
    tweet = Tweet.objects.create(author=author, body="in between", client_id=uuid.uuid4())
    Fanout.objects.create(tweet=tweet)
    delivery.deliver_tweet(tweet_id=tweet.pk)  # runs while the rebuild is still in flight
    timelines.finish_rebuild(follower.pk, stale_ids)

    assert home_ids(follower) == [tweet.pk]
    # The finished set lives for the idle lifetime (not the rebuild's minute), renewed by reads.
    assert store.ttl(timelines.key(follower.pk)) > timelines.REBUILD_TTL_SECONDS


def test_timeline_is_capped_and_older_pages_come_from_the_database(make_user, run_worker, settings, store):
    settings.TIMELINE_CAP = 10
    author, follower = make_user(), make_user()
    follow_create(follower=follower, followee=author)
    materialize(follower)
    tweets = [post(author, f"t{i}") for i in range(15)]
    run_worker()

    assert store.zcard(timelines.key(follower.pk)) == 10 + 1  # the cap, plus the sentinel
    assert every_page(follower, limit=4) == [t.pk for t in reversed(tweets)]


def test_after_returns_only_newer_tweets(make_user):
    author = make_user()
    tweets = [post(author, f"t{i}") for i in range(5)]
    assert home_ids(author, after=tweets[2].pk) == [tweets[4].pk, tweets[3].pk]
    assert home_ids(author, after=tweets[1].pk, before=tweets[4].pk) == [tweets[3].pk, tweets[2].pk]


def test_follow_and_unfollow_change_the_home_timeline_including_older_tweets(make_user):
    reader, author = make_user(), make_user()
    older = post(author, "before the follow")
    materialize(reader)
    assert home_ids(reader) == []

    follow_create(follower=reader, followee=author)
    assert home_ids(reader) == [older.pk]

    follow_delete(follower=reader, followee=author)
    assert home_ids(reader) == []


def test_a_failing_job_is_marked_failed_and_retried_by_the_relay(make_user, run_worker, monkeypatch):
    author, follower = make_user(), make_user()
    follow_create(follower=follower, followee=author)

    def broken(**kwargs):
        raise RedisError("connection lost mid-batch")

    tweet = post(author)
    monkeypatch.setattr(delivery.timelines, "add", broken)
    run_worker()

    fanout = Fanout.objects.get(pk=tweet.pk)
    assert fanout.state == "failed"
    assert "connection lost mid-batch" in fanout.last_error
    backoff = fanout.next_attempt_at - fanout.finished_at  # due again after a backoff, not at once
    assert timedelta(seconds=0.9) < backoff < timedelta(seconds=1.1)  # the first retry's: 1 s
    Fanout.objects.filter(pk=tweet.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=1))
    assert relay_fanouts() == 0  # not due yet
    assert get_queue(FANOUT_QUEUE).fetch_job(f"fanout-{tweet.pk}").get_status() == "failed"  # RQ shows it

    monkeypatch.undo()
    Fanout.objects.filter(pk=tweet.pk).update(next_attempt_at=fanout.finished_at)
    assert relay_fanouts() == 1
    run_worker()
    fanout.refresh_from_db()
    assert (fanout.state, fanout.delivered, fanout.last_error, fanout.attempts) == ("done", 1, "", 2)


def test_follower_batches_are_keyset_ordered_and_complete(make_user):
    author = make_user()
    followers = [make_user() for _ in range(7)]
    for follower in followers:
        Follow.objects.create(follower=follower, followee=author)
    batches = list(delivery.follower_id_batches(author.pk, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [i for b in batches for i in b]
    assert flat == sorted(f.pk for f in followers)


def test_a_reconnecting_page_misses_no_older_tweet_that_arrived_late(make_user, client_for, store):
    """Fan-outs finish out of id order; after=min(newest shown, watermark) still finds them all."""
    reader, busy_author, quick_author = make_user(), make_user(), make_user()
    follow_create(follower=reader, followee=busy_author)
    follow_create(follower=reader, followee=quick_author)
    materialize(reader)
    older = post(busy_author, "older, its fan-out still running")
    newer = post(quick_author, "newer, delivered at once")
    delivery.deliver_tweet(tweet_id=newer.pk)
    client = client_for(reader)

    watermark.publish()  # as the cron does every second
    shown = client.get("/api/timeline/home").json()  # the page, just before its socket drops
    assert [t["id"] for t in shown["tweets"]] == [newer.pk]
    assert shown["watermark"] == older.pk - 1  # the older tweet is not delivered yet

    delivery.deliver_tweet(tweet_id=older.pk)  # arrives while the page is away
    naive = client.get(f"/api/timeline/home?after={newer.pk}").json()
    assert naive["tweets"] == []  # "after the newest shown" would miss it for good
    after = min(newer.pk, shown["watermark"])
    watermark.publish()  # as the cron does every second
    refill = client.get(f"/api/timeline/home?after={after}").json()
    assert older.pk in [t["id"] for t in refill["tweets"]]
    assert refill["watermark"] >= newer.pk  # both delivered now: the next gap fill starts later


def test_tweet_ids_commit_in_id_order(make_user):
    """A transaction that took a smaller id cannot commit after one that took a larger."""
    import threading
    import time as clock

    from django.db import connection, connections, transaction

    from tests.conftest import on_postgres
    from timeline.services import _commit_tweet_ids_in_order

    if not on_postgres():
        pytest.skip("SQLite runs one write transaction at a time: ids commit in order by construction")
    first_author, second_author = make_user(), make_user()
    first_inserted, second_done = threading.Event(), threading.Event()
    ids: dict[str, int] = {}

    def slow_first_post() -> None:
        with transaction.atomic():
            _commit_tweet_ids_in_order()
            ids["first"] = Tweet.objects.create(author=first_author, body="slow", client_id=uuid.uuid4()).pk
            first_inserted.set()
            # Hold the transaction open until the second post waits on the lock (or, without
            # the lock, has committed its larger id first: the race this test is about).
            deadline = clock.monotonic() + 10
            while not (_someone_waits_on_an_advisory_lock() or second_done.is_set()):
                if clock.monotonic() > deadline:
                    break
                clock.sleep(0.01)
            ids["second committed first"] = second_done.is_set()
        connections.close_all()

    def second_post() -> None:
        first_inserted.wait(10)
        ids["second"] = post(second_author, "quick").pk
        second_done.set()
        connections.close_all()

    threads = [threading.Thread(target=slow_first_post), threading.Thread(target=second_post)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert ids["first"] < ids["second"] and second_done.is_set()
    assert ids["second committed first"] is False
    assert connection.vendor == "postgresql"


def _someone_waits_on_an_advisory_lock() -> bool:
    from django.db import connections

    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return cursor.fetchone()[0] > 0


def test_a_full_timeline_stays_compact_in_redis(make_user, store, settings):
    """800 ids of 13 digits (as a busy site's would be) cost at most 3 times their raw 8 bytes."""
    reader = make_user()
    timelines.begin_rebuild(reader.pk)
    ids = [10**12 + 37 * i for i in range(settings.TIMELINE_CAP)]
    timelines.finish_rebuild(reader.pk, ids)
    for tweet_id in ids[:50]:  # and as fan-out keeps writing into it
        timelines.add(tweet_id=tweet_id + 10**11, user_ids=[reader.pk])

    key = timelines.key(reader.pk)
    assert store.zcard(key) == settings.TIMELINE_CAP + 1  # capped, sentinel kept
    assert store.object("encoding", key) in (b"listpack", b"ziplist")
    assert store.memory_usage(key) <= 3 * 8 * settings.TIMELINE_CAP


def test_a_timeline_nobody_reads_leaves_redis_and_fanout_stops_writing_to_it(make_user, settings, store):
    settings.TIMELINE_IDLE_DAYS = 7
    reader, author = make_user(), make_user()
    follow_create(follower=reader, followee=author)
    materialize(reader)
    key = timelines.key(reader.pk)
    assert 6 * 86400 < store.ttl(key) <= 7 * 86400
    store.expire(key, 3600)  # six days and 23 hours later...
    home_ids(reader)  # ...the reader comes back: a read renews the idle lifetime
    assert store.ttl(key) > 6 * 86400

    store.delete(key)  # a week of nobody reading: Redis drops it
    tweet = post(author)
    delivery.deliver_tweet(tweet_id=tweet.pk)
    assert not store.exists(key)  # fan-out did not bring it back...
    assert Fanout.objects.get(pk=tweet.pk).delivered == 1
    assert home_ids(reader) == [tweet.pk]  # ...and the next read rebuilds it, tweet included
