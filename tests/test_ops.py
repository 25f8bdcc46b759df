"""The staff ops page (/ops/) in a real browser: Debian's Chromium driven by Playwright.

The page is served by real daphne processes with real fan-out workers (``live_app``), and
its numbers come from GET /api/stats, so what is asserted is what staff would see: the
charts are drawn, the figures follow the posts made through the API, a full queue shows the
"AT CAP" banner, and an unreadable /api/stats is said plainly while polling goes on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.conf import settings
from playwright.sync_api import BrowserContext, Page, Route, expect
from redis import Redis

from tests.browser import TIMEOUT_MS
from tests.conftest import LIVE_REDIS_URL, LiveApp, new_client_id, post_json, session_cookie, start_live_app

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

LIVE = "Live: updating every second."
# A second app with a tiny cap and no worker, on a Redis database of its own.
SMALL_CAP = 3
CAPPED_REDIS_URL = LIVE_REDIS_URL.rsplit("/", 1)[0] + "/3"

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def capped_app(live_app, tmp_path_factory) -> Iterator[LiveApp]:
    """daphne with FANOUT_QUEUE_CAP=3 and no worker: three posts fill the queue for good."""
    db = Redis.from_url(CAPPED_REDIS_URL)
    db.flushdb()
    app = start_live_app(
        tmp_path_factory.mktemp("ops-capped-logs"),
        redis_url=CAPPED_REDIS_URL,
        workers=0,
        FANOUT_QUEUE_CAP=str(SMALL_CAP),
        DJANGO_ALLOW_ASYNC_UNSAFE="",  # whatever this process has: the server keeps Django's check
    )
    try:
        yield app
    finally:
        app.stop()
        db.flushdb()


@pytest.fixture
def open_page(browser) -> Iterator:
    """Open a page of an app as a user (or anonymously); scripts on it must not throw."""
    opened: list[tuple[BrowserContext, list]] = []

    def open_(app: LiveApp, user=None, path: str = "/ops/") -> Page:
        context = browser.new_context(base_url=app.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        if user is not None:
            name, value = session_cookie(user).split("=", 1)
            context.add_cookies([{"name": name, "value": value, "url": app.url}])
        page = context.new_page()
        errors: list = []
        page.on("pageerror", lambda error: errors.append(error))
        opened.append((context, errors))
        page.goto(path)
        return page

    yield open_
    for context, _ in opened:
        context.close()
    assert not [e for _, errors in opened for e in errors], "JavaScript errors on the ops page"


def stat(page: Page, name: str):
    return page.locator(f'[data-stat="{name}"]')


def post_tweets(app: LiveApp, user, count: int) -> list[tuple[int, dict]]:
    cookie = session_cookie(user)
    answers = []
    for i in range(count):
        status, headers, _ = post_json(
            f"{app.url}/api/tweets", {"body": f"ops page tweet {i}", "client_id": new_client_id()}, cookie=cookie
        )
        answers.append((status, headers))
    return answers


@pytest.mark.parametrize("who", ["anonymous", "not staff"])
def test_only_staff_see_the_ops_page(open_page, live_app, make_user, transactional_db, who):
    user = make_user() if who == "not staff" else None
    page = open_page(live_app, user)
    if user is None:
        expect(page).to_have_url(re.compile(r"/login/\?next=/ops/$"))
    else:  # told plainly, not sent to a login page
        expect(page).to_have_url(re.compile(r"/ops/$"))
        expect(page.get_by_role("heading", name="Not for this account")).to_be_visible()
        expect(page.locator(".notice")).to_contain_text(f"for staff only, and {user.username} is not staff")
        assert page.request.get("/ops/").status == 403
    expect(page.locator("#ops")).to_have_count(0)
    assert page.request.get("/api/stats").status == (403 if user else 401)


def test_staff_see_charts_drawn_and_the_numbers_follow_posts(open_page, live_app, make_user, transactional_db):
    staff = make_user(is_staff=True)
    page = open_page(live_app, staff)
    cap = settings.FANOUT_QUEUE_CAP  # what the view puts in the page's context
    assert page.locator("#ops").get_attribute("data-cap") == str(cap)
    expect(page.locator("#ops-status-text")).to_have_text(LIVE)

    # The figures carry the cap of the page context; the charts have axes with units and,
    # with nothing run yet (metrics are cleared per test), say so rather than draw nothing.
    expect(stat(page, "depth")).to_have_text(re.compile(rf"^\d+ / {cap if cap > 0 else 'cap off'}$"))
    units = {"depth": "jobs waiting", "rates": "per second", "wait": "seconds", "shed": "503s per second"}
    for chart, unit in units.items():
        svg = page.locator(f"#chart-{chart} svg.chart-svg")
        expect(svg).to_have_attribute("role", "img")
        expect(svg.locator(".chart-axis-label").first).to_have_text(unit)
        expect(svg.locator(".chart-axis-label").nth(1)).to_have_text("time (seconds ago)")
    expect(page.locator("#chart-wait .chart-empty")).to_have_text("No job left the queue in the last 2 minutes")
    if cap > 0:
        expect(page.locator("#chart-depth .chart-ref-label")).to_have_text(f"cap {cap}")

    # Each poll samples the depth, so a depth line appears after a second or two.
    depth_line = page.locator('#chart-depth path[data-series="depth"]')
    expect(depth_line).to_have_attribute("d", re.compile(r"^M[\d.]+,[\d.]+"))

    # Polling goes on: the "updated at" time changes, and changes again.
    updated = page.locator("#ops-updated")
    for _ in range(2):
        before = updated.text_content()
        expect(updated).not_to_have_text(before)

    # Three posts through the API: the live worker takes them, so arrivals (λ) and the drain (μ)
    # over the last 10 s both read 0.3 per second, and W, once jobs started, is a time.
    assert [status for status, _ in post_tweets(live_app, staff, 3)] == [202, 202, 202]
    expect(stat(page, "arrival")).to_have_text("0.3 /s")
    expect(stat(page, "drain")).to_have_text("0.3 /s")
    expect(stat(page, "wait")).to_have_text(re.compile(r"^(\d+ ms|\d+(\.\d+)? s)$"))
    expect(stat(page, "law-predicted")).to_have_text(re.compile(r"^L = λ × W = \d+(\.\d+)?$"))
    expect(stat(page, "law-measured")).to_have_text(re.compile(r"^measured L = \d+(\.\d+)?$"))
    # The verdict follows the two sides with a stated relative tolerance (read in one go: it polls).
    predicted, measured, note = page.evaluate(
        "['law-predicted', 'law-measured', 'law-note']"
        '.map((name) => document.querySelector(`[data-stat="${name}"]`).textContent)'
    )
    predicted, measured = (float(text.rsplit(" ", 1)[1]) for text in (predicted, measured))
    larger, gap = max(predicted, measured), abs(predicted - measured)
    if larger >= 0.1 and gap > 0.35 * larger:  # clear of the 25% line, whatever the rounding shown
        assert note.startswith("they differ by"), (predicted, measured, note)
    elif ("agree" in note or "differ" in note) and gap < 0.15 * larger:
        assert note.startswith("they agree, within 25%"), (predicted, measured, note)
    expect(stat(page, "workers")).to_have_text(re.compile(r"^\d+ / [1-9]\d*$"))
    expect(page.locator('#chart-rates path[data-series="arrivals"]')).to_have_count(1)
    expect(page.locator('#chart-wait path[data-series="wait"]')).to_have_count(1)
    expect(page.locator("#ops-banner")).to_be_hidden()
    expect(stat(page, "shed-total")).to_have_text("0")


def test_a_full_queue_shows_the_at_cap_banner_and_the_shed_posts(open_page, capped_app, make_user, transactional_db):
    staff = make_user(is_staff=True)
    page = open_page(capped_app, staff)
    expect(page.locator("#ops-status-text")).to_have_text(LIVE)
    expect(stat(page, "depth")).to_have_text(f"0 / {SMALL_CAP}")
    expect(page.locator("#ops-banner")).to_be_hidden()

    # No worker: three posts fill the queue, and the next two are refused with 503.
    answers = post_tweets(capped_app, staff, SMALL_CAP + 2)
    assert [status for status, _ in answers] == [202] * SMALL_CAP + [503, 503]
    assert all(int(headers["Retry-After"]) >= 1 for _, headers in answers[SMALL_CAP:])

    banner = page.locator("#ops-banner")
    expect(banner).to_be_visible()
    expect(banner).to_have_text("AT CAP: shedding load (503)")
    expect(banner).to_have_attribute("role", "alert")
    expect(stat(page, "depth")).to_have_text(f"{SMALL_CAP} / {SMALL_CAP}")
    expect(stat(page, "shed-total")).to_have_text("2")
    expect(stat(page, "workers")).to_have_text("0 / 0")
    expect(page.locator("#ops")).to_have_class(re.compile(r"\bis-at-cap\b"))
    expect(page.locator('#chart-shed path[data-series="queue"]')).to_have_count(1)
    expect(stat(page, "shed-note")).to_contain_text("queue cap")  # which limit shed them


def test_unreadable_stats_are_said_plainly_and_polling_recovers(open_page, live_app, make_user, transactional_db):
    staff = make_user(is_staff=True)
    page = open_page(live_app, staff)
    status = page.locator("#ops-status-text")
    expect(status).to_have_text(LIVE)
    expect(stat(page, "depth")).to_have_text(re.compile(r"^\d+ / "))

    in_flight, most_in_flight, failed = [0], [0], [0]

    def fail(route: Route) -> None:
        failed[0] += 1
        route.fulfill(
            status=500, content_type="application/json", body='{"error": {"code": "boom", "message": "Redis is down."}}'
        )

    def count(request, delta: int) -> None:
        if request.url.endswith("/api/stats"):
            in_flight[0] += delta
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])

    page.on("request", lambda request: count(request, +1))
    page.on("requestfinished", lambda request: count(request, -1))
    page.on("requestfailed", lambda request: count(request, -1))

    page.route("**/api/stats", fail)
    expect(status).to_have_text(
        re.compile(r"^Stats unavailable: the server answered HTTP 500: Redis is down\. Trying again in \d+ s")
    )
    expect(page.locator("#ops")).to_have_class(re.compile(r"\bis-stale\b"))
    expect(page.get_by_role("button", name="Try now")).to_be_visible()
    # The last figures stay on the page, marked stale, rather than vanishing.
    expect(stat(page, "depth")).to_have_text(re.compile(r"^\d+ / "))
    expect(status).to_have_text(re.compile(r"Trying again in [48] s"))  # backing off: 2 s, then 4 s, 8 s...

    page.unroute("**/api/stats")
    page.get_by_role("button", name="Try now").click()
    expect(status).to_have_text(LIVE)
    expect(page.locator("#ops")).not_to_have_class(re.compile(r"\bis-stale\b"))
    expect(page.get_by_role("button", name="Try now")).to_be_hidden()
    assert failed[0] >= 2
    assert most_in_flight[0] == 1, "a poll started while another was still out"


def test_staff_pause_the_workers_and_set_the_cap_from_the_ops_page(open_page, live_app, make_user, transactional_db):
    from redis import Redis
    from rq.suspension import is_suspended

    from tests.conftest import LIVE_REDIS_URL

    live_redis = Redis.from_url(LIVE_REDIS_URL)
    page = open_page(live_app, make_user(is_staff=True))
    expect(page.locator("#ops-status-text")).to_have_text(LIVE)
    pause = page.locator("#ops-pause")
    try:
        pause.click()
        expect(pause).to_have_text("Resume the workers")
        assert is_suspended(live_redis)
        page.get_by_label("Queue cap").fill("5")
        page.get_by_role("button", name="Set", exact=True).click()
        expect(stat(page, "depth")).to_have_text(re.compile(r"^\d+ / 5$"))
        page.locator("#ops-cap-reset").click()
        expect(stat(page, "depth")).to_have_text(re.compile(rf"^\d+ / {settings.FANOUT_QUEUE_CAP}$"))
        pause.click()
        expect(pause).to_have_text("Pause the workers")
        assert not is_suspended(live_redis)
    finally:
        live_redis.delete("rq:suspended", "fanout:admission:cap")
