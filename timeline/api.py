"""The JSON API. Each view checks access, calls a service or selector, and shapes the answer.

Errors all look alike: ``{"error": {"code", "message", "fields"}}``. An anonymous call gets
401, never a redirect to the login page, because the caller is a program.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache, wraps
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import Resolver404
from django.views.csrf import csrf_failure as html_csrf_failure
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

from fanout import metrics, trends
from fanout.admission import Overloaded, RateLimited
from timeline import lesson, limits, selectors, services, throttles, validation
from timeline.forms import LoginForm, SignupForm, TweetForm
from timeline.payloads import fanout_payload, tweet_payload, user_payload

User = get_user_model()
logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}


def error_response(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, "fields": fields or {}}}, status=status)


def _fields(errors: dict[str, list[str]]) -> dict[str, str]:
    return {name: " ".join(str(m) for m in messages) for name, messages in errors.items()}


def invalid(errors: dict[str, list[str]]) -> ApiError:
    return ApiError(400, "invalid", "Some fields need another look.", _fields(errors))


def api_view(*methods: str, login_required: bool = True, staff_required: bool = False) -> Callable:
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error_response(405, "method_not_allowed", f"Use {' or '.join(methods)}.")
                response["Allow"] = ", ".join(methods)
                return response
            if login_required and not request.user.is_authenticated:
                return error_response(401, "unauthenticated", "Log in first.")
            if staff_required and not (request.user.is_authenticated and request.user.is_staff):
                return error_response(403, "forbidden", "Staff only.")
            try:
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message, exc.fields)
            except Http404 as exc:  # a service's "not here", in its own words
                return error_response(404, "not_found", str(exc) or "There is nothing at this address.")
            except ValidationError as exc:
                return error_response(400, "invalid", "Some fields need another look.", _fields(_error_dict(exc)))
            except Overloaded as exc:
                response = error_response(503, "overloaded", limits.queue_full_message(exc.retry_after))
                response["Retry-After"] = str(exc.retry_after)
                return response
            except RateLimited as exc:
                response = error_response(
                    429, "rate_limited", f"You are posting very fast; try again in {exc.retry_after} s."
                )
                response["Retry-After"] = str(exc.retry_after)
                return response
            except throttles.Throttled as exc:
                response = error_response(429, "throttled", f"Too many {exc.what}; try again in {exc.retry_after} s.")
                response["Retry-After"] = str(exc.retry_after)
                return response

        return wrapper

    return decorate


def _error_dict(exc: ValidationError) -> dict[str, list[str]]:
    return exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}


def json_object(request: HttpRequest) -> dict:
    """The request's body, which must be a JSON object."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send JSON with Content-Type: application/json.")
    try:
        data = validation.parse_json(request.body)
    except validation.BadInput as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "The body must be a JSON object.")
    return data


def json_body(request: HttpRequest, *fields: str) -> dict[str, str]:
    """The request's JSON object, with each named field a string (absent ones left out)."""
    data = json_object(request)
    wrong = {name: "Must be a string." for name in fields if name in data and not isinstance(data[name], str)}
    if wrong:
        raise ApiError(400, "invalid", "Some fields need another look.", wrong)
    return {name: data[name] for name in fields if name in data}


def query_int(
    request: HttpRequest, name: str, *, default: int | None = None, low: int = 1, high: int = validation.MAX_ID
) -> int | None:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        return validation.parse_int(raw, low=low, high=high)
    except ValueError:
        bounds = f"a whole number from {low} to {high}"
        raise ApiError(400, "invalid", f"{name} must be {bounds}.", {name: f"Must be {bounds}."}) from None


def _user_or_404(username: str):
    try:
        return User.objects.get(username=username)
    except User.DoesNotExist:
        raise ApiError(404, "not_found", f"There is no user called {username}.") from None


def _page_payload(page: selectors.Page) -> dict[str, Any]:
    return {"tweets": [tweet_payload(t) for t in page.tweets], "next_before": page.next_before}


# -- auth ---------------------------------------------------------------------------------------


@api_view("GET", login_required=False)
@ensure_csrf_cookie
def csrf(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


@api_view("POST", login_required=False)
def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(json_body(request, "username", "password"))
    throttles.signup(address=throttles.client_address(request))
    if not form.is_valid():
        raise invalid(form.errors)
    try:
        user = services.user_signup(**form.cleaned_data)
    except IntegrityError:  # the same name, taken a moment ago by a concurrent signup
        raise invalid({"username": ["A user with that username already exists."]}) from None
    login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
    return JsonResponse({"user": user_payload(user)}, status=201)


@api_view("POST", login_required=False)
def login_view(request: HttpRequest) -> HttpResponse:
    form = LoginForm(json_body(request, "username", "password"))
    if not form.is_valid():
        raise invalid(form.errors)
    user = services.user_login(request, **form.cleaned_data)
    if user is None:
        raise ApiError(400, "bad_credentials", "That username and password do not match.")
    return JsonResponse({"user": user_payload(user)})


@api_view("POST", login_required=False)
def logout_view(request: HttpRequest) -> HttpResponse:
    services.user_logout(request)
    return JsonResponse({"ok": True})


# -- tweets and timelines -----------------------------------------------------------------------


@api_view("POST")
def tweets(request: HttpRequest) -> HttpResponse:
    data = json_body(request, "body", "client_id", "publish_at")
    form = TweetForm(data)
    if not form.is_valid():
        raise invalid(form.errors)
    fields = form.cleaned_data
    if (publish_at := fields.pop("publish_at")) is not None:
        result = services.tweet_schedule(author=request.user, publish_at=publish_at, **fields)
    else:
        result = services.tweet_create(author=request.user, reserved=limits.reserved_slot(request), **fields)
    tweet = result.tweet  # with its author and outbox row, as made or as found
    return JsonResponse(_posted_payload(tweet), status=202 if result.created else 200)


def _posted_payload(tweet) -> dict[str, Any]:
    """A tweet and its delivery; a scheduled one has none yet (its ``publish_at`` says when)."""
    fanout = None if tweet.publish_at is not None else fanout_payload(tweet.fanout)
    return {"tweet": tweet_payload(tweet), "fanout": fanout}


@never_cache
@api_view("GET")
def scheduled_tweets(request: HttpRequest) -> HttpResponse:
    """One's own scheduled tweets, soonest first (at most services.SCHEDULED_MAX_PER_AUTHOR)."""
    return JsonResponse({"tweets": [tweet_payload(t) for t in selectors.scheduled_tweets(author=request.user)]})


@api_view("GET", "DELETE")
def tweet_detail(request: HttpRequest, tweet_id: int) -> HttpResponse:
    if request.method == "DELETE":
        try:
            services.tweet_delete(user=request.user, tweet_id=tweet_id)
        except services.TweetNotFound:
            raise ApiError(404, "not_found", f"There is no tweet {tweet_id} of yours.") from None
        return HttpResponse(status=204)
    try:
        tweet = selectors.tweet_with_fanout(tweet_id=tweet_id)
    except selectors.Tweet.DoesNotExist:
        raise ApiError(404, "not_found", f"There is no tweet {tweet_id}.") from None
    return JsonResponse({"tweet": tweet_payload(tweet), "fanout": fanout_payload(tweet.fanout)})


@api_view("GET")
def home_timeline(request: HttpRequest) -> HttpResponse:
    page = selectors.home_timeline(
        user=request.user,
        limit=query_int(request, "limit", default=selectors.DEFAULT_PAGE_SIZE, high=selectors.MAX_PAGE_SIZE),
        before=query_int(request, "before"),
        after=query_int(request, "after", low=0),
    )
    return JsonResponse({**_page_payload(page), "watermark": page.watermark})


# -- users and follows --------------------------------------------------------------------------


@api_view("GET")
def user_detail(request: HttpRequest, username: str) -> HttpResponse:
    user = _user_or_404(username)
    profile = selectors.user_profile(username=user.username, viewer=request.user)
    return JsonResponse(
        {
            "user": user_payload(profile.user),
            "followers": profile.followers,
            "following": profile.following,
            "followed_by_me": profile.followed_by_me,
        }
    )


@api_view("GET")
def user_tweets(request: HttpRequest, username: str) -> HttpResponse:
    page = selectors.user_tweets(
        author=_user_or_404(username),
        limit=query_int(request, "limit", default=selectors.DEFAULT_PAGE_SIZE, high=selectors.MAX_PAGE_SIZE),
        before=query_int(request, "before"),
    )
    return JsonResponse(_page_payload(page))


@api_view("POST", "DELETE")
def follow(request: HttpRequest, username: str) -> HttpResponse:
    throttles.follow_toggle(user_id=request.user.pk)
    followee = _user_or_404(username)
    if followee.pk == request.user.pk:
        raise ApiError(400, "self_follow", "You cannot follow yourself.")
    if request.method == "DELETE":
        services.follow_delete(follower=request.user, followee=followee)
        return HttpResponse(status=204)
    services.follow_create(follower=request.user, followee=followee)
    return user_detail.__wrapped__(request, username)


@never_cache
@api_view("GET")
def trends_view(request: HttpRequest) -> HttpResponse:
    """The ten #tags used most in the last hour (fanout.trends), as last published."""
    return JsonResponse(trends.current())


@never_cache
@api_view("GET", staff_required=True)
def stats(request: HttpRequest) -> HttpResponse:
    return JsonResponse(metrics.snapshot())


MAX_CAP = 100_000


@api_view("PUT", staff_required=True)
def ops_controls(request: HttpRequest) -> HttpResponse:
    """Staff's levers on /ops/: ``{"workers_paused": true|false}`` pauses or resumes every
    worker (RQ's suspension: they finish the job in hand and take no other), and ``{"cap": n}``
    sets the queue cap in force (0: none; null: back to FANOUT_QUEUE_CAP). Either or both."""
    data = json_object(request)
    if not data.keys() & {"workers_paused", "cap"}:
        raise ApiError(400, "bad_json", 'Send {"workers_paused": true or false} and/or {"cap": a number or null}.')
    paused, cap = data.get("workers_paused"), data.get("cap", ...)
    wrong = {}
    if "workers_paused" in data and not isinstance(paused, bool):
        wrong["workers_paused"] = "Must be true or false."
    if cap is not ... and cap is not None and (type(cap) is not int or not 0 <= cap <= MAX_CAP):
        wrong["cap"] = f"Must be a whole number from 0 (no cap) to {MAX_CAP}, or null."
    if wrong:
        raise ApiError(400, "invalid", "Some fields need another look.", wrong)
    services.ops_controls(workers_paused=paused, cap=cap)
    return JsonResponse(metrics.snapshot())


# -- the lesson page (timeline.lesson; demo mode only) --------------------------------------------


@api_view("POST")
def lesson_posts(request: HttpRequest) -> HttpResponse:
    """``{"body", "client_id", "way": "inline" | "queued"}``: @lesson posts the message to its
    audience, fanned out in the request or through the queue. As POST /api/tweets answers, plus
    the way and, once known, how long after saving it was in every follower's timeline."""
    author = lesson.account()  # 404 outside demo mode, before anything is read
    data = json_body(request, "body", "client_id", "way")
    form = TweetForm({"body": data.get("body"), "client_id": data.get("client_id")})
    errors = {} if form.is_valid() else dict(form.errors)
    if data.get("way") not in lesson.WAYS:
        errors["way"] = [f"Must be {' or '.join(repr(way.value) for way in lesson.Way)}."]
    if errors:
        raise invalid(errors)
    way = lesson.Way(data["way"])
    result = lesson.post(
        author=author,
        visitor=request.user,
        body=form.cleaned_data["body"],
        client_id=form.cleaned_data["client_id"],
        way=way,
    )
    return JsonResponse(_lesson_payload(result.tweet, way), status=202 if result.created else 200)


@never_cache
@api_view("GET")
def lesson_post(request: HttpRequest, tweet_id: int) -> HttpResponse:
    """One of the lesson's tweets and its delivery: the page asks until it is in every timeline."""
    return JsonResponse(_lesson_payload(lesson.lesson_tweet(tweet_id)))


def _lesson_payload(tweet, way: lesson.Way | None = None) -> dict[str, Any]:
    payload = {**_posted_payload(tweet), "delivered_after_ms": lesson.delivered_after_ms(tweet.fanout)}
    return payload if way is None else {**payload, "way": way.value}


@never_cache
@api_view("GET")
def lesson_stats(request: HttpRequest) -> HttpResponse:
    """The queue's figures, as GET /api/stats gives staff, for anyone on the lesson page."""
    lesson.account()
    return JsonResponse(metrics.snapshot())


@api_view("GET", login_required=False)
def schema(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_openapi_text(), content_type="application/yaml; charset=utf-8")


@cache
def _openapi_text() -> str:
    return (settings.BASE_DIR / "docs" / "openapi.yaml").read_text()


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 handler: JSON under /api/, the 404 page elsewhere."""
    if request.path.startswith("/api/"):
        return error_response(404, "not_found", "There is nothing at this address.")
    # A view's Http404 says what is missing; the URL resolver's says nothing a reader can use.
    message = exception.args[0] if exception is not None and exception.args else None
    if isinstance(exception, Resolver404) or not isinstance(message, str):
        message = None
    return render(request, "404.html", {"exception": message, "request_path": request.path}, status=404)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF rejections as JSON for API callers, Django's page for browsers."""
    if request.path.startswith("/api/"):
        return error_response(
            403, "csrf_failed", f"CSRF check failed: {reason} Send the csrftoken cookie's value in X-CSRFToken."
        )
    return html_csrf_failure(request, reason=reason)
