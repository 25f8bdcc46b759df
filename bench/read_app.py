"""The app bench/reads.py serves: the project's ASGI app, plus a bare ASGI endpoint at /bare.

Both run in the same daphne process, so the bare endpoint measures what the server itself
costs per request on this machine, in the same run as the Django paths it is compared with.
"""

from timeline.asgi import application as timeline_application

BARE_BODY = b'{"ok": true}'
BARE_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BARE_BODY)).encode())]


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/bare":
        await send({"type": "http.response.start", "status": 200, "headers": BARE_HEADERS})
        await send({"type": "http.response.body", "body": BARE_BODY})
        return
    await timeline_application(scope, receive, send)
