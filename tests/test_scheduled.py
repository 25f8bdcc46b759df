"""Scheduled tweets: the API's answers, publication by a real RQ worker with RQ's scheduler,
admission at publication, the relay re-arming what Redis lost, cancelling, the live event and the
no-JavaScript form. The end-to-end runs (everything restarted, Redis emptied) are at the end."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone
from django_rq import get_queue
from redis import Redis

from fanout import scheduled, timelines
from fanout.admission import FANOUT_QUEUE, SCHEDULED_QUEUE
from fanout.models import Fanout, Schedule
from fanout.worker import make_worker
from tests.conftest import post_json, restart_without_data, session_cookie, wait_for
from tests.test_live import connect
from timeline import selectors, services
from timeline.models import Follow, Tweet

pytestmark = pytest.mark.django_db(transaction=True)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def schedule_via_api(client, *, body="later", at=None, client_id=None):
    at = at or timezone.now() + timedelta(hours=1)
    payload = {"body": body, "client_id": client_id or str(uuid.uuid4()), "publish_at": iso(at)}
    return client.post("/api/tweets", payload, content_type="application/json")


def schedule(author, *, body="later", seconds=3600.0) -> Tweet:
    at = timezone.now() + timedelta(seconds=seconds)
    return services.tweet_schedule(author=author, body=body, client_id=uuid.uuid4(), publish_at=at).tweet


def make_due(tweet: Tweet, *, ago: float = 0.1) -> None:
    """Move a scheduled tweet's time (and its outbox's) into the past, as if it had come."""
    moment = timezone.now() - timedelta(seconds=ago)
    Tweet.scheduled.filter(pk=tweet.pk).update(publish_at=moment)
    Schedule.objects.filter(pk=tweet.pk).update(due_at=moment)


def scheduled_job_ids() -> list[str]:
    return get_queue(SCHEDULED_QUEUE).scheduled_job_registry.get_job_ids()


def run_scheduler_and_worker() -> None:
    """A real worker in burst mode with RQ's scheduler: due jobs are moved onto the queue, then run."""
    make_worker().work(burst=True, with_scheduler=True)


def published(author, client_id) -> Tweet | None:
    return Tweet.objects.filter(author=author, client_id=client_id).first()


# -- the API --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("publish_at", "says"),
    [
        ("2026-12-01T09:30:00", "zone"),  # no zone
        ("tomorrow at nine", "ISO 8601"),
        ("2026-13-01T09:30:00Z", "ISO 8601"),
        (12345, "string"),
        ("9" * 10000, "ISO 8601"),
        ("past", "passed"),
        ("far", "30 days"),
        ("0001-01-01T00:00:00+23:59", "passed"),  # the edges of what Python's datetime holds
        ("9999-12-31T23:59:59-23:59", "30 days"),
        ("2026-12-01T09:30:00+24:00", "ISO 8601"),
        ("2026-12-01T09:30:00\x00Z", "ISO 8601"),
    ],
)
def test_a_bad_publish_at_is_refused_and_changes_nothing(make_user, client_for, publish_at, says):
    author = make_user()
    if publish_at == "past":
        publish_at = iso(timezone.now() - timedelta(seconds=5))
    elif publish_at == "far":
        publish_at = iso(timezone.now() + timedelta(days=30, minutes=5))
    answer = client_for(author).post(
        "/api/tweets",
        {"body": "hi", "client_id": str(uuid.uuid4()), "publish_at": publish_at},
        content_type="application/json",
    )
    assert answer.status_code == 400, answer.content
    assert says in answer.json()["error"]["fields"]["publish_at"]
    assert not Tweet.all_objects.exists() and not Schedule.objects.exists()
    assert scheduled_job_ids() == [] and get_queue(SCHEDULED_QUEUE).count == 0


def test_a_scheduled_tweet_is_stored_armed_and_shown_to_nobody_but_its_author(make_user, client_for, store):
    author, follower, stranger = make_user(), make_user(), make_user()
    Follow.objects.create(follower=follower, followee=author)
    at = timezone.now() + timedelta(hours=2)
    client_id = str(uuid.uuid4())

    answer = schedule_via_api(client_for(author), body="see you #later", at=at, client_id=client_id)
    assert answer.status_code == 202, answer.content
    made = answer.json()
    tweet_id = made["tweet"]["id"]
    assert made["fanout"] is None
    assert datetime.fromisoformat(made["tweet"]["publish_at"]) == at
    assert scheduled_job_ids() == [scheduled.job_id(tweet_id, 0)]
    assert Schedule.objects.get(pk=tweet_id).due_at == at

    # A retry (the answer was lost) finds it: one row, one job.
    again = schedule_via_api(client_for(author), body="see you #later", at=at, client_id=client_id)
    assert (again.status_code, again.json()["tweet"]["id"]) == (200, tweet_id)
    assert Tweet.all_objects.count() == 1 and len(scheduled_job_ids()) == 1

    # Nowhere to read but the author's own list.
    for reader in (author, follower, stranger):
        client = client_for(reader)
        assert client.get(f"/api/tweets/{tweet_id}").status_code == 404
        assert client.get("/api/timeline/home").json()["tweets"] == []
        assert client.get(f"/api/users/{author.username}/tweets").json()["tweets"] == []
        assert client.get("/tags/later/").content.decode().count("see you") == 0
    assert not Fanout.objects.exists() and store.zcard(timelines.key(follower.pk)) <= 1
    listed = client_for(author).get("/api/tweets/scheduled").json()["tweets"]
    assert [t["id"] for t in listed] == [tweet_id]
    assert client_for(stranger).get("/api/tweets/scheduled").json()["tweets"] == []
    assert "see you" in client_for(author).get(f"/u/{author.username}/").content.decode()
    assert "see you" not in client_for(stranger).get(f"/u/{author.username}/").content.decode()


def test_scheduling_counts_against_the_rate_limit(make_user, client_for, settings):
    settings.TWEET_RATE_LIMIT = 2
    client = client_for(make_user())
    assert [schedule_via_api(client).status_code for _ in range(3)] == [202, 202, 429]
    assert Tweet.all_objects.count() == 2


def test_an_author_has_a_bounded_number_waiting(make_user, client_for, monkeypatch):
    monkeypatch.setattr(services, "SCHEDULED_MAX_PER_AUTHOR", 2)
    client = client_for(make_user())
    answers = [schedule_via_api(client) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 400]
    assert "cancel one" in answers[2].json()["error"]["fields"]["publish_at"]


def test_cancelling_is_the_authors_only_idempotent_and_disarms_the_job(make_user, client_for):
    author, stranger = make_user(), make_user()
    tweet = schedule(author)
    assert scheduled_job_ids() == [scheduled.job_id(tweet.pk, 0)]

    assert client_for(stranger).delete(f"/api/tweets/{tweet.pk}").status_code == 404
    assert Tweet.scheduled.filter(pk=tweet.pk).exists()
    assert client_for(author).delete(f"/api/tweets/{tweet.pk}").status_code == 204
    assert client_for(author).delete(f"/api/tweets/{tweet.pk}").status_code == 204
    assert client_for(stranger).delete(f"/api/tweets/{tweet.pk}").status_code == 404
    assert not Tweet.all_objects.exists() and not Schedule.objects.exists()
    assert scheduled_job_ids() == []
    assert client_for(author).get("/api/tweets/scheduled").json()["tweets"] == []
    # A job that escaped the cancel (already on the queue) publishes nothing.
    assert services.tweet_publish_scheduled(tweet.pk) is None
    assert not Tweet.all_objects.exists()


# -- publication ----------------------------------------------------------------------------------


def test_a_due_tweet_is_published_by_rqs_scheduler_on_top_of_timelines(make_user, store):
    author, follower = make_user(), make_user()
    Follow.objects.create(follower=follower, followee=author)
    selectors.home_timeline(user=follower)  # materialized
    tweet = schedule(author, body="on time", seconds=1.5)
    between = services.tweet_create(author=author, body="posted meanwhile", client_id=uuid.uuid4()).tweet

    run_scheduler_and_worker()  # not due yet: the scheduler leaves it
    assert Tweet.scheduled.filter(pk=tweet.pk).exists() and published(author, tweet.client_id) is None

    def went_out():
        run_scheduler_and_worker()
        return published(author, tweet.client_id)

    out = wait_for(went_out, timeout=15, what="the scheduled tweet published")
    assert out.created_at >= tweet.publish_at  # never before its time
    assert out.pk > between.pk and out.body == "on time"  # a new id: on top, like a new post
    assert not Tweet.all_objects.filter(pk=tweet.pk).exists() and not Schedule.objects.exists()
    run_scheduler_and_worker()  # its fan-out
    assert Fanout.objects.get(pk=out.pk).state == Fanout.State.DONE
    assert store.zrevrange(timelines.key(follower.pk), 0, 0) == [str(out.pk).encode()]
    assert selectors.home_timeline(user=follower).tweets[0].pk == out.pk


def test_a_retry_after_publication_gets_the_published_tweet(make_user, client_for):
    author = make_user()
    client_id = str(uuid.uuid4())
    made = schedule_via_api(client_for(author), client_id=client_id).json()["tweet"]
    make_due(Tweet.all_objects.get(pk=made["id"]))
    out = services.tweet_publish_scheduled(made["id"])

    again = schedule_via_api(client_for(author), client_id=client_id)
    assert again.status_code == 200
    assert again.json()["tweet"]["id"] == out.pk and again.json()["fanout"]["state"] in ("queued", "pending")
    assert Tweet.all_objects.count() == 1


def test_a_full_queue_puts_publication_off_and_it_goes_out_later(make_user, settings, redis):
    settings.FANOUT_QUEUE_CAP = 1
    author = make_user()
    tweet = schedule(author)
    make_due(tweet)
    redis.rpush(f"rq:queue:{FANOUT_QUEUE}", "someone-elses-fanout")  # the queue is full

    before = timezone.now()
    assert services.tweet_publish_scheduled(tweet.pk) is None
    row = Schedule.objects.get(pk=tweet.pk)
    assert row.attempts == 1 and "queue full" in row.last_error
    assert row.due_at > before  # put off by the Retry-After (and a random share of it)
    assert scheduled.job_id(tweet.pk, 1) in scheduled_job_ids()  # (attempt 0's ran this, in life)
    assert Tweet.scheduled.filter(pk=tweet.pk).exists()  # waiting, not dropped

    redis.delete(f"rq:queue:{FANOUT_QUEUE}")  # drained
    Schedule.objects.filter(pk=tweet.pk).update(due_at=timezone.now())
    out = services.tweet_publish_scheduled(tweet.pk)
    assert out is not None and published(author, tweet.client_id) == out


def test_two_publications_at_once_make_one_tweet(make_user):
    author = make_user()
    tweet = schedule(author)
    make_due(tweet)
    barrier = threading.Barrier(2)

    def publish():
        try:
            barrier.wait(timeout=5)
            return services.tweet_publish_scheduled(tweet.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: publish(), range(2)))
    assert sum(r is not None for r in results) == 1
    assert Tweet.all_objects.filter(author=author).count() == 1 and Fanout.objects.count() == 1


def test_the_relay_arms_again_what_redis_lost_and_takes_over_late_ones(make_user, redis):
    author = make_user()
    soon, overdue = schedule(author, seconds=10), schedule(author, body="overdue")
    make_due(overdue, ago=5)
    for key in redis.keys("rq:*"):  # Redis restarted empty
        if b"scheduler" not in key:
            redis.delete(key)

    assert scheduled.relay() == 2
    assert scheduled_job_ids() == [scheduled.job_id(soon.pk, 0)]  # the same attempt, for its time
    assert get_queue(SCHEDULED_QUEUE).job_ids == [scheduled.job_id(overdue.pk, 1)]  # a new one, now
    assert Schedule.objects.get(pk=overdue.pk).attempts == 1
    assert scheduled.relay() == 0  # armed: not twice

    run_scheduler_and_worker()
    assert published(author, overdue.client_id) is not None
    assert published(author, soon.client_id) is None


def test_a_publication_late_on_the_scheduler_is_put_on_the_queue(make_user):
    # RQ's scheduler is not running (its lock is held by a killed worker, say): the job waits
    # in the registry past its time, and the relay queues a new attempt.
    author = make_user()
    tweet = schedule(author)
    Tweet.scheduled.filter(pk=tweet.pk).update(publish_at=timezone.now() - timedelta(seconds=5))
    Schedule.objects.filter(pk=tweet.pk).update(due_at=timezone.now() - timedelta(seconds=5))
    assert scheduled.relay() == 1
    make_worker().work(burst=True)  # no scheduler
    assert published(author, tweet.client_id) is not None


async def test_the_authors_open_pages_get_the_published_tweet(make_user):
    author = await sync_to_async(make_user)()
    tweet = await sync_to_async(schedule)(author, body="hello from the past")
    await sync_to_async(make_due)(tweet)
    socket, connected = await connect(author)
    assert connected
    out = await sync_to_async(services.tweet_publish_scheduled)(tweet.pk)
    event = await socket.receive_json_from(timeout=5)
    assert (event["type"], event["tweet"]["id"], event["tweet"]["body"]) == ("tweet.new", out.pk, "hello from the past")
    assert "publish_at" not in event["tweet"]
    await socket.disconnect()


# -- the page without JavaScript ------------------------------------------------------------------


def test_the_plain_form_schedules_in_utc_and_the_profile_cancels(make_user, client_for):
    author = make_user()
    client = client_for(author)
    at = (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
    local = at.strftime("%Y-%m-%dT%H:%M")  # what a datetime-local input sends: no zone
    answer = client.post("/tweets/new", {"body": "from the form", "client_id": str(uuid.uuid4()), "publish_at": local})
    assert answer.status_code == 302
    tweet = Tweet.scheduled.get()
    assert tweet.publish_at == at
    home = client.get("/").content.decode()
    assert "Scheduled for" in home and "UTC" in home

    profile = client.get(f"/u/{author.username}/").content.decode()
    assert f'data-scheduled-id="{tweet.pk}"' in profile
    cancelled = client.post(f"/tweets/{tweet.pk}/delete", {"next": f"/u/{author.username}/"})
    assert cancelled.status_code == 302
    assert "will not go out" in client.get(cancelled["Location"]).content.decode()
    assert not Tweet.all_objects.exists()

    refused = client.post(
        "/tweets/new", {"body": "x", "client_id": str(uuid.uuid4()), "publish_at": "2020-01-01T00:00"}
    )
    assert refused.status_code == 400 and "passed" in refused.content.decode()


def test_staff_cancel_in_the_admin_through_the_same_service(make_user, client_for):
    tweet = schedule(make_user())
    staff = make_user(is_staff=True, is_superuser=True)
    listed = client_for(staff).get("/admin/fanout/schedule/")
    assert listed.status_code == 200 and "later" in listed.content.decode()
    answer = client_for(staff).post(f"/admin/fanout/schedule/{tweet.pk}/delete/", {"post": "yes"})
    assert answer.status_code == 302
    assert not Tweet.all_objects.exists() and scheduled_job_ids() == []
    assert client_for(tweet.author).delete(f"/api/tweets/{tweet.pk}").status_code == 204  # cancelled already


# -- end to end: real processes, restarted; Redis emptied -----------------------------------------


@pytest.mark.e2e
@pytest.mark.faults
def test_a_scheduled_tweet_goes_out_after_everything_was_restarted(app_factory, private_redis):
    app = app_factory(workers=2)
    author = services.user_signup(username=f"s{uuid.uuid4().hex[:8]}", password="a-long-test-password")
    at = timezone.now() + timedelta(seconds=6)
    client_id = str(uuid.uuid4())
    status, _, made = post_json(
        f"{app.url}/api/tweets",
        {"body": "restart-proof", "client_id": client_id, "publish_at": iso(at)},
        cookie=session_cookie(author),
    )
    assert status == 202, made
    app.stop()  # every process, as at a deploy
    time.sleep(0.5)
    app = app_factory(workers=2)

    out = wait_for(lambda: published(author, client_id), timeout=30, what="the tweet published after the restart")
    assert out.created_at >= at
    wait_for(lambda: Fanout.objects.get(pk=out.pk).state == Fanout.State.DONE, timeout=15, what="its fan-out")


@pytest.mark.e2e
@pytest.mark.faults
def test_a_scheduled_tweet_goes_out_after_redis_lost_its_data(app_factory, private_redis):
    app_factory(workers=1)
    author = services.user_signup(username=f"s{uuid.uuid4().hex[:8]}", password="a-long-test-password")
    ids = [
        services.tweet_schedule(
            author=author, body=f"n{i}", client_id=uuid.uuid4(), publish_at=timezone.now() + timedelta(seconds=s)
        ).tweet.client_id
        for i, s in enumerate((4, 20))
    ]
    restart_without_data(private_redis)  # the jobs on RQ's scheduler are gone

    wait_for(lambda: published(author, ids[0]), timeout=30, what="the tweet published after Redis lost it")
    assert Tweet.scheduled.filter(client_id=ids[1]).exists()  # the later one still waits
    assert wait_for(
        lambda: (
            scheduled.job_id(Tweet.scheduled.get(client_id=ids[1]).pk, 0).encode()
            in Redis.from_url(private_redis.url).zrange(f"rq:scheduled:{SCHEDULED_QUEUE}", 0, -1)
        ),
        timeout=20,
        what="the later one armed again on RQ's scheduler",
    )


# A worker and the scheduler it forks, the worker dying before the scheduler's process is under
# way (a busy machine): the death signal must wait for RQ's handler rather than end the process
# with its lock held. A program of its own, so the at-fork hook stays out of the test process.
DYING_BEFORE_THE_HANDLER = """
import os, sys, time
import django
django.setup()
from redis import Redis
from rq.scheduler import RQScheduler
from fanout.worker import FanoutScheduler, FanoutWorker, _end_with_the_worker

os.register_at_fork(after_in_child=_end_with_the_worker)
connection = Redis.from_url(os.environ["REDIS_URL"])
worker = FanoutWorker(["a-queue"], connection=connection)
worker.scheduler = RQScheduler(["a-queue"], connection=connection)
assert isinstance(worker.scheduler, FanoutScheduler)
parent = os.getpid()
if os.fork() == 0:  # the scheduler's process, slow to start
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.scheduler._install_signal_handlers()
    while not worker.scheduler._stop_requested and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(sys.argv[1], "w") as report:
        report.write("stop requested" if worker.scheduler._stop_requested else "still running")
    os._exit(0)
os._exit(0)  # the worker, gone at once
"""


def test_a_worker_dying_before_its_schedulers_handler_still_stops_it(tmp_path):
    report = tmp_path / "scheduler"
    subprocess.run([sys.executable, "-c", DYING_BEFORE_THE_HANDLER, str(report)], check=True, timeout=60)
    wait_for(report.exists, timeout=20, what="the scheduler's process to report (not killed outright)")
    assert report.read_text() == "stop requested"


@pytest.mark.e2e
@pytest.mark.faults
def test_a_killed_workers_scheduler_stops_and_gives_its_lock_up(app_factory, private_redis):
    app = app_factory(workers=1, cron=False)
    redis = Redis.from_url(private_redis.url)
    lock = f"rq:scheduler-lock:{SCHEDULED_QUEUE}"
    wait_for(lambda: redis.exists(lock), timeout=20, what="the worker's scheduler holding its lock")
    worker = app.processes["worker0"].pid

    def children() -> list[int]:
        with open(f"/proc/{worker}/task/{worker}/children") as listing:
            return [int(pid) for pid in listing.read().split()]

    scheduler = wait_for(children, timeout=10, what="the scheduler process")[0]
    app.kill("worker0")  # SIGKILL: no clean shutdown

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(")")[-1].split()[0] == "Z"  # a zombie: ended
        except FileNotFoundError:
            return True

    wait_for(lambda: gone(scheduler), timeout=10, what="the orphaned scheduler to stop")
    wait_for(lambda: not redis.exists(lock), timeout=5, what="its lock released")
