"""Shared set-up for the browser tests: Debian's Chromium, driven by Playwright's sync API.

Test modules import the fixtures they use from here. A missing Chromium skips them, except
under CI=true, where it fails the run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "a-long-test-password"  # make_user's default
TIMEOUT_MS = 10_000

TWEETS = "#timeline > .tweet"
SENDING = re.compile(r"\bis-sending\b")
FAILED = re.compile(r"\bis-failed\b")
AN_ID = re.compile(r"^\d+$")

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium: without it the tests skip, except under CI=true, where they fail."""
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium, live_app) -> Iterator[Browser]:
    """One Chromium for this module.

    While Playwright's sync API runs, its event loop counts as running in this thread, and
    Django refuses ORM calls from a thread with a running loop. So the tests of this module may
    make them (DJANGO_ALLOW_ASYNC_UNSAFE), and the browser stops with the module, which gives
    the loop back so that later modules run under Django's usual check. live_app starts first so
    that daphne and the worker never inherit the variable.
    """
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()


def _new_page(context: BrowserContext) -> tuple[Page, list[Exception]]:
    page = context.new_page()
    errors: list[Exception] = []
    page.on("pageerror", lambda error: errors.append(error))
    return page, errors


@pytest.fixture
def context(browser, live_app) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=live_app.url)
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def page(context) -> Iterator[Page]:
    """A page whose scripts must not throw: an uncaught error fails the test."""
    page, errors = _new_page(context)
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(page: Page, user) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def post(page: Page, body: str, *, scripted: bool = True) -> None:
    """Type a tweet and press Post. With ``scripted`` (the default), first wait until the page's
    script has taken the form over: a click before that posts the plain form instead."""
    if scripted:
        expect(page.locator("#compose[data-enhanced]")).to_have_count(1)
    page.get_by_label("What is happening?").fill(body)
    page.get_by_role("button", name="Post").click()


def unsent(page: Page, username: str) -> list[dict]:
    """The tweets in the page's outbox (static/js/outbox.js), read from its IndexedDB database."""
    return page.evaluate(
        """name => new Promise((resolve, reject) => {
            const open = indexedDB.open(name, 1);
            open.onerror = () => reject(open.error);
            open.onsuccess = () => {
                const all = open.result.transaction("unsent").objectStore("unsent").getAll();
                all.onsuccess = () => { open.result.close(); resolve(all.result); };
                all.onerror = () => reject(all.error);
            };
        })""",
        f"timeline:outbox:{username}",
    )


def wait_until(page: Page, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_MS / 1000) -> None:
    """Wait for a condition on the Python side, such as a route handler having run.

    Playwright runs route handlers only while this thread is inside a Playwright call, so the
    wait is short Playwright waits in a loop, up to a deadline.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        page.wait_for_timeout(20)
