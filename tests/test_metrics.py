"""/metrics for Prometheus: who may read it, that prometheus_client's own parser reads it, that
the figures move with the app, and that several real processes add up (multi-process mode)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from fanout.redis_server import RedisServer
from tests.conftest import post_json, session_cookie, start_live_app, wait_for
from timeline.models import Tweet

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "scrape-" + "t" * 24


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, sorted labels): the parser raises on anything malformed."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def post(client, client_id=None):
    payload = {"body": "measured", "client_id": client_id or str(uuid.uuid4())}
    return client.post("/api/tweets", data=json.dumps(payload), content_type="application/json")


def test_metrics_are_for_staff_or_the_token_only(make_user, client_for, settings):
    settings.METRICS_TOKEN = TOKEN
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert client_for(make_user()).get("/metrics").status_code == 403
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", "Bearer \u00e9\u00e9\u00e9", TOKEN):
        assert Client().get("/metrics", HTTP_AUTHORIZATION=wrong).status_code == 401, wrong

    by_token = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    staff = make_user()
    staff.is_staff = True
    staff.save()
    by_staff = client_for(staff).get("/metrics")
    for answer in (by_token, by_staff):
        assert answer.status_code == 200
        assert answer["Content-Type"].startswith("text/plain; version=")
        assert ("timeline_queue_cap", ()) in samples(answer.content.decode())


def test_no_token_configured_means_staff_only(make_user, settings):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_the_figures_follow_the_queue_the_limits_and_the_requests(make_user, client_for, settings, run_worker):
    settings.METRICS_TOKEN, settings.FANOUT_QUEUE_CAP, settings.TWEET_RATE_LIMIT = TOKEN, 2, 0
    scrape = lambda: samples(Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())  # noqa: E731
    before = scrape()
    client = client_for(make_user())

    assert [post(client).status_code for _ in range(3)] == [202, 202, 503]
    settings.FANOUT_QUEUE_CAP, settings.TWEET_RATE_LIMIT = 0, 1
    assert [post(client).status_code for _ in range(2)] == [202, 429]

    full = scrape()
    assert value(full, "timeline_queue_depth") == 3 and value(full, "timeline_queue_cap") == 0
    assert value(full, "timeline_posts_admitted_total") - value(before, "timeline_posts_admitted_total") == 3
    shed = value(full, "timeline_posts_shed_total", limit="queue") - value(
        before, "timeline_posts_shed_total", limit="queue"
    )
    assert shed == 1
    assert value(full, "timeline_rate_limited_total") - value(before, "timeline_rate_limited_total") == 1
    posts = dict(view="api:tweets", method="POST", status="2xx")
    assert (
        value(full, "timeline_http_request_duration_seconds_count", **posts)
        - value(before, "timeline_http_request_duration_seconds_count", **posts)
        == 3
    )

    run_worker()
    drained = scrape()
    assert value(drained, "timeline_queue_depth") == 0
    assert (
        value(drained, "timeline_fanouts_total", mode="write") - value(before, "timeline_fanouts_total", mode="write")
        == 3
    )
    assert (
        value(drained, "timeline_fanout_queue_wait_seconds_count")
        - value(before, "timeline_fanout_queue_wait_seconds_count")
        == 3
    )
    assert value(drained, "rq_jobs", queue="fanout", status="queued") == 0  # django-rq's collector too


@pytest.mark.e2e
def test_several_processes_add_up(make_user, tmp_path):
    """Two daphne processes and a worker, each writing its own files: one scrape sees them all."""
    redis = RedisServer(tmp_path / "redis").start()
    (tmp_path / "prometheus").mkdir()
    app = start_live_app(
        tmp_path / "logs",
        redis_url=redis.url,
        webs=2,
        PROMETHEUS_MULTIPROC_DIR=str((tmp_path / "prometheus").resolve()),
        METRICS_TOKEN=TOKEN,
    )
    try:
        author, reader = make_user(), make_user()
        web0, web1 = app.urls
        host1 = web1.removeprefix("http://")
        with ws_connect(
            f"ws://{host1}/ws/timeline/",
            additional_headers={"Cookie": session_cookie(reader)},
            origin=web1,
        ):
            status, _, answer = post_json(
                web0 + "/api/tweets", {"body": "counted", "client_id": str(uuid.uuid4())}, cookie=session_cookie(author)
            )
            assert status == 202, answer
            wait_for(
                lambda: Tweet.objects.filter(pk=answer["tweet"]["id"], fanout__state="done").exists(),
                timeout=20,
                what="the fan-out is done",
            )

            def scraped() -> dict:
                request = urllib.request.Request(web0 + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    return samples(response.read().decode())

            found = wait_for(
                lambda: (s := scraped()) and value(s, "timeline_fanouts_total", mode="write") >= 1 and s,
                timeout=10,
                what="the worker's fan-out in the scrape",
            )
            posts = value(
                found, "timeline_http_request_duration_seconds_count", view="api:tweets", method="POST", status="2xx"
            )
            assert posts == 1  # counted by web0
            sockets = [v for (name, labels), v in found.items() if name == "timeline_websocket_connections"]
            assert sum(sockets) == 1  # the reader's, on web1: per process, summed by the reader
    finally:
        app.stop()
        redis.stop()


def test_the_rq_dashboard_links_to_these_metrics(make_user, client_for):
    staff = make_user()
    staff.is_staff = staff.is_superuser = True
    staff.save()
    client = client_for(staff)
    dashboard = client.get("/admin/rq/")
    assert dashboard.status_code == 200
    assert 'href="/admin/rq/metrics/"' in dashboard.content.decode()
    followed = client.get("/admin/rq/metrics/", follow=True)
    assert followed.redirect_chain == [("/metrics", 302)] and followed.status_code == 200
