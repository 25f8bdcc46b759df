"""A websocket client as light as a benchmark's client can be: one asyncio Protocol per socket.

bench/live_latency.py holds up to 10,000 sockets in one process on the same two cores as the
server. With the ``websockets`` library each frame costs the client about 70 us (its parser, a
message queue per socket, a task woken per frame), 0.7 s of CPU for a tweet to 10,000 sockets:
as much as the server's web process, and the client's own queueing showed up as latency. Here
a frame is parsed in ``data_received`` and handed to a callback with the time it arrived; the
client answers pings (daphne sends them) and closes cleanly, and does nothing else: no
fragmented messages (daphne sends none), no compression, no checks a test suite would make.
The suite's tests use the ``websockets`` library.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable

TEXT, CLOSE, PING = 0x1, 0x8, 0x9


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A final frame from a client: masked, as RFC 6455 requires (with a zero mask, which the
    protocol allows: the server unmasks the same way; the mask guards proxies, not this test)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + b"\0\0\0\0" + payload


class LightSocket(asyncio.Protocol):
    def __init__(self, on_text: Callable[[float, bytes], None], on_closed: Callable[[], None]) -> None:
        self.on_text, self.on_closed = on_text, on_closed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if not self.opened.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[9:12])
            del self.buffer[: end + 4]
            if status != b"101":
                self.opened.set_exception(ConnectionError(f"handshake answered {status.decode(errors='replace')}"))
                self.transport.close()
                return
            self.opened.set_result(None)
        self._frames(now)

    def _frames(self, now: float) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            start = 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, start = struct.unpack_from("!H", buffer, 2)[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, start = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < start + size:
                return
            payload = bytes(buffer[start : start + size])
            del buffer[: start + size]
            if opcode == TEXT:
                self.on_text(now, payload)
            elif opcode == PING:
                self.transport.write(client_frame(0xA, payload))
            elif opcode == CLOSE:
                self.close(payload[:2] or struct.pack("!H", 1000))

    def close(self, code: bytes = struct.pack("!H", 1000)) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.closed = True
            self.transport.write(client_frame(CLOSE, code))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.opened.done():  # never open: the opener raises, and may try again
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
            return
        self.on_closed()


async def open_socket(
    host: str,
    port: int,
    path: str,
    *,
    cookie: str,
    origin: str,
    on_text: Callable[[float, bytes], None],
    on_closed: Callable[[], None],
    timeout: float = 30,
) -> LightSocket:
    """Open a websocket and return it once the server has accepted it (101)."""
    loop = asyncio.get_running_loop()
    _, socket = await asyncio.wait_for(
        loop.create_connection(lambda: LightSocket(on_text, on_closed), host, port), timeout
    )
    key = base64.b64encode(os.urandom(16)).decode()
    socket.transport.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    try:
        await asyncio.wait_for(asyncio.shield(socket.opened), timeout)
    except BaseException:
        socket.transport.close()
        raise
    return socket
