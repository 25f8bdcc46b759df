"""Deleting a tweet: the API's answers, the removal job on a real RQ worker, the relay, a fan-out
racing the delete, the live event on the real channel layer, and the no-JavaScript and admin
paths, which go through the same service."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from django_rq import get_queue

from fanout import delivery, presence, retraction, timelines
from fanout.admission import FANOUT_QUEUE
from fanout.models import Fanout, Retraction
from tests.test_live import connect
from timeline import selectors, services
from timeline.models import Follow, Tweet

pytestmark = pytest.mark.django_db(transaction=True)


def post(author, body="hello"):
    return services.tweet_create(author=author, body=body, client_id=uuid.uuid4()).tweet


def delete(client, tweet_id):
    return client.delete(f"/api/tweets/{tweet_id}")


def holders(store, users, tweet_id) -> list[int]:
    """Those of ``users`` whose home timeline holds the tweet."""
    return [u.pk for u in users if store.zscore(timelines.key(u.pk), tweet_id) is not None]


def author_with_readers(make_user, count: int):
    author = make_user()
    readers = [make_user() for _ in range(count)]
    for reader in readers:
        Follow.objects.create(follower=reader, followee=author)
        selectors.home_timeline(user=reader)  # materialized
    return author, readers


def test_only_the_author_deletes_and_nobody_learns_of_others_tweets(make_user, client_for):
    author, stranger = make_user(), make_user()
    tweet = post(author)
    as_author, as_stranger = client_for(author), client_for(stranger)

    assert delete(as_stranger, tweet.pk).status_code == 404
    assert delete(as_stranger, tweet.pk + 1000).status_code == 404  # the same answer as for none
    assert Tweet.objects.filter(pk=tweet.pk).exists()

    assert delete(as_author, tweet.pk).status_code == 204
    assert not Tweet.objects.filter(pk=tweet.pk).exists() and not Fanout.objects.filter(pk=tweet.pk).exists()
    assert delete(as_author, tweet.pk).status_code == 204  # idempotent
    assert delete(as_stranger, tweet.pk).status_code == 404  # still says nothing
    assert as_author.get(f"/api/tweets/{tweet.pk}").status_code == 404
    assert Retraction.objects.filter(pk=tweet.pk, author=author).count() == 1


def test_two_deletes_at_once_both_succeed_and_delete_once(make_user):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    tweet = post(make_user())
    barrier = threading.Barrier(2)

    def delete_it():
        try:
            barrier.wait(timeout=5)
            services.tweet_delete(user=tweet.author, tweet_id=tweet.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(delete_it) for _ in range(2)]:
            done.result(timeout=30)  # neither raised
    assert not Tweet.objects.filter(pk=tweet.pk).exists()
    assert Retraction.objects.filter(pk=tweet.pk).count() == 1


def test_a_delete_needs_a_login_and_the_csrf_token(make_user, client_for):
    from django.test import Client

    tweet = post(make_user())
    assert Client().delete(f"/api/tweets/{tweet.pk}").status_code == 401
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(tweet.author)
    assert strict.delete(f"/api/tweets/{tweet.pk}").status_code == 403
    assert Tweet.objects.filter(pk=tweet.pk).exists()


def test_a_deleted_tweet_leaves_every_timeline_it_reached(make_user, client_for, run_worker, store, settings):
    settings.FANOUT_BATCH_SIZE = 3  # several batches, on the removal's side too
    author, readers = author_with_readers(make_user, 7)
    kept, gone = post(author, "kept"), post(author, "gone")
    run_worker()
    assert holders(store, readers, gone.pk) == [r.pk for r in readers]
    selectors.user_tweets(author=author)  # the author's own timeline in Redis too

    assert delete(client_for(author), gone.pk).status_code == 204
    # The author's own timelines at once, in the request; the followers' by the job.
    assert store.zscore(timelines.key(author.pk), gone.pk) is None
    run_worker()

    assert holders(store, readers, gone.pk) == []
    assert holders(store, readers, kept.pk) == [r.pk for r in readers]
    assert Retraction.objects.get(pk=gone.pk).done_at is not None
    for reader in readers:
        assert [t.pk for t in selectors.home_timeline(user=reader).tweets] == [kept.pk]


def test_a_big_accounts_deleted_tweet_leaves_its_merged_timeline(make_user, client_for, run_worker, store, settings):
    settings.FANOUT_ON_READ_THRESHOLD = 2
    author, readers = author_with_readers(make_user, 3)
    tweet = post(author, "from a big account")
    run_worker()
    assert Fanout.objects.get(pk=tweet.pk).mode == Fanout.Mode.READ
    assert [t.pk for t in selectors.home_timeline(user=readers[0]).tweets] == [tweet.pk]

    assert delete(client_for(author), tweet.pk).status_code == 204
    run_worker()

    assert store.zscore(timelines.author_key(author.pk), tweet.pk) is None
    assert all(selectors.home_timeline(user=r).tweets == [] for r in readers)


def test_a_fanout_racing_the_delete_never_brings_the_tweet_back(make_user, store, settings, monkeypatch):
    """The worst order: the fan-out wrote and confirmed a batch, then the delete commits and its
    removal job runs through every follower, and only then does the fan-out write its next batch."""
    settings.FANOUT_BATCH_SIZE = 2
    author, readers = author_with_readers(make_user, 6)
    tweet = post(author)
    real_add = timelines.add
    batches = []

    def delete_before_the_second_batch(**kwargs):
        if len(batches) == 1:
            services.tweet_delete(user=author, tweet_id=tweet.pk)
            assert retraction.retract(tweet.pk)  # the job, run to the end before the next write
        batches.append(kwargs["user_ids"])
        real_add(**kwargs)

    monkeypatch.setattr(delivery.timelines, "add", delete_before_the_second_batch)
    delivery.deliver_tweet(tweet_id=tweet.pk)

    assert len(batches) == 2  # it wrote one batch after the delete, and stopped at its renewal
    assert holders(store, readers, tweet.pk) == []


def test_a_removal_whose_job_was_lost_is_queued_again_by_the_relay(make_user, client_for, run_worker, store, redis):
    author, readers = author_with_readers(make_user, 2)
    tweet = post(author)
    run_worker()
    assert delete(client_for(author), tweet.pk).status_code == 204
    redis.delete(f"rq:queue:{FANOUT_QUEUE}")  # Redis lost the job
    assert retraction.relay() == 0  # too young: its request may still be queueing it

    Retraction.objects.filter(pk=tweet.pk).update(enqueued_at=timezone.now() - timedelta(minutes=1))
    assert retraction.relay() == 1
    assert retraction.relay() == 0  # on the queue now: not queued twice
    assert get_queue(FANOUT_QUEUE).job_ids == [retraction.job_id(tweet.pk)]
    run_worker()

    assert holders(store, readers, tweet.pk) == []
    assert Retraction.objects.get(pk=tweet.pk).done_at is not None
    assert retraction.relay() == 0


async def test_open_pages_of_followers_and_the_author_are_told(make_user):
    author, reader, stranger = [await sync_to_async(make_user)() for _ in range(3)]
    await sync_to_async(Follow.objects.create)(follower=reader, followee=author)
    tweet = await sync_to_async(post)(author)
    sockets = {}
    for user in (author, reader, stranger):
        sockets[user.pk], connected = await connect(user)
        assert connected
    assert len(await sync_to_async(presence.online_among)([author.pk, reader.pk, stranger.pk])) == 3

    await sync_to_async(services.tweet_delete)(user=author, tweet_id=tweet.pk)
    await sync_to_async(retraction.retract)(tweet.pk)

    told = {"type": "tweet.deleted", "tweet_id": tweet.pk}
    assert await sockets[reader.pk].receive_json_from(timeout=5) == told
    assert await sockets[author.pk].receive_json_from(timeout=5) == told  # from the request
    assert await sockets[stranger.pk].receive_nothing(timeout=0.3)
    for socket in sockets.values():
        await socket.disconnect()


def test_the_plain_form_deletes_and_goes_back(make_user, client_for):
    author, stranger = make_user(), make_user()
    tweet = post(author)
    page = f"/u/{author.username}/"
    mine = client_for(author).get(page).content.decode()
    assert f'action="/tweets/{tweet.pk}/delete"' in mine
    assert 'class="tweet-delete" method="post" action="/tweets/' in mine
    theirs = client_for(stranger).get(page).content.decode()
    assert f'action="/tweets/{tweet.pk}/delete" hidden' in theirs  # no button on others' tweets

    refused = client_for(stranger).post(f"/tweets/{tweet.pk}/delete", {"next": page})
    assert refused.status_code == 404
    done = client_for(author).post(f"/tweets/{tweet.pk}/delete", {"next": page})
    assert (done.status_code, done["Location"]) == (302, page)
    assert not Tweet.objects.filter(pk=tweet.pk).exists()
    elsewhere = client_for(author).post(f"/tweets/{tweet.pk}/delete", {"next": "https://evil.example/"})
    assert (elsewhere.status_code, elsewhere["Location"]) == (302, "/")


def test_the_admins_delete_goes_through_the_service(make_user, client_for, run_worker, store):
    author, readers = author_with_readers(make_user, 2)
    tweet = post(author)
    run_worker()
    staff = make_user()
    staff.is_staff = staff.is_superuser = True
    staff.save()

    answer = client_for(staff).post(f"/admin/timeline/tweet/{tweet.pk}/delete/", {"post": "yes"})
    assert answer.status_code == 302
    run_worker()

    assert not Tweet.objects.filter(pk=tweet.pk).exists()
    assert Retraction.objects.get(pk=tweet.pk).done_at is not None
    assert holders(store, readers, tweet.pk) == []
