"""The outbox owns the work: claims and leases, the relay's rules, deletes that the async path
respects, and seeding that never fights the queue. In-process, against the real Redis and RQ;
tests/test_faults.py does the same with real processes killed."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_rq import get_queue

from fanout import admission, delivery, timelines
from fanout.admission import FANOUT_QUEUE, job_id
from fanout.models import Fanout
from fanout.relay import GRACE, relay_fanouts
from timeline import selectors
from timeline.models import Follow, Tweet
from timeline.services import tweet_create

pytestmark = pytest.mark.django_db(transaction=True)


def post(author, body="hello"):
    return tweet_create(author=author, body=body, client_id=uuid.uuid4()).tweet


def queued_job_ids() -> list[str]:
    return get_queue(FANOUT_QUEUE).job_ids


def age(tweet_id: int, **fields) -> None:
    """Move the row's clocks back, as if ``fields`` (created_at, enqueued_at...) were long ago."""
    past = timezone.now() - GRACE - timedelta(seconds=1)
    Fanout.objects.filter(pk=tweet_id).update(**{name: past for name in fields})


def author_with_materialized_followers(make_user, count: int):
    author = make_user()
    followers = [make_user() for _ in range(count)]
    for follower in followers:
        Follow.objects.create(follower=follower, followee=author)
        timelines.begin_rebuild(follower.pk)
    return author, followers


def test_only_one_run_can_claim_a_fanout(make_user):
    tweet = post(make_user())
    first = delivery.claim(tweet.pk)
    assert first is not None
    assert delivery.claim(tweet.pk) is None  # a second run, at the same time: the lease is live
    row = Fanout.objects.get(pk=tweet.pk)
    assert (row.state, row.attempts, row.lease_owner) == ("running", 1, first[1])

    Fanout.objects.filter(pk=tweet.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    second = delivery.claim(tweet.pk)  # the owner died: its lease lapsed, and another run takes over
    assert second is not None and second[1] != first[1]
    assert Fanout.objects.get(pk=tweet.pk).attempts == 2


def test_a_run_that_lost_its_lease_stops_without_marking_anything(make_user, settings, store, monkeypatch):
    settings.FANOUT_BATCH_SIZE = 2
    author, followers = author_with_materialized_followers(make_user, 6)
    tweet = post(author)
    real_add = timelines.add

    def add_then_lose_the_lease(**kwargs):
        real_add(**kwargs)
        Fanout.objects.filter(pk=tweet.pk).update(lease_owner="someone-else")

    monkeypatch.setattr(delivery.timelines, "add", add_then_lose_the_lease)
    delivery.deliver_tweet(tweet_id=tweet.pk)

    row = Fanout.objects.get(pk=tweet.pk)
    assert (row.state, row.lease_owner, row.delivered) == ("running", "someone-else", 0)
    reached = [f for f in followers if store.zscore(timelines.key(f.pk), tweet.pk)]
    assert reached == followers[:2]  # it stopped after the batch that found the lease gone


def test_a_killed_run_is_resumed_after_its_cursor(make_user, settings, store, monkeypatch):
    settings.FANOUT_BATCH_SIZE = 3
    author = make_user()
    followers = [make_user() for _ in range(8)]
    for follower in followers:
        Follow.objects.create(follower=follower, followee=author)
    tweet = post(author)
    calls = []
    real_add = timelines.add

    def die_on_the_third_batch(**kwargs):
        calls.append(kwargs["user_ids"])
        if len(calls) == 3:
            raise SystemExit("killed")  # not an Exception: nothing records a failure, as with SIGKILL
        real_add(**kwargs)

    monkeypatch.setattr(delivery.timelines, "add", die_on_the_third_batch)
    with pytest.raises(SystemExit):
        delivery.deliver_tweet(tweet_id=tweet.pk)
    row = Fanout.objects.get(pk=tweet.pk)
    assert (row.state, row.delivered, row.cursor) == ("running", 6, followers[5].pk)

    monkeypatch.setattr(delivery.timelines, "add", lambda **kw: calls.append(kw["user_ids"]) or real_add(**kw))
    Fanout.objects.filter(pk=tweet.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    delivery.deliver_tweet(tweet_id=tweet.pk)

    assert calls[3] == [followers[6].pk, followers[7].pk]  # the taker-over started after the cursor
    row = Fanout.objects.get(pk=tweet.pk)
    assert (row.state, row.delivered, row.recipients, row.attempts) == ("done", 8, 8, 2)


def test_the_relay_queues_each_kind_of_abandoned_fanout_once(make_user, redis):
    author = make_user()
    pending, lost, lapsed, failed, alive, young, running = (post(author, f"t{i}").pk for i in range(7))
    redis.delete(f"rq:queue:{FANOUT_QUEUE}")  # every job gone, as when Redis lost its data...
    admission.push_job(alive)  # ...except this one, still waiting on the queue
    Fanout.objects.filter(pk=pending).update(state="pending")
    age(pending, created_at=True)
    age(lost, enqueued_at=True)
    age(alive, enqueued_at=True)
    Fanout.objects.filter(pk=lapsed).update(state="running", lease_expires_at=timezone.now() - timedelta(seconds=1))
    Fanout.objects.filter(pk=running).update(state="running", lease_expires_at=timezone.now() + timedelta(minutes=1))
    Fanout.objects.filter(pk=failed).update(state="failed", next_attempt_at=timezone.now())

    assert relay_fanouts() == 4
    assert sorted(queued_job_ids()) == sorted(job_id(t) for t in (pending, lost, lapsed, failed, alive))
    states = dict(Fanout.objects.values_list("pk", "state"))
    assert {states[t] for t in (pending, lost, lapsed, failed, alive, young)} == {"queued"}
    assert states[running] == "running"  # its worker is alive: left alone
    assert "lease lapsed" in Fanout.objects.get(pk=lapsed).last_error
    assert relay_fanouts() == 0  # queued once: the next round finds them on the queue


def test_a_pending_row_whose_job_is_queued_is_only_marked(make_user):
    tweet = post(make_user())
    Fanout.objects.filter(pk=tweet.pk).update(state="pending")  # its request could not mark it
    age(tweet.pk, created_at=True)
    assert relay_fanouts() == 0
    assert queued_job_ids() == [job_id(tweet.pk)]  # not pushed a second time
    assert Fanout.objects.get(pk=tweet.pk).state == "queued"


def test_a_fanout_stops_when_its_tweet_is_deleted_between_batches(make_user, settings, store, monkeypatch):
    settings.FANOUT_BATCH_SIZE = 2
    author, followers = author_with_materialized_followers(make_user, 6)
    tweet = post(author)
    real_add = timelines.add
    batches = []

    def add_then_delete(**kwargs):
        real_add(**kwargs)
        batches.append(kwargs["user_ids"])
        Tweet.objects.filter(pk=tweet.pk).delete()  # deleted mid-fan-out (its author deleted, say)

    monkeypatch.setattr(delivery.timelines, "add", add_then_delete)
    delivery.deliver_tweet(tweet_id=tweet.pk)

    # It stopped at its next renewal, and took the tweet back out of the batch it had written.
    assert batches == [[f.pk for f in followers[:2]]]
    assert not [f for f in followers if store.zscore(timelines.key(f.pk), tweet.pk)]


def test_ids_of_deleted_tweets_are_dropped_and_the_page_reads_on_past_them(make_user, store):
    reader, author = make_user(), make_user()
    Follow.objects.create(follower=reader, followee=author)
    tweets = [post(author, f"t{i}") for i in range(10)]
    selectors.home_timeline(user=reader)  # materialized
    gone = tweets[3:8]
    Tweet.objects.filter(pk__in=[t.pk for t in gone]).delete()  # their ids stay in Redis

    page = selectors.home_timeline(user=reader, limit=4)

    assert [t.pk for t in page.tweets] == [tweets[9].pk, tweets[8].pk, tweets[2].pk, tweets[1].pk]
    assert page.next_before == tweets[1].pk
    assert [t.pk for t in selectors.home_timeline(user=reader, limit=4, before=page.next_before).tweets] == [
        tweets[0].pk
    ]
    assert not any(store.zscore(timelines.key(reader.pk), t.pk) for t in gone)  # cleaned up


def test_seeding_ignores_a_full_queue_and_its_own_old_jobs(settings, redis):
    settings.FANOUT_QUEUE_CAP = 3
    redis.rpush(f"rq:queue:{FANOUT_QUEUE}", *[f"old-job-{i}" for i in range(5)])  # left by an earlier run
    call_command("seed_demo", fans=5, lesson_audience=5, stdout=open("/dev/null", "w"))
    call_command("seed_demo", fans=5, lesson_audience=5, stdout=open("/dev/null", "w"))  # and again, on the next start

    seeded = Tweet.objects.count()
    assert seeded >= 5 and Fanout.objects.filter(state="queued").count() == seeded
