"""The web server: daphne, plus a bound on request bodies and one way to write a prepared
websocket frame to many sockets.

    python -m timeline.serve [daphne's options] timeline.asgi:application

A fan-out writes the same event to every open page of its recipients. At 10,000 sockets in one
process (bench/live_latency.py), the path of each write cost far more than the write itself:
Channels' wrappers around the consumer's ``send``, daphne's reply coroutine, autobahn framing the
message and formatting a debug line it does not print, then Twisted registering the socket with
the event loop as a writer and taking it off again once the loop had sent the bytes. This
server offers websocket applications an ASGI extension, ``scope["extensions"]["timeline.frames"]``,
whose ``send(frame, text)`` takes a text frame built once for all sockets (timeline.frames) and
hands it to the kernel at once (:func:`write_now`).

Order is kept: behind frames still queued in autobahn, or with compression negotiated, ``text``
goes the usual way; behind bytes Twisted still holds, the frame joins them. An application that
does not find the extension (another server) sends ``websocket.send`` messages as always
(fanout.multicast).

Request bodies: Twisted reads a request's whole body (into memory, or a temporary file past
100 KB) before daphne hands the request to the application, so a refusal in the application
comes after a few hundred megabytes have been read. Here a request whose ``Content-Length``
passes ``settings.DATA_UPLOAD_MAX_MEMORY_SIZE`` (the largest body any route takes) is answered
413 before its body is read, and a chunked one is cut off with a 413 once it passes it; the
connection is closed. (timeline.limits.BodyLimit refuses the same at the application, for other
servers.)
"""

from __future__ import annotations

from functools import partial

from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import tcp

from timeline.frames import EXTENSION


class BoundedRequest(WebRequest):
    """daphne's request, refusing a body larger than the largest any route takes, unread."""

    refused = False
    received = 0

    def gotLength(self, length):
        if length is not None and length > _max_body():
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.received += len(data)
        if self.received > _max_body():
            self._refuse()
            return
        super().handleContentChunk(data)

    def process(self):
        if not self.refused:  # else the connection is closing and nothing is answered twice
            return super().process()

    def _refuse(self) -> None:
        from timeline.limits import too_large_response

        self.refused = True
        status, headers, body = too_large_response()
        head = b"HTTP/1.1 %d Content Too Large\r\n" % status
        head += b"".join(b"%s: %s\r\n" % pair for pair in [*headers, (b"connection", b"close")])
        transport = self.channel.transport
        transport.write(head + b"\r\n" + body)
        transport.loseConnection()  # stops reading: the rest of the body is never taken in


def _max_body() -> int:
    from django.conf import settings

    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class BoundedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedRequest
        return protocol


class FramesServer(Server):
    # daphne's run() makes its HTTP factory from a class named in its code, with no setting to
    # name another: the one it assigns is replaced by ours (checked with daphne 4.2.3).
    @property
    def http_factory(self):
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory):
        self._http_factory = BoundedHTTPFactory(self) if type(factory) is HTTPFactory else factory

    def create_application(self, protocol, scope):
        if isinstance(protocol, WebSocketProtocol):
            extensions = dict(scope.get("extensions") or {})
            extensions[EXTENSION] = {"send": partial(self.send_frame, protocol)}
            scope = {**scope, "extensions": extensions}
        return super().create_application(protocol, scope)

    def send_frame(self, protocol: WebSocketProtocol, frame: bytes, text: str) -> None:
        """Write ``frame`` (``text`` as a websocket text frame) to an open socket; a socket that
        is closing or gone gets nothing, as with daphne's own reply path."""
        connection = self.connections.get(protocol)
        if connection is None or connection.get("disconnected") or protocol.state != protocol.STATE_OPEN:
            return
        if protocol.send_queue or protocol._perMessageCompress is not None:
            protocol.sendMessage(text.encode(), False)
        else:
            write_now(protocol.transport, frame)


def write_now(transport, data: bytes) -> None:
    """Write ``data`` to a plain TCP transport's socket now, and leave to Twisted only what the
    kernel would not take.

    ``transport.write`` only buffers: it registers the socket as a writer with the event loop,
    which sends on its next turn and then unregisters it, two ``epoll_ctl`` calls and a callback
    per socket, for a frame the kernel nearly always takes whole at once. When Twisted holds
    nothing for this socket, the bytes go to ``send`` here; the rest, if any, is buffered by
    Twisted as usual. Anything else (TLS, a socket closing, bytes already waiting, an error)
    goes through ``transport.write``, which knows how to handle it.
    """
    if (
        type(transport) is not tcp.Server  # TLS from the start wraps the transport in another
        or transport.TLS  # TLS started later writes through its TLS protocol
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or transport.dataBuffer
        or transport._tempDataBuffer
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:  # reset, broken pipe: Twisted's own write finds it and closes the connection
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


class FramesCommandLine(CommandLineInterface):
    server_class = FramesServer


if __name__ == "__main__":
    FramesCommandLine.entrypoint()
