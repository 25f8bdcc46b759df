"""The web server: daphne, plus one way to write a prepared websocket frame to many sockets.

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
"""

from __future__ import annotations

from functools import partial

from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import tcp

from timeline.frames import EXTENSION


class FramesServer(Server):
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
