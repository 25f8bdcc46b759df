"""Faults injected into real processes: nothing accepted is lost, and recovery takes seconds.

Each test runs its own redis-server, daphne, workers and cron (the outbox relay) as real
processes, kills or stops some of them, and then waits, with a deadline, for the end state
the design promises: every accepted tweet ``done``, in every materialized follower's timeline,
counts true, nothing made twice.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import websockets.sync.client
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from redis import Redis
from rq import Queue

from fanout import timelines
from fanout.admission import FANOUT_QUEUE, job_id
from fanout.models import Fanout
from fanout.worker import SERIALIZER
from tests.conftest import (
    LiveApp,
    get_json,
    live_database_url,
    on_postgres,
    post_json,
    restart_without_data,
    session_cookie,
    wait_for,
)
from timeline.consumers import CLOSE_TRY_AGAIN_LATER
from timeline.models import Follow, Tweet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.faults]

User = get_user_model()

# The relay's bound with the default lease (5 s) and relay period (1 s), plus the time to
# finish the rest of the fan-out: what the design promises for a killed worker.
KILLED_WORKER_DEADLINE = 10.0


def author_with_followers(count: int, redis: Redis, *, materialized: bool = True) -> tuple[User, list[int]]:
    """An author and ``count`` followers made in bulk, their home timelines in Redis (empty)."""
    author = User.objects.create_user(username=f"author{uuid.uuid4().hex[:8]}", password="a-long-test-password")
    unusable = make_password(None)
    prefix = uuid.uuid4().hex[:6]
    User.objects.bulk_create([User(username=f"f{prefix}{i}", password=unusable) for i in range(count)], batch_size=2000)
    ids = list(User.objects.filter(username__startswith=f"f{prefix}").values_list("id", flat=True))
    Follow.objects.bulk_create([Follow(follower_id=i, followee=author) for i in ids], batch_size=2000)
    if materialized:
        with redis.pipeline(transaction=False) as pipe:
            for user_id in [author.pk, *ids]:
                pipe.zadd(timelines.key(user_id), {timelines.SENTINEL: 0})
            pipe.execute()
    return author, ids


def post(app: LiveApp, author, body: str = "hello", client_id: str | None = None) -> tuple[int, dict, dict]:
    payload = {"body": body, "client_id": client_id or str(uuid.uuid4())}
    return post_json(f"{app.url}/api/tweets", payload, cookie=session_cookie(author))


def accepted(app: LiveApp, author, body: str = "hello") -> int:
    status, _, data = post(app, author, body)
    assert status == 202, data
    return data["tweet"]["id"]


def fanout(tweet_id: int) -> Fanout:
    return Fanout.objects.get(pk=tweet_id)


def is_done(tweet_id: int) -> bool:
    return fanout(tweet_id).state == Fanout.State.DONE


def assert_delivered_once(tweet_id: int, follower_ids: list[int], redis: Redis) -> None:
    """Done, with true counts, and the tweet in every given (materialized) timeline."""
    row = fanout(tweet_id)
    assert (row.state, row.delivered, row.recipients) == ("done", len(follower_ids), len(follower_ids))
    assert row.lease_owner == "" and row.last_error == ""
    with redis.pipeline(transaction=False) as pipe:
        for user_id in follower_ids:
            pipe.zscore(timelines.key(user_id), tweet_id)
        scores = pipe.execute()
    missing = [u for u, score in zip(follower_ids, scores, strict=True) if score != tweet_id]
    assert not missing, f"{len(missing)} of {len(follower_ids)} timelines lack tweet {tweet_id}"


def test_a_worker_killed_mid_fanout_is_finished_by_another_within_seconds(app_factory, private_redis):
    redis = Redis.from_url(private_redis.url)
    # Small batches, so that the fan-out is long enough to be caught in the middle.
    app = app_factory(workers=2, FANOUT_BATCH_SIZE="50")
    author, followers = author_with_followers(10_000, redis)

    tweet_id = accepted(app, author)
    row = wait_for(
        lambda: (r := fanout(tweet_id)).state == "running" and len(followers) // 5 <= r.delivered and r,
        timeout=30,
        what="the fan-out to be a fifth of the way",
        every=0.002,
    )
    owner = next(
        name for name in ("worker0", "worker1") if app.processes[name].poll() is None and _busy(redis, name, app)
    )
    app.kill(owner)
    killed_at = time.monotonic()

    wait_for(lambda: is_done(tweet_id), timeout=KILLED_WORKER_DEADLINE, what="another worker to finish the fan-out")
    recovered_in = time.monotonic() - killed_at
    assert_delivered_once(tweet_id, followers, redis)
    finished = fanout(tweet_id)
    assert finished.attempts == 2 and finished.cursor >= row.cursor  # resumed, not restarted
    print(f"killed at {row.delivered}/{len(followers)}; done {recovered_in:.1f} s after the kill")


def _busy(redis: Redis, name: str, app: LiveApp) -> bool:
    """Whether the worker process ``name`` is the one running a job (RQ records its pid)."""
    pid = app.processes[name].pid
    for key in redis.smembers("rq:workers"):
        worker = redis.hgetall(key)
        if int(worker.get(b"pid", 0)) == pid:
            return worker.get(b"state") == b"busy"
    return False


def test_fanouts_waiting_when_redis_loses_its_data_are_all_delivered(app_factory, private_redis):
    redis = Redis.from_url(private_redis.url)
    app = app_factory(workers=0)  # nothing drains the queue: the fan-outs wait in Redis
    author, followers = author_with_followers(30, redis, materialized=False)
    tweet_ids = [accepted(app, author, f"waiting {i}") for i in range(5)]
    assert redis.llen(f"rq:queue:{FANOUT_QUEUE}") == 5

    restart_without_data(private_redis)
    assert redis.llen(f"rq:queue:{FANOUT_QUEUE}") == 0  # the only copy of the jobs is gone
    app.start_worker("worker0")

    wait_for(lambda: all(is_done(t) for t in tweet_ids), timeout=30, what="every lost fan-out to be delivered")
    for tweet_id in tweet_ids:
        row = fanout(tweet_id)
        assert (row.delivered, row.recipients) == (len(followers), len(followers))
    # Timelines went with the data; a reader's is rebuilt from the database, every tweet once.
    reader = session_cookie(User.objects.get(pk=followers[0]))
    status, _, page = get_json(f"{app.url}/api/timeline/home?limit=100", cookie=reader)
    assert status == 200 and [t["id"] for t in page["tweets"]] == sorted(tweet_ids, reverse=True)
    # The processes reconnected by themselves: a new post is accepted and delivered, and the
    # worker registered itself again, so staff see it.
    new_id = accepted(app, author, "after the restart")
    wait_for(lambda: is_done(new_id), timeout=15, what="a fan-out after the restart")
    wait_for(lambda: redis.scard("rq:workers") == 1, timeout=15, what="the worker to register again")


def get_page(url: str, cookie: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_redis_stopped_while_a_job_runs_and_people_post(app_factory, private_redis):
    redis = Redis.from_url(private_redis.url)
    app = app_factory(workers=1, FANOUT_BATCH_SIZE="50")
    author, followers = author_with_followers(10_000, redis)
    reader = User.objects.get(pk=followers[0])
    tweet_id = accepted(app, author, "in flight when Redis stops")
    wait_for(
        lambda: (r := fanout(tweet_id)).state == "running" and r.delivered > 0,
        timeout=30,
        what="the fan-out to be under way",
        every=0.005,
    )
    worker_pid = app.processes["worker0"].pid

    private_redis.stop()
    try:
        # Posting: a fast 503 with Retry-After, and nothing made.
        started = time.monotonic()
        status, headers, body = post(app, author, "while Redis is down")
        took = time.monotonic() - started
        assert status == 503 and int(headers["Retry-After"]) >= 1, body
        assert took < 2.0, f"a refused post waited {took:.1f} s on Redis"
        assert not Tweet.objects.filter(body="while Redis is down").exists()
        # Reading: the home page and the API answer from the database.
        cookie = session_cookie(reader)
        status, html = get_page(f"{app.url}/", cookie)
        assert status == 200 and "in flight when Redis stops" in html
        status, _, page = get_json(f"{app.url}/api/timeline/home", cookie=cookie)
        assert status == 200 and page["tweets"][0]["id"] == tweet_id
        # The socket: accepted, then closed with "try again later", never an HTTP 500.
        with websockets.sync.client.connect(
            app.ws_url(), additional_headers={"Cookie": cookie, "Origin": app.url}, open_timeout=10
        ) as socket:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                socket.recv(timeout=10)
        assert closed.value.rcvd.code == CLOSE_TRY_AGAIN_LATER
        # The fan-out fails or stalls, but its worker lives on.
        wait_for(
            lambda: fanout(tweet_id).state in ("failed", "running") and app.processes["worker0"].poll() is None,
            timeout=10,
            what="the worker to survive the outage",
        )
    finally:
        private_redis.start()

    wait_for(lambda: is_done(tweet_id), timeout=45, what="the interrupted fan-out to finish once Redis is back")
    assert_delivered_once(tweet_id, followers, redis)
    assert app.processes["worker0"].poll() is None and app.processes["worker0"].pid == worker_pid
    new_id = accepted(app, author, "after Redis came back")
    wait_for(lambda: is_done(new_id), timeout=15, what="a fan-out after the outage")
    assert not Tweet.objects.filter(body="while Redis is down").exists()


@contextlib.contextmanager
def database_locked() -> Iterator[None]:
    """Hold the fan-out table's write lock from another connection until the block ends."""
    if on_postgres():
        import psycopg

        with psycopg.connect(live_database_url().replace("postgres://", "postgresql://")) as lock:
            lock.execute("BEGIN")
            lock.execute("LOCK TABLE fanout_fanout IN ACCESS EXCLUSIVE MODE")
            yield
            lock.execute("COMMIT")
    else:
        lock = sqlite3.connect(settings.DATABASES["default"]["NAME"], timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # nobody else can write until this commits
        try:
            yield
        finally:
            lock.execute("COMMIT")
            lock.close()


def test_a_database_locked_past_the_busy_timeout_delays_a_fanout_but_loses_nothing(app_factory, private_redis):
    redis = Redis.from_url(private_redis.url)
    # Processes give up on a lock after 1 s (SQLite's busy timeout, PostgreSQL's lock_timeout),
    # so the lock below outlasts it many times.
    wait_1s = {"options": "-c%20lock_timeout%3D1000"} if on_postgres() else {"timeout": "1"}
    app = app_factory(workers=0, DATABASE_URL=live_database_url(**wait_1s))
    author, followers = author_with_followers(20, redis)
    tweet_id = accepted(app, author, "posted just before the lock")

    with database_locked():
        app.start_worker("worker0")
        # The worker cannot claim the row; its job fails, and it must not end the worker.
        wait_for(
            lambda: redis.zcard(f"rq:failed:{FANOUT_QUEUE}") >= 1,
            timeout=30,
            what="the first attempt to fail on the locked database",
        )
        assert app.processes["worker0"].poll() is None

    wait_for(lambda: is_done(tweet_id), timeout=30, what="the fan-out to be retried once the lock is gone")
    assert_delivered_once(tweet_id, followers, redis)
    assert app.processes["worker0"].poll() is None and app.processes["cron"].poll() is None


def test_daphne_killed_mid_burst_loses_and_duplicates_nothing(app_factory, private_redis):
    redis = Redis.from_url(private_redis.url)
    app = app_factory(workers=1)
    author, followers = author_with_followers(50, redis)
    cookie = session_cookie(author)
    client_ids = [str(uuid.uuid4()) for _ in range(60)]
    answered: dict[str, int] = {}
    sent = threading.Semaphore(0)

    def client(ids: list[str]) -> None:
        # A client that keeps its client_id across retries, as the browser does.
        for client_id in ids:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, _, data = post_json(
                        f"{app.url}/api/tweets", {"body": f"burst {client_id}", "client_id": client_id}, cookie=cookie
                    )
                except OSError:  # the connection died with the server: try again
                    status, data = None, {}
                if status in (200, 202):
                    answered[client_id] = data["tweet"]["id"]
                    sent.release()
                    break
                assert time.monotonic() < deadline, f"{client_id} never got an answer"
                time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(client_ids[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(20):  # a third of the burst is in
        assert sent.acquire(timeout=30)
    app.kill("daphne0")
    app.start("daphne0")
    for thread in threads:
        thread.join(timeout=90)

    assert sorted(answered) == sorted(client_ids)
    tweets = Tweet.objects.filter(author=author, body__startswith="burst ")
    assert tweets.count() == len(client_ids)  # one tweet per client_id: nothing twice
    assert set(tweets.values_list("pk", flat=True)) == set(answered.values())
    wait_for(lambda: all(is_done(t) for t in answered.values()), timeout=30, what="every accepted tweet delivered")
    for tweet_id in answered.values():
        assert_delivered_once(tweet_id, followers, redis)


def test_the_same_job_run_twice_at_once_delivers_once(app_factory, private_redis):
    redis = Redis.from_url(private_redis.url)
    app = app_factory(workers=0, FANOUT_BATCH_SIZE="50")
    author, followers = author_with_followers(5_000, redis)
    tweet_id = accepted(app, author)
    # A second copy of the same job, as a relay and a late request might both have queued it.
    Queue(FANOUT_QUEUE, connection=redis, serializer=SERIALIZER).enqueue_call(
        "fanout.jobs.fanout_tweet", args=(tweet_id,), job_id=job_id(tweet_id), result_ttl=0
    )
    assert redis.llen(f"rq:queue:{FANOUT_QUEUE}") == 2
    for name in ("worker0", "worker1"):
        app.start_worker(name)

    wait_for(lambda: is_done(tweet_id), timeout=30, what="the fan-out to finish")
    wait_for(lambda: redis.llen(f"rq:queue:{FANOUT_QUEUE}") == 0, timeout=10, what="both copies to be taken")
    assert_delivered_once(tweet_id, followers, redis)
    assert fanout(tweet_id).attempts == 1  # only one run ever claimed it
