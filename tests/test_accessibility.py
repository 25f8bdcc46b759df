"""Every page checked by axe-core (vendored: tests/vendor/axe-core) in the real browser, in the
light and the dark colour scheme: no serious or critical violation. And what axe cannot judge:
the focus ring's contrast, and arrivals read out by a polite live region."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, expect

from tests.browser import TIMEOUT_MS, _new_page, log_in
from tests.conftest import post_json, session_cookie
from timeline import lesson, services

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
User = get_user_model()

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = {"serious", "critical"}


def violations(page: Page) -> list[str]:
    page.add_script_tag(path=AXE)
    found = page.evaluate("async () => (await axe.run(document, { resultTypes: ['violations'] })).violations")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v["impact"] in BLOCKING
    ]


@pytest.fixture
def open_as(browser, live_app):
    """A page in a context of its own (CSP bypassed, so that axe's script can be injected)."""
    contexts = []

    def open_(user=None, *, scheme: str = "light") -> Page:
        context = browser.new_context(base_url=live_app.url, bypass_csp=True, color_scheme=scheme)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page, _ = _new_page(context)
        if user is not None:
            log_in(page, user)
        return page

    yield open_
    for context in contexts:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_page_has_a_serious_accessibility_violation(open_as, make_user, transactional_db, scheme, settings):
    author = make_user()
    staff = make_user(is_staff=True)
    User.objects.create_user(username=lesson.ACCOUNT, password=None)  # as seed_demo makes it
    tweet = services.tweet_create(author=author, body="Hello #axe @someone https://example.com", client_id=uuid.uuid4())
    services.tweet_schedule(
        author=author, body="Later", client_id=uuid.uuid4(), publish_at=timezone.now() + timedelta(days=1)
    )
    pages = {
        None: [
            "/",
            "/login/",
            "/signup/",
            f"/u/{author.username}/",
            f"/t/{tweet.tweet.pk}/",
            "/tags/axe/",
            "/nowhere/",
        ],
        author: ["/", f"/u/{author.username}/", f"/u/{staff.username}/", "/ops/", "/lesson/"],  # /ops/: the 403
        staff: ["/ops/", "/lesson/"],
    }
    problems = {}
    for user, paths in pages.items():
        page = open_as(user, scheme=scheme)
        for path in paths:
            page.goto(path)
            if path == "/lesson/":  # with its charts drawn
                page.get_by_role("button", name="Post both ways").click()
                expect(page.locator("#lesson")).to_have_attribute("data-samples", "1")
                expect(page.locator("#lesson")).to_have_attribute("data-busy", "false")
            page.wait_for_load_state("networkidle") if path == "/ops/" and user is staff else None
            if found := violations(page):
                problems[f"{path} as {user.username if user else 'anonymous'}"] = found
    assert not problems, "\n".join(f"{where}: {found}" for where, found in problems.items())


def test_the_focus_ring_stands_out_three_to_one(open_as, make_user, transactional_db):
    page = open_as(make_user())
    page.keyboard.press("Tab")  # the first link of the header
    ring = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth), s.outlineColor, getComputedStyle(document.body).backgroundColor]; }"
    )
    style, width, color, background = ring
    assert style == "solid" and width >= 2, ring
    assert contrast(color, background) >= 3, ring

    post_button = page.get_by_role("button", name="Post")
    page.get_by_label("What is happening?").fill("x")
    post_button.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # by keyboard: focus-visible
    outline = post_button.evaluate("b => [getComputedStyle(b).outlineStyle, getComputedStyle(b).outlineColor]")
    assert outline[0] == "solid", outline
    assert (
        contrast(outline[1], page.evaluate("getComputedStyle(document.querySelector('.compose')).backgroundColor")) >= 3
    )


def contrast(first: str, second: str) -> float:
    def luminance(css: str) -> float:
        channels = [int(float(x)) for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
        linear = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted([luminance(first), luminance(second)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_arrivals_and_the_new_tweets_bar_are_read_out(open_as, make_user, transactional_db, live_app):
    author, reader = make_user(), make_user()
    services.follow_create(follower=reader, followee=author)
    page = open_as(reader)
    expect(page.locator(".live-status")).to_have_attribute("data-live-state", "connected")
    region = page.locator("[data-announcer]")
    expect(region).to_have_attribute("aria-live", "polite")

    cookie = session_cookie(author)
    status, _, _ = post_json(
        f"{live_app.url}/api/tweets", {"body": "one", "client_id": str(uuid.uuid4())}, cookie=cookie
    )
    assert status == 202
    expect(region).to_have_text(f"New tweet from {author.username}")

    page.evaluate("window.scrollTo(0, 10000)")  # scrolled down: held under the bar
    page.evaluate("document.body.style.minHeight = '5000px'; window.scrollTo(0, 4000)")
    status, _, _ = post_json(
        f"{live_app.url}/api/tweets", {"body": "two", "client_id": str(uuid.uuid4())}, cookie=cookie
    )
    assert status == 202
    expect(region).to_contain_text("1 new tweet")
