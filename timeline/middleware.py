"""Redis or the database away: a clear 503 with Retry-After, never a 500.

Either can go away for seconds (a restart, a failover, SQLite's write lock held past its
timeout). Views that can do without Redis do (the home timeline is read from the database);
anything else that meets an outage ends here and answers like the rest of the app sheds load:
503, ``Retry-After``, JSON for the API and a plain page for people. The page does not extend
``base.html``, whose header asks the database who is logged in.
"""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from fanout import outages, prometheus

RETRY_AFTER_SECONDS = 5


def outage_part(exception: BaseException | None) -> str | None:
    """Which part an exception says is away, in the words the answer uses ("queue" or
    "database"), or None for a real bug."""
    part = outages.part_of(exception)
    return {outages.REDIS: "queue", outages.DATABASE: "database"}.get(part)


def json_error_body(code: str, message: str, fields: dict[str, str] | None = None) -> bytes:
    """The API's one error shape, as bytes (for answers made outside Django's views)."""
    return json.dumps({"error": {"code": code, "message": message, "fields": fields or {}}}).encode()


def security_headers() -> list[tuple[bytes, bytes]]:
    """What Django and its middleware put on a JSON answer, for answers made in the event loop
    (timeline.hot_reads, timeline.limits); the content length comes per answer."""
    headers = [
        (b"content-type", b"application/json"),
        (b"vary", b"Cookie"),
        (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
        (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()),
    ]
    directives = settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]
    policy = "; ".join(f"{name} {' '.join(values)}" for name, values in directives.items())
    headers.append((b"content-security-policy", policy.encode()))
    if settings.SECURE_HSTS_SECONDS:  # set only with DJANGO_SECURE, when plain HTTP is redirected
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        headers.append((b"strict-transport-security", hsts.encode()))
    return headers


def unavailable_response(request: HttpRequest, part: str) -> HttpResponse:
    message = f"The {part} is unreachable for a moment; nothing was done. Try again in a few seconds."
    if request.path.startswith("/api/"):
        body = {"error": {"code": "unavailable", "message": message, "fields": {}}}
        response: HttpResponse = JsonResponse(body, status=503)
    else:
        html = render_to_string("503.html", {"message": message, "retry_after": RETRY_AFTER_SECONDS})
        response = HttpResponse(html, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class ServiceUnavailableMiddleware:
    """Answers an outage met anywhere in a view with 503, and says once per outage that the part
    is away and once that it is back (fanout.outages), however many requests meet it."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if outages.outages.since and not getattr(request, "met_an_outage", False) and connection.connection is not None:
            outages.outages.worked(outages.DATABASE)  # this request used the database, and it answered
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        part = outage_part(exception)
        if part is None:
            return None
        request.met_an_outage = True
        outages.outages.failed(outages.part_of(exception), f"{request.method} {request.path}", exception)
        return unavailable_response(request, part)


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Time each answer for /metrics, by view name (bounded: URL names, not paths)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or "unnamed") if match is not None else "no match"
        method = request.method if request.method in KNOWN_METHODS else "other"
        prometheus.REQUEST_SECONDS.labels(view, method, f"{response.status_code // 100}xx").observe(
            time.perf_counter() - started
        )
        return response
