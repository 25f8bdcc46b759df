"""The web UI in a real browser: Debian's Chromium driven by Playwright, against live daphne.

The pages are served by ``live_app`` (daphne and a fan-out worker on the test database and the
test Redis), so what the browser sees is what a user would: templates, static files, the JSON
API and the background fan-out all run for real.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Route, expect

from tests.browser import (
    AN_ID,
    FAILED,
    SENDING,
    TIMEOUT_MS,
    TWEETS,
    _new_page,
    log_in,
    post,
    wait_until,
)
from tests.conftest import post_json, session_cookie
from timeline import selectors, services
from timeline.models import Follow, Tweet

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_a_tweet_is_drawn_at_once_and_reconciled_when_the_server_answers(page, make_user, transactional_db):
    user = make_user()
    log_in(page, user)
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)  # answered later, by the test

    page.route("**/api/tweets", hold)
    body = "Drawn before the server answers"
    post(page, body)

    tweet = page.locator(TWEETS).first
    expect(tweet.locator(".tweet-body")).to_have_text(body)
    expect(tweet).to_have_class(SENDING)
    expect(tweet.locator(".tweet-status")).to_contain_text("Sending")
    expect(tweet).to_have_attribute("data-tweet-id", "")
    expect(tweet.locator(".tweet-author")).to_have_text(user.username)
    expect(page.get_by_label("What is happening?")).to_have_value("")

    wait_until(page, lambda: bool(held), "the POST /api/tweets is held")
    assert held[0].request.method == "POST"
    assert not Tweet.objects.filter(body=body).exists(), "the request was held, yet the server has the tweet"
    held[0].continue_()

    expect(tweet).to_have_attribute("data-tweet-id", AN_ID)
    expect(tweet).not_to_have_class(SENDING)
    expect(tweet.locator(".tweet-status")).to_contain_text("Posted")
    saved = Tweet.objects.get(body=body)  # exactly one, or this raises
    assert tweet.get_attribute("data-tweet-id") == str(saved.pk)
    assert tweet.get_attribute("data-client-id") == str(saved.client_id)
    expect(page.locator(TWEETS).filter(has_text=body)).to_have_count(1)


@pytest.mark.parametrize(
    "failure",
    [
        "refused",  # the server never sees the first attempt
        "answer_lost",  # the server makes the tweet, but its answer never reaches the page
    ],
)
def test_a_failed_post_stays_visible_and_retry_makes_one_tweet(page, make_user, transactional_db, failure):
    log_in(page, make_user())

    def fail(route: Route) -> None:
        if failure == "answer_lost":
            route.fetch()
        route.fulfill(
            status=500,
            json={"error": {"code": "server_error", "message": "The server fell over.", "fields": {}}},
        )

    page.route("**/api/tweets", fail)
    body = f"Posted whatever happens ({failure})"
    post(page, body)

    tweet = page.locator(TWEETS).first
    retry = tweet.get_by_role("button", name="Retry")
    expect(tweet).to_have_class(FAILED)
    expect(tweet.locator(".tweet-body")).to_have_text(body)
    expect(tweet.locator(".tweet-status")).to_contain_text("The server fell over.")
    expect(retry).to_be_visible()
    expect(tweet).to_have_attribute("data-tweet-id", "")
    client_id = tweet.get_attribute("data-client-id")
    assert uuid.UUID(client_id)
    assert Tweet.objects.filter(body=body).count() == (1 if failure == "answer_lost" else 0)

    page.unroute("**/api/tweets")
    retry.click()

    expect(tweet).to_have_attribute("data-tweet-id", AN_ID)
    expect(tweet).not_to_have_class(FAILED)
    expect(retry).to_be_hidden()
    expect(tweet.locator(".tweet-status")).to_contain_text("Posted")
    saved = Tweet.objects.get(body=body)  # exactly one, or this raises
    assert str(saved.client_id) == client_id
    assert tweet.get_attribute("data-tweet-id") == str(saved.pk)
    expect(page.locator(TWEETS).filter(has_text=body)).to_have_count(1)


def test_follow_button_changes_the_counts_in_place(page, make_user, transactional_db):
    me, them = make_user(), make_user()
    log_in(page, me)
    page.goto(f"/u/{them.username}/")
    followers = page.locator('[data-count="followers"]')
    button = page.locator(".follow-form button")
    expect(followers).to_have_text("0")
    expect(page.locator('[data-count-label="followers"]')).to_have_text("followers")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads (the no-JS path)

    button.click()
    expect(followers).to_have_text("1")
    expect(page.locator('[data-count-label="followers"]')).to_have_text("follower")
    expect(button).to_have_text("Unfollow")
    assert page.evaluate("window.sameDocument === true")
    assert Follow.objects.filter(follower=me, followee=them).exists()

    button.click()
    expect(followers).to_have_text("0")
    expect(button).to_have_text("Follow")
    assert page.evaluate("window.sameDocument === true")
    assert not Follow.objects.filter(follower=me, followee=them).exists()


def test_compose_works_without_javascript(browser, live_app, make_user, transactional_db):
    context = browser.new_context(base_url=live_app.url, java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, make_user())
        client_id = page.locator('input[name="client_id"]').get_attribute("value")
        assert uuid.UUID(client_id)

        # A blank tweet: the form comes back with the error and the same client_id.
        with page.expect_response("**/tweets/new") as answer:
            post(page, "   ", scripted=False)
        assert answer.value.status == 400
        expect(page.get_by_role("alert")).to_contain_text("Write something first.")
        expect(page.locator('input[name="client_id"]')).to_have_value(client_id)

        body = "Posted by a plain form"
        with page.expect_response("**/tweets/new") as answer:
            post(page, body, scripted=False)
        assert answer.value.status == 302
        expect(page).to_have_url(live_app.url + "/")
        expect(page.locator(TWEETS).first.locator(".tweet-body")).to_have_text(body)
        saved = Tweet.objects.get(body=body)
        assert str(saved.client_id) == client_id
    finally:
        context.close()


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_older_tweets(browser, live_app, make_user, transactional_db, javascript):
    user = make_user()
    total = selectors.DEFAULT_PAGE_SIZE + 5
    for n in range(total):
        services.tweet_create(author=user, body=f"Tweet number {n}", client_id=uuid.uuid4())
    newest_first = list(Tweet.objects.filter(author=user).order_by("-id").values_list("id", flat=True))

    context = browser.new_context(base_url=live_app.url, java_script_enabled=javascript)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page, errors = _new_page(context)
        log_in(page, user)
        tweets = page.locator(TWEETS)
        expect(tweets).to_have_count(selectors.DEFAULT_PAGE_SIZE)
        page.get_by_role("link", name="Older tweets").click()

        if javascript:
            # Appended in place, in order, each once; no more pages, so no more link.
            expect(tweets).to_have_count(total)
            expect(page.get_by_role("link", name="Older tweets")).to_have_count(0)
            expect(page).to_have_url(live_app.url + "/")
            shown = [int(i) for i in tweets.evaluate_all("els => els.map(el => el.dataset.tweetId)")]
            assert shown == newest_first
            assert not errors, f"JavaScript errors on the page: {errors}"
        else:
            expect(page).to_have_url(f"{live_app.url}/?before={newest_first[selectors.DEFAULT_PAGE_SIZE - 1]}")
            expect(tweets).to_have_count(total - selectors.DEFAULT_PAGE_SIZE)
            shown = [int(t.get_attribute("data-tweet-id")) for t in tweets.all()]
            assert shown == newest_first[selectors.DEFAULT_PAGE_SIZE :]
            expect(page.get_by_role("link", name="Newest tweets")).to_be_visible()
            assert page.goto("/?before=not-a-number").status == 400
    finally:
        context.close()


def test_scheduling_from_the_compose_box_in_the_browsers_zone_and_cancelling_on_the_profile(
    browser, live_app, make_user, transactional_db
):
    # A browser five and a half hours ahead of UTC: the time typed is its local time.
    context = browser.new_context(base_url=live_app.url, timezone_id="Asia/Kolkata")
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page, errors = _new_page(context)
        user = make_user()
        log_in(page, user)
        page.get_by_text("Schedule", exact=True).click()
        expect(page.get_by_label("Publish at")).to_be_visible()
        expect(page.locator("[data-schedule-zone]")).to_contain_text("Asia/")
        local = page.evaluate(
            "() => { const d = new Date(Date.now() + 2 * 86400000); d.setSeconds(0, 0);"
            " const p = (n) => String(n).padStart(2, '0');"
            " return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`; }"
        )
        expected = page.evaluate("(v) => new Date(v).toISOString()", local)
        expect(page.locator("#compose[data-enhanced]")).to_have_count(1)
        page.get_by_label("What is happening?").fill("Scheduled from the page #later")
        page.get_by_label("Publish at").fill(local)
        expect(page.locator("[data-submit]")).to_have_text("Schedule")
        page.locator("[data-submit]").click()

        expect(page.locator("[data-compose-note]")).to_contain_text("Scheduled for")
        expect(page.locator("[data-submit]")).to_have_text("Post")
        expect(page.locator(TWEETS)).to_have_count(0)  # not on any timeline until it goes out
        tweet = Tweet.scheduled.get(author=user)
        assert tweet.publish_at.isoformat().replace("+00:00", ".000Z") == expected

        page.goto(f"/u/{user.username}/")
        item = page.locator(f'[data-scheduled-id="{tweet.pk}"]')
        expect(item).to_contain_text("Scheduled from the page")
        page.once("dialog", lambda dialog: dialog.accept())  # "Cancel this scheduled tweet?"
        item.get_by_role("button", name="Cancel").click()
        expect(item).to_have_count(0)
        assert not Tweet.all_objects.filter(author=user).exists()
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


def test_cancelling_a_tweet_that_went_out_meanwhile_says_so(page, live_app, make_user, transactional_db):
    user = make_user()
    log_in(page, user)
    client_id = str(uuid.uuid4())
    publish_at = (timezone.now() + timedelta(seconds=3)).isoformat()
    status, _, made = post_json(
        f"{live_app.url}/api/tweets",
        {"body": "Out before the click", "client_id": client_id, "publish_at": publish_at},
        cookie=session_cookie(user),
    )
    assert status == 202, made
    page.goto(f"/u/{user.username}/")
    item = page.locator(f'[data-scheduled-id="{made["tweet"]["id"]}"]')
    expect(item).to_be_visible()
    wait_until(page, lambda: Tweet.objects.filter(client_id=client_id).exists(), "the tweet published", timeout=20)

    page.once("dialog", lambda dialog: dialog.accept())
    item.get_by_role("button", name="Cancel").click()
    expect(item.locator(".scheduled-gone")).to_have_text(
        "This one has gone out already: reload to see it among your tweets."
    )
    page.reload()
    expect(page.locator(TWEETS).filter(has_text="Out before the click")).to_have_count(1)
    expect(page.locator("[data-scheduled]")).to_have_count(0)
