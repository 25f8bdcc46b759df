"""HTML pages. They work without JavaScript (plain forms, redirects); static/js enhances them."""

from __future__ import annotations

import hmac
import sys
import uuid
from datetime import timezone as dt_timezone

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import defaults
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from fanout import prometheus, trends
from fanout.admission import Overloaded, RateLimited
from fanout.connection import get_redis
from timeline import lesson, selectors, services, text, throttles, validation
from timeline.forms import ComposeForm, SignupForm
from timeline.middleware import outage_part, unavailable_response
from timeline.models import TWEET_MAX_LENGTH

User = get_user_model()


def _home_context(request: HttpRequest, form: ComposeForm | None = None, *, before: int | None = None) -> dict:
    page = selectors.home_timeline(user=request.user, before=before)
    selectors.with_own_deliveries(page.tweets, request.user)
    return {
        "page": page,
        "before": before,
        "form": form or ComposeForm(initial={"client_id": uuid.uuid4()}),
        "tweet_max_length": TWEET_MAX_LENGTH,
        "trends": _trends_or_none(),
    }


def _demo_logins() -> list[tuple[str, str]]:
    """The demo logins whose accounts exist: `make run` serves before its seeding is done, and
    a login offered before its account is made would fail the first click."""
    if not settings.DEMO_MODE:
        return []
    from timeline.management.commands import seed_demo  # the accounts make run seeds

    logins = [*seed_demo.PEOPLE.items(), seed_demo.POPULAR, seed_demo.MEGASTAR, seed_demo.STAFF]
    made = set(User.objects.filter(username__in=[name for name, _ in logins]).values_list("username", flat=True))
    return [(name, password) for name, password in logins if name in made]


def _trends_or_none() -> list[dict] | None:
    try:
        return trends.current()["trends"]
    except RedisError:
        return None  # the page works without its trends panel


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The home timeline; ``?before=<tweet id>`` is the page older than that tweet (the "Older" link).
    Logged out, the front door: what this is, sign-up and log-in, and in demo mode the demo logins."""
    if not request.user.is_authenticated:
        logins = _demo_logins()
        context = {"demo_logins": logins, "demo_pending": settings.DEMO_MODE and not logins}
        return render(request, "timeline/welcome.html", context)
    raw = request.GET.get("before", "")
    try:
        before = validation.parse_int(raw, low=1) if raw else None
    except ValueError:  # a hand-edited URL, not an older page
        return HttpResponseBadRequest("before must be a tweet id: a positive whole number.", content_type="text/plain")
    return render(request, "timeline/home.html", _home_context(request, before=before))


@login_required
@require_POST
def compose(request: HttpRequest) -> HttpResponse:
    """The compose form without JavaScript: a plain POST, then a redirect home."""
    form = ComposeForm(request.POST)
    status, retry_after = 400, None
    if form.is_valid():
        fields = dict(form.cleaned_data)
        publish_at = fields.pop("publish_at")
        try:
            if publish_at is not None:
                result = services.tweet_schedule(author=request.user, publish_at=publish_at, **fields)
                when = result.tweet.publish_at.astimezone(dt_timezone.utc).strftime("%b %-d, %Y, %H:%M UTC")
                messages.success(request, f"Scheduled for {when}. Until then it is on your profile, for you only.")
            else:
                services.tweet_create(author=request.user, **fields)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
        except (Overloaded, RateLimited) as exc:
            status = 503 if isinstance(exc, Overloaded) else 429
            retry_after = exc.retry_after
            form.add_error(None, f"Too busy to post right now: nothing was posted. Try again in {retry_after} s.")
        else:
            return redirect("home")
    # Keep what was typed, and the same client_id, so pressing Post again cannot make two.
    response = render(request, "timeline/home.html", _home_context(request, form), status=status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


@require_GET
def profile(request: HttpRequest, username: str) -> HttpResponse:
    try:
        profile = selectors.user_profile(username=username, viewer=request.user)
    except User.DoesNotExist:
        raise Http404(f"There is no user called {username}.") from None
    page = selectors.user_tweets(author=profile.user)
    own = request.user.is_authenticated and request.user.pk == profile.user.pk
    if own:
        selectors.with_own_deliveries(page.tweets, request.user)
    scheduled = selectors.scheduled_tweets(author=profile.user) if own else []
    return render(request, "timeline/profile.html", {"profile": profile, "page": page, "scheduled": scheduled})


@require_GET
def tweet_page(request: HttpRequest, tweet_id: int) -> HttpResponse:
    """A tweet's own page: what its timestamp links to."""
    try:
        tweet = selectors.tweet_with_fanout(tweet_id=tweet_id)
    except selectors.Tweet.DoesNotExist:
        raise Http404(f"There is no tweet {tweet_id}.") from None
    return render(request, "timeline/tweet.html", {"tweet": tweet})


@require_GET
def tag_page(request: HttpRequest, tag: str) -> HttpResponse:
    """Tweets with a #tag, newest first; ``?before=<tweet id>`` is the next page."""
    key = text.tag_key(tag)
    raw = request.GET.get("before", "")
    try:
        before = validation.parse_int(raw, low=1) if raw else None
    except ValueError:
        return HttpResponseBadRequest("before must be a tweet id: a positive whole number.", content_type="text/plain")
    if not text.is_tag(key):
        raise Http404(f"#{tag} is not a tag: tags are letters, digits and underscores, with a letter.")
    page = selectors.tagged_tweets(tag=key, before=before)
    return render(request, "timeline/tag.html", {"tag": key, "page": page})


@login_required
@require_POST
def follow(request: HttpRequest, username: str) -> HttpResponse:
    try:
        throttles.follow_toggle(user_id=request.user.pk)
    except throttles.Throttled as exc:
        messages.error(request, f"You are following and unfollowing very fast; try again in {exc.retry_after} s.")
        return redirect("profile", username=username)
    try:
        followee = User.objects.get(username=username)
    except User.DoesNotExist:
        raise Http404(f"There is no user called {username}.") from None
    try:
        if request.POST.get("action") == "unfollow":
            services.follow_delete(follower=request.user, followee=followee)
        else:
            services.follow_create(follower=request.user, followee=followee)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("profile", username=followee.username)


@login_required
@require_POST
def delete_tweet(request: HttpRequest, tweet_id: int) -> HttpResponse:
    """The delete button without JavaScript: a plain POST, then back to the page it was on."""
    try:
        outcome = services.tweet_delete(user=request.user, tweet_id=tweet_id)
    except services.TweetNotFound:
        raise Http404(f"There is no tweet {tweet_id} of yours.") from None
    if outcome == "cancelled":
        messages.success(request, "Cancelled: that tweet will not go out.")
    else:
        messages.success(request, "Your tweet was deleted.")
    back = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(back)
    return redirect("home")


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    services.user_logout(request)
    return redirect(settings.LOGOUT_REDIRECT_URL)


def signup(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = SignupForm(request.POST)
        try:
            throttles.signup(address=throttles.client_address(request))
        except throttles.Throttled as exc:
            form.add_error(None, f"Too many sign-ups from here; try again in {exc.retry_after} s.")
            return render(request, "registration/signup.html", {"form": form}, status=429)
        if form.is_valid():
            try:
                user = services.user_signup(**form.cleaned_data)
            except ValidationError as exc:
                for field, errors in (
                    exc.message_dict.items() if hasattr(exc, "error_dict") else [("password", exc.messages)]
                ):
                    for error in errors:
                        form.add_error(field if field in form.fields else None, error)
            else:
                login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
                return redirect("home")
    else:
        form = SignupForm()
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


@login_required
@require_GET
def ops(request: HttpRequest) -> HttpResponse:
    """Live charts of the fan-out queue (drawn by static/js/ops.js from GET /api/stats).

    Staff only: anyone else logged in is told so (403), rather than sent to a login page.
    """
    if not request.user.is_staff:
        raise PermissionDenied(f"This page is for staff only, and {request.user.get_username()} is not staff.")
    return render(request, "ops.html", {"cap": settings.FANOUT_QUEUE_CAP})


@login_required
@require_GET
def lesson_page(request: HttpRequest) -> HttpResponse:
    """One message posted two ways side by side, and the queue live (timeline.lesson; drawn
    by static/js/lesson.js and ops.js). For everyone, in demo mode only."""
    from timeline.management.commands import seed_demo  # the staff login make run seeds

    account = lesson.account()  # 404 outside demo mode
    context = {
        "account": account,
        "audience_text": f"{lesson.audience_size(account):,}",
        "ways": LESSON_WAYS,
        "tweet_max_length": TWEET_MAX_LENGTH,
        "cap": settings.FANOUT_QUEUE_CAP,
        "demo_staff": seed_demo.STAFF[0],
    }
    return render(request, "timeline/lesson.html", context)


LESSON_WAYS = [
    (lesson.Way.INLINE, "In the request", "The server writes every follower's timeline, then answers."),
    (
        lesson.Way.QUEUED,
        "Through the queue",
        "The server saves the tweet, queues one job and answers; a worker delivers it.",
    ),
]


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Every metric in Prometheus's text format (fanout/prometheus.py): for staff, or for a
    scraper sending ``Authorization: Bearer <METRICS_TOKEN>``."""
    if not (_metrics_token_sent(request) or (request.user.is_authenticated and request.user.is_staff)):
        anonymous = not request.user.is_authenticated
        response = HttpResponse(
            "Staff only, or send Authorization: Bearer <METRICS_TOKEN>.\n",
            status=401 if anonymous else 403,
            content_type="text/plain; charset=utf-8",
        )
        if anonymous:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(prometheus.exposition(), content_type=CONTENT_TYPE_LATEST)


def _metrics_token_sent(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    sent = request.headers.get("Authorization", "")
    # Bytes: compare_digest refuses non-ASCII text, and a header can carry any.
    return bool(token) and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """200 when the database and Redis both answer; 503 naming the part that does not."""
    parts = {"db": True, "redis": True}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        parts["db"] = False
    try:
        get_redis().ping()
    except (RedisError, OSError):
        parts["redis"] = False
    ok = all(parts.values())
    return JsonResponse({"ok": ok, **parts}, status=200 if ok else 503)


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500 handler, except for an outage of Redis or the database: that is a 503."""
    part = outage_part(sys.exc_info()[1])
    if part is not None:
        return unavailable_response(request, part)
    return defaults.server_error(request)
