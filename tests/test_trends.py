"""Trends: tags counted as posted, the window, the job the cron queues on a real worker, the
API and the page's panel, and trends.updated on the real channel layer."""

from __future__ import annotations

import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import Client
from django_rq import get_queue

from fanout import trends
from tests.test_live import connect
from timeline import services

pytestmark = pytest.mark.django_db(transaction=True)


def post(author, body):
    return services.tweet_create(author=author, body=body, client_id=uuid.uuid4()).tweet


def test_tags_posted_a_minute_ago_are_trends_after_the_cron_queues_the_job(make_user, client_for, run_worker, redis):
    author = make_user()
    for body in ("#Django rocks", "so does #DJANGO", "#Straße", "#STRASSE again", "#python #django"):
        post(author, body)
    trends.count(["ancient"], now=time.time() - (trends.WINDOW_MINUTES + 1) * 60)  # out of the window

    call_command("fanout_cron", "--once")
    call_command("fanout_cron", "--once")  # the first job still waits: not queued twice
    assert get_queue("default").job_ids == [trends.JOB_ID]
    run_worker()

    answer = client_for(make_user()).get("/api/trends")
    assert answer.status_code == 200
    data = answer.json()
    assert data["trends"] == [
        {"tag": "django", "count": 3},
        {"tag": "strasse", "count": 2},
        {"tag": "python", "count": 1},
    ]
    assert data["window_minutes"] == 60 and data["updated_at"]
    page = client_for(make_user()).get("/").content.decode()
    assert '<a href="/tags/django/">#django</a> <span class="trends-count">3</span>' in page


def test_the_top_is_ten_and_needs_a_login(make_user, client_for):
    author = make_user()
    post(author, " ".join(f"#tag{i}" for i in range(12)) + " #tag3 #tag5")
    post(author, "#tag5")
    top = trends.publish()["trends"]
    assert len(top) == 10 and top[0] == {"tag": "tag5", "count": 2} and top[1] == {"tag": "tag0", "count": 1}
    assert Client().get("/api/trends").status_code == 401


async def test_open_pages_get_the_new_trends(make_user):
    user = await sync_to_async(make_user)()
    socket, connected = await connect(user)
    assert connected
    await sync_to_async(post)(user, "#live")

    await sync_to_async(trends.publish)()

    event = await socket.receive_json_from(timeout=5)
    assert event["type"] == "trends.updated" and event["trends"] == [{"tag": "live", "count": 1}]
    await socket.disconnect()
