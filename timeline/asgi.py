"""ASGI entry point: HTTP through Django, websockets through Channels (see timeline.routing)."""

import atexit
import gc
import os
import resource

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timeline.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from fanout import prometheus  # noqa: E402
from timeline.hot_reads import HotReads  # noqa: E402
from timeline.limits import BodyLimit, InFlightLimit, QueueAdmission  # noqa: E402
from timeline.routing import RefuseDuringOutage, SameOriginOnly, websocket_urlpatterns  # noqa: E402

# A web process holding a thousand sockets has a large long-lived heap, and a fan-out briefly
# holds one message per socket. With the default thresholds (700, 10, 10) those messages are
# promoted before they die, and every few tweets a full collection walks the whole heap: ~250 ms
# with the interpreter stopped (bench/live_latency.py, docs/benchmarks.md). Collecting the
# young generation less often lets a fan-out's garbage die young.
gc.set_threshold(10_000, 50, 100)

# Every open websocket is a file descriptor. The usual soft limit (1024) would cap a web process
# at about a thousand sockets; the hard limit is what the system allows, so take all of it.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard if _hard != resource.RLIM_INFINITY else 1 << 20, _hard))

# This process's open-sockets gauge leaves /metrics with it.
atexit.register(prometheus.process_exiting)

application = ProtocolTypeRouter(
    {
        # Hot reads, and posts refused on the queue cap, are answered in the event loop without
        # a thread, so the door (which bounds the requests that take one) stands behind them:
        # only what they pass to Django counts.
        "http": BodyLimit(
            HotReads(
                QueueAdmission(
                    InFlightLimit(django_asgi_app, limit=settings.WEB_MAX_IN_FLIGHT, running=settings.WEB_THREADS)
                )
            )
        ),
        "websocket": SameOriginOnly(RefuseDuringOutage(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)
