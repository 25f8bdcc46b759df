"""Websocket frames made once for many sockets, and the ASGI extension that takes them.

timeline.serve (the web server) offers websocket applications ``scope["extensions"][EXTENSION]``
with ``send(frame, text)``; fanout.multicast builds the frame once per event. Kept apart from the
server so that the workers, which build no frames, never import daphne (and its reactor).
"""

from __future__ import annotations

import struct

EXTENSION = "timeline.frames"


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 section 5.2: a server's frames are not masked)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload
