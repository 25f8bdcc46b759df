"""The live page in a real browser: the websocket, gap filling, 503 backoff and unsent tweets.

Same rules as tests/test_browser.py (whose fixtures and helpers these tests share): Debian's
Chromium driven by Playwright against live daphne and a real fan-out worker.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid

import pytest
from playwright.sync_api import Page, Route, expect

from fanout.models import Fanout
from tests.browser import (
    AN_ID,
    FAILED,
    TIMEOUT_MS,
    TWEETS,
    _new_page,
    log_in,
    post,
    unsent,
    wait_until,
)
from tests.conftest import post_json, session_cookie
from timeline import services
from timeline.models import Tweet

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

LIVE = ".live-status"


def expect_connected(page: Page) -> None:
    expect(page.locator(LIVE)).to_have_attribute("data-live-state", "connected")


def wait_for_fanout_done(page: Page, tweet_id: int) -> None:
    wait_until(
        page,
        lambda: Fanout.objects.filter(tweet_id=tweet_id, state=Fanout.State.DONE).exists(),
        f"the fan-out of tweet {tweet_id} is done",
    )


@pytest.fixture
def second_page(browser, live_app):
    """A second browser context (another user), whose scripts must not throw either."""
    context = browser.new_context(base_url=live_app.url)
    context.set_default_timeout(TIMEOUT_MS)
    page, errors = _new_page(context)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the second page: {errors}"


def author_and_follower_live(page: Page, second_page: Page, make_user):
    """An author on ``page`` and a follower on ``second_page``, both pages' sockets connected."""
    author, reader = make_user(), make_user()
    services.follow_create(follower=reader, followee=author)
    log_in(page, author)
    log_in(second_page, reader)
    expect_connected(page)
    expect_connected(second_page)
    return author, reader


def test_a_follower_sees_a_new_tweet_live_and_the_author_sees_it_delivered(
    page, second_page, make_user, transactional_db
):
    author, reader = author_and_follower_live(page, second_page, make_user)
    expect(page.locator(LIVE)).to_contain_text("Live")  # a text label, not only a colour
    second_page.evaluate("window.sameDocument = true")  # gone if the page reloads

    body = "Hello, followers, live"
    post(page, body)

    arrived = second_page.locator(TWEETS).first
    expect(arrived.locator(".tweet-body")).to_have_text(body)
    expect(arrived.locator(".tweet-author")).to_have_text(author.username)
    saved = Tweet.objects.get(body=body)
    expect(arrived).to_have_attribute("data-tweet-id", str(saved.pk))
    assert second_page.evaluate("window.sameDocument === true"), "the reader's page was reloaded"
    expect(second_page.locator(TWEETS).filter(has_text=body)).to_have_count(1)

    mine = page.locator(TWEETS).first
    expect(mine).to_have_attribute("data-tweet-id", str(saved.pk))
    expect(mine.locator(".tweet-status")).to_contain_text("delivered to 1 follower")
    expect(mine.locator(".tweet-status")).to_have_attribute("data-state", "done")


def test_a_deleted_tweet_leaves_the_authors_and_the_followers_open_pages(
    page, second_page, make_user, transactional_db
):
    author, reader = author_and_follower_live(page, second_page, make_user)
    post(page, "A tweet to take back")
    saved = wait_until_made(page, "A tweet to take back")
    wait_for_fanout_done(page, saved.pk)
    theirs = second_page.locator(TWEETS).filter(has_text="A tweet to take back")
    expect(theirs).to_have_count(1)
    expect(theirs.get_by_role("button", name="Delete")).to_be_hidden()  # not theirs to delete
    second_page.evaluate("window.sameDocument = true")

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.locator(TWEETS).filter(has_text="A tweet to take back").get_by_role("button", name="Delete").click()

    expect(page.locator(TWEETS).filter(has_text="A tweet to take back")).to_have_count(0)
    expect(theirs).to_have_count(0)  # live, without a reload
    assert asked and "cannot be undone" in asked[0]
    assert second_page.evaluate("window.sameDocument === true")
    assert not Tweet.objects.filter(pk=saved.pk).exists()
    page.reload()
    expect(page.locator(TWEETS).filter(has_text="A tweet to take back")).to_have_count(0)


def test_a_live_tweets_mentions_tags_and_links_match_the_server_rendered_page(
    page, second_page, make_user, transactional_db
):
    author, reader = author_and_follower_live(page, second_page, make_user)
    body = f'Hi @{reader.username}! #Straße <b>not bold</b> https://example.com/a_(b). & "quotes"'
    post(page, body)

    arrived = second_page.locator(TWEETS).filter(has_text="not bold").locator(".tweet-body")
    expect(arrived.get_by_role("link", name=f"@{reader.username}")).to_have_attribute("href", f"/u/{reader.username}/")
    expect(second_page.locator("[data-mentions]")).to_contain_text(f"{author.username} mentioned you")
    live = arrived.inner_html()
    second_page.reload()
    served = second_page.locator(TWEETS).filter(has_text="not bold").locator(".tweet-body").inner_html()
    assert live == served
    assert '<a class="tag" href="/tags/strasse/">#Straße</a>' in served
    assert 'rel="nofollow noopener noreferrer"' in served and "&lt;b&gt;not bold&lt;/b&gt;" in served


def test_the_trends_panel_updates_live(page, make_user, transactional_db, live_app):
    from redis import Redis

    from fanout import trends

    user = make_user()
    log_in(page, user)
    expect_connected(page)
    expect(page.locator("[data-trends-empty]")).to_be_visible()
    with Redis.from_url(live_app.env["REDIS_URL"]) as redis:  # the live app's, as its job would
        trends.count(["sourdough"], redis=redis)
        trends.publish(redis=redis)

    item = page.locator("[data-trends] li")
    expect(item).to_have_count(1)
    expect(item.get_by_role("link", name="#sourdough")).to_have_attribute("href", "/tags/sourdough/")
    expect(page.locator("[data-trends-empty]")).to_be_hidden()


def wait_until_made(page: Page, body: str) -> Tweet:
    wait_until(page, lambda: Tweet.objects.filter(body=body).exists(), f"the tweet {body!r} is made")
    return Tweet.objects.get(body=body)


def test_a_tweet_posted_while_the_socket_was_down_is_shown_once_after_reconnecting(
    page, make_user, transactional_db, live_app
):
    author, reader = make_user(), make_user()
    services.follow_create(follower=reader, followee=author)
    older = services.tweet_create(author=author, body="Posted before the page loaded", client_id=uuid.uuid4()).tweet
    log_in(page, reader)
    expect_connected(page)
    expect(page.locator(TWEETS)).to_have_count(1)
    page.evaluate("window.sameDocument = true")

    page.evaluate("window.timelineLive.disconnect()")
    expect(page.locator(LIVE)).to_have_attribute("data-live-state", "offline")
    body = "Posted while the reader was away"
    status, _, answer = post_json(
        live_app.url + "/api/tweets",
        {"body": body, "client_id": str(uuid.uuid4())},
        cookie=session_cookie(author),
    )
    assert status == 202, answer
    wait_for_fanout_done(page, answer["tweet"]["id"])
    expect(page.locator(TWEETS).filter(has_text=body)).to_have_count(0)  # the socket really was down

    page.evaluate("window.timelineLive.connect()")
    expect_connected(page)
    expect(page.locator(TWEETS).first).to_have_attribute("data-tweet-id", str(answer["tweet"]["id"]))
    # A second reconnection finds nothing new: still exactly once each, newest first.
    page.evaluate("window.timelineLive.disconnect()")
    page.evaluate("window.timelineLive.connect()")
    expect_connected(page)
    expect(page.locator(TWEETS)).to_have_count(2)
    shown = page.locator(TWEETS).evaluate_all("els => els.map(el => Number(el.dataset.tweetId))")
    assert shown == [answer["tweet"]["id"], older.pk]
    assert page.evaluate("window.sameDocument === true")


def test_a_busy_server_is_retried_with_backoff_and_the_same_client_id(page, make_user, transactional_db):
    log_in(page, make_user())
    attempts: list[tuple[float, str]] = []

    def busy_twice(route: Route) -> None:
        attempts.append((time.monotonic(), json.loads(route.request.post_data)["client_id"]))
        if len(attempts) <= 2:
            route.fulfill(
                status=503,
                headers={"Retry-After": "1"},
                json={"error": {"code": "overloaded", "message": "busy"}},
            )
        else:
            route.continue_()

    page.route("**/api/tweets", busy_twice)
    body = "Posted once the server has room"
    post(page, body)

    tweet = page.locator(TWEETS).first
    expect(tweet.locator(".tweet-status")).to_contain_text(re.compile(r"Server busy, retrying in \d+ s"))
    expect(tweet.get_by_role("button", name="Retry now")).to_be_visible()
    expect(tweet).to_have_attribute("data-tweet-id", AN_ID)
    expect(tweet.get_by_role("button", name="Retry")).to_be_hidden()
    expect(tweet.locator(".tweet-status")).to_contain_text("Posted")

    saved = Tweet.objects.get(body=body)  # exactly one, or this raises
    assert len(attempts) == 3
    assert {client_id for _, client_id in attempts} == {str(saved.client_id)}
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(attempts)]
    assert all(gap >= 1.0 for gap in gaps), f"a retry came before Retry-After: {gaps}"
    expect(page.locator(TWEETS).filter(has_text=body)).to_have_count(1)


def test_a_busy_server_is_retried_for_as_long_as_it_takes_and_retry_now_sends_at_once(
    page, make_user, transactional_db
):
    log_in(page, make_user())
    attempts: list[float] = []

    def busy(route: Route) -> None:
        attempts.append(time.monotonic())
        route.fulfill(
            status=503, headers={"Retry-After": "30"}, json={"error": {"code": "overloaded", "message": "busy"}}
        )

    page.route("**/api/tweets", busy)
    body = "Waits for the server, then goes at once"
    post(page, body)

    tweet = page.locator(TWEETS).first
    status = tweet.locator(".tweet-status")
    expect(status).to_contain_text(re.compile(r"Server busy, retrying in (3\d|4\d|5\d|60) s"))  # 30 s and a share
    expect(tweet).not_to_have_class(FAILED)
    first = status.inner_text()
    expect(status).not_to_have_text(first)  # it counts down
    assert len(attempts) == 1

    tweet.get_by_role("button", name="Retry now").click()  # still busy: waits again, never gives up
    wait_until(page, lambda: len(attempts) == 2, "the second try, at the click")
    expect(status).to_contain_text("retrying in")

    page.unroute("**/api/tweets")
    tweet.get_by_role("button", name="Retry now").click()
    expect(tweet).to_have_attribute("data-tweet-id", AN_ID)  # well before the 30 s were up
    assert Tweet.objects.filter(body=body).count() == 1


def test_an_unsent_tweet_survives_a_reload_and_is_sent_once(page, make_user, transactional_db):
    user = make_user()
    log_in(page, user)
    page.route("**/api/tweets", lambda route: route.abort())
    body = "Written offline, sent after a reload"
    post(page, body)

    tweet = page.locator(TWEETS).first
    expect(tweet.locator(".tweet-status")).to_contain_text("Could not reach the server, retrying in")
    client_id = tweet.get_attribute("data-client-id")
    assert [(t["body"], t["client_id"]) for t in unsent(page, user.username)] == [(body, client_id)]
    assert not Tweet.objects.filter(body=body).exists()

    page.unroute("**/api/tweets")
    page.reload()

    tweet = page.locator(TWEETS).filter(has_text=body)
    expect(tweet).to_have_count(1)
    expect(tweet).to_have_attribute("data-tweet-id", AN_ID)
    expect(tweet).to_have_attribute("data-client-id", client_id)
    saved = Tweet.objects.get(body=body)  # exactly one, or this raises
    assert str(saved.client_id) == client_id
    assert unsent(page, user.username) == []

    page.reload()  # nothing left to resend
    expect(page.locator(TWEETS).filter(has_text=body)).to_have_count(1)
    assert Tweet.objects.filter(body=body).count() == 1


def test_a_tweet_left_in_local_storage_by_an_earlier_page_is_sent_once(page, make_user, transactional_db):
    # The outbox was a localStorage list before it moved to IndexedDB: what a browser kept there
    # is moved over and sent, with its own client_id.
    user = make_user()
    log_in(page, user)
    client_id = str(uuid.uuid4())
    left = [
        {
            "client_id": client_id,
            "body": "Kept by an earlier page",
            "created": "2026-01-01T00:00:00Z",
            "state": "backoff",
            "due": 0,
        }
    ]
    page.evaluate(
        "([key, value]) => localStorage.setItem(key, value)", [f"timeline:unsent:{user.username}", json.dumps(left)]
    )
    page.reload()
    expect(page.locator(f'{TWEETS}[data-client-id="{client_id}"]')).to_have_attribute("data-tweet-id", AN_ID)
    assert Tweet.objects.filter(client_id=client_id).count() == 1
    assert page.evaluate(f"localStorage.getItem('timeline:unsent:{user.username}')") is None
    assert unsent(page, user.username) == []


def test_staff_see_the_ops_link(page, make_user, transactional_db):
    log_in(page, make_user(is_staff=True))
    page.get_by_role("link", name="Ops").click()
    expect(page).to_have_url(re.compile(r"/ops/$"))


def test_killing_and_restarting_daphne_reconnects_the_page_and_fills_the_gap(
    browser, make_user, transactional_db, tmp_path, redis
):
    """The issue's own check: kill the web server under an open page, post while it is down,
    start it again; the page reconnects by itself and shows what it missed, once."""
    from tests.conftest import start_live_app

    url = redis.connection_pool.connection_kwargs
    # Two web servers, as in a deployment: the page's one dies, the other takes the post.
    app = start_live_app(tmp_path, redis_url=f"redis://127.0.0.1:{url['port']}/4", webs=2)
    try:
        author, reader = make_user(), make_user()
        services.follow_create(follower=reader, followee=author)
        context = browser.new_context(base_url=app.url)
        context.set_default_timeout(TIMEOUT_MS)
        page, errors = _new_page(context)
        log_in(page, reader)
        expect_connected(page)
        page.evaluate("window.sameDocument = true")

        app.processes["daphne0"].kill()
        expect(page.locator(LIVE)).not_to_have_attribute("data-live-state", "connected")
        status, _, answer = post_json(
            f"{app.urls[1]}/api/tweets",
            {"body": "while you were away", "client_id": str(uuid.uuid4())},
            cookie=session_cookie(author),
        )
        assert status == 202
        missed = Tweet.objects.get(pk=answer["tweet"]["id"])
        wait_for_fanout_done(page, missed.pk)
        app.restart("daphne0")

        expect_connected(page)
        expect(page.locator(TWEETS).first).to_have_attribute("data-tweet-id", str(missed.pk))
        expect(page.locator(f'{TWEETS}[data-tweet-id="{missed.pk}"]')).to_have_count(1)
        assert page.evaluate("window.sameDocument") is True
        context.close()
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        app.stop()


def test_a_tweet_written_offline_is_sent_when_the_browser_is_back_online(page, make_user, transactional_db):
    log_in(page, make_user())
    page.context.set_offline(True)
    body = "Written on the underground"
    post(page, body)

    tweet = page.locator(TWEETS).first
    expect(tweet.locator(".tweet-status")).to_contain_text("it will be sent when you are back online")
    expect(tweet.get_by_role("button", name="Retry now")).to_be_visible()
    assert not Tweet.objects.filter(body=body).exists()

    page.context.set_offline(False)  # no click: the page sends it by itself
    expect(tweet).to_have_attribute("data-tweet-id", AN_ID)
    expect(tweet.locator(".tweet-status")).to_contain_text("Posted")
    assert Tweet.objects.filter(body=body).count() == 1


def test_a_users_tabs_share_posts_and_the_outbox(context, make_user, transactional_db):
    user = make_user()
    first, second = context.new_page(), context.new_page()
    log_in(first, user)
    second.goto("/")
    expect(second.locator(LIVE)).to_have_attribute("data-live-state", "connected")

    post(first, "Posted in the first tab")
    saved = wait_until_made(first, "Posted in the first tab")
    shown = second.locator(f'{TWEETS}[data-tweet-id="{saved.pk}"]')
    expect(shown).to_have_count(1)

    # A tweet waiting for a busy server is drawn in both, and sent once, by one of them.
    attempts: list[str] = []

    def busy_once(route: Route) -> None:
        attempts.append(json.loads(route.request.post_data)["client_id"])
        if len(attempts) == 1:
            route.fulfill(
                status=503, headers={"Retry-After": "2"}, json={"error": {"code": "overloaded", "message": "busy"}}
            )
        else:
            route.continue_()

    context.route("**/api/tweets", busy_once)
    post(first, "Waited in the outbox")
    waiting = second.locator(TWEETS).filter(has_text="Waited in the outbox")
    expect(waiting.locator(".tweet-status")).to_contain_text("Server busy, retrying in")
    saved = wait_until_made(first, "Waited in the outbox")
    expect(waiting).to_have_attribute("data-tweet-id", str(saved.pk))
    expect(first.locator(TWEETS).filter(has_text="Waited in the outbox")).to_have_count(1)
    assert len(attempts) == 2 and len(set(attempts)) == 1
    context.unroute("**/api/tweets")


def test_the_live_label_follows_the_socket_after_a_short_network_drop(page, make_user, transactional_db):
    log_in(page, make_user())
    live = page.locator(LIVE)
    expect(live).to_have_attribute("data-live-state", "connected")
    page.context.set_offline(True)
    page.wait_for_timeout(1000)
    page.context.set_offline(False)
    expect(live).to_have_attribute("data-live-state", "connected")
    expect(live).to_contain_text("Live")


def test_the_delivery_line_survives_a_reload_and_a_running_fanout_shows_its_progress(page, make_user, transactional_db):
    author, follower = make_user(), make_user()
    services.follow_create(follower=follower, followee=author)
    log_in(page, author)
    post(page, "Delivered, and still said so after a reload")
    tweet = page.locator(TWEETS).first
    expect(tweet.locator(".tweet-status")).to_contain_text("delivered to 1 follower")

    page.reload()
    tweet = page.locator(TWEETS).first
    expect(tweet.locator(".tweet-status")).to_contain_text("Posted · delivered to 1 follower")
    expect(tweet.locator(".tweet-progress")).to_be_hidden()

    # A big fan-out halfway through (its row as a running worker leaves it): a bar, and the count.
    post(page, "Halfway there")
    running = wait_until_made(page, "Halfway there")
    expect(page.locator(TWEETS).first.locator(".tweet-status")).to_contain_text("delivered to 1 follower")
    Fanout.objects.filter(pk=running.pk).update(state=Fanout.State.RUNNING, delivered=3000, recipients=10000)
    page.reload()
    shown = page.locator(f'{TWEETS}[data-tweet-id="{running.pk}"]')
    expect(shown.locator(".tweet-status")).to_contain_text("delivering 3,000/10,000")
    bar = shown.locator(".tweet-progress")
    expect(bar).to_be_visible()
    assert (bar.evaluate("b => b.value"), bar.evaluate("b => b.max")) == (3000, 10000)


@pytest.mark.faults
def test_a_503_burst_comes_back_spread_out_and_every_tweet_is_posted_once(
    browser, app_factory, make_user, transactional_db
):
    # No worker and a cap of one: one post fills the queue, and the burst that follows is refused.
    app = app_factory(workers=0, FANOUT_QUEUE_CAP="1", TWEET_RATE_LIMIT="0")
    status, _, _ = post_json(
        f"{app.url}/api/tweets", {"body": "first", "client_id": str(uuid.uuid4())}, cookie=session_cookie(make_user())
    )
    assert status == 202
    pages = []
    for _ in range(6):
        context = browser.new_context(base_url=app.url)
        context.set_default_timeout(TIMEOUT_MS)
        page, errors = _new_page(context)
        log_in(page, make_user())
        pages.append((page, errors))
    for i, (page, _) in enumerate(pages):
        post(page, f"burst {i}")
    for page, _ in pages:
        expect(page.locator(TWEETS).first.locator(".tweet-status")).to_contain_text("Server busy, retrying in")

    app.start_worker("worker-late")  # the queue drains; the refused come back on their own
    for page, _ in pages:
        expect(page.locator(TWEETS).first).to_have_attribute("data-tweet-id", AN_ID, timeout=120_000)
    for i in range(len(pages)):
        assert Tweet.objects.filter(body=f"burst {i}").count() == 1

    # When each page sent: its first try, refused, and its first retry.
    sent = [
        page.evaluate(
            "performance.getEntriesByType('resource')"
            ".filter((e) => e.initiatorType === 'fetch' && new URL(e.name).pathname === '/api/tweets')"
            ".map((e) => (performance.timeOrigin + e.startTime) / 1000)"
        )
        for page, _ in pages
    ]
    retry_after = 30  # no worker was listening when they were refused: the server says "a while"
    waits = [times[1] - times[0] for times in sent]
    assert all(wait >= retry_after - 0.5 for wait in waits), f"a retry came before Retry-After: {waits}"
    first_retries = [times[1] for times in sent]
    assert max(first_retries) - min(first_retries) > 3, f"the retries came back together: {first_retries}"
    for page, errors in pages:
        assert not errors, errors
        page.context.close()


def test_a_reload_during_back_off_keeps_the_wait_and_sends_once(page, make_user, transactional_db):
    user = make_user()
    log_in(page, user)
    attempts: list[str] = []

    def busy(route: Route) -> None:
        attempts.append(json.loads(route.request.post_data)["client_id"])
        route.fulfill(
            status=503, headers={"Retry-After": "30"}, json={"error": {"code": "overloaded", "message": "busy"}}
        )

    page.route("**/api/tweets", busy)
    post(page, "Waiting through a reload")
    status = page.locator(TWEETS).first.locator(".tweet-status")
    expect(status).to_contain_text("Server busy, retrying in")
    [due] = [t["due"] for t in unsent(page, user.username)]

    page.reload()  # the wait goes on where it was: not sent at once, nor the countdown restarted
    tweet = page.locator(TWEETS).filter(has_text="Waiting through a reload")
    expect(tweet.locator(".tweet-status")).to_contain_text("Server busy, retrying in")
    assert [t["due"] for t in unsent(page, user.username)] == [due] and len(attempts) == 1

    page.unroute("**/api/tweets")
    tweet.get_by_role("button", name="Retry now").click()
    expect(tweet).to_have_attribute("data-tweet-id", AN_ID)
    assert Tweet.objects.filter(body="Waiting through a reload").count() == 1
    assert unsent(page, user.username) == []
