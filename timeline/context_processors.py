"""What every page's template may read besides the request and the user."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def demo_mode(request: HttpRequest) -> dict[str, bool]:
    """Whether this is the demo (SEED_DEMO=true): the header then links to the lesson page."""
    return {"demo_mode": settings.DEMO_MODE}
