"""W7's load generator: WebSockets with Nchan's `ws+meta.nchan` subprotocol, one per connection.

Each socket's handshake and frames go through its own wsproto client
connection (the RFC 6455 parts: the key and its accept, unmasking is not
needed from a server but fragments, pings and the close are), and each
whole message through `ops.bench.wsmeta`, so its id is checked as W6
checks an event's (`StreamLedger`). Pings are answered, since the edges
drop a silent peer. A socket the server closes is opened again at once
with `?last_event_id=` its last id, as NchanSubscriber reconnects
(`ops.bench.streams`, which also opens, counts and closes them).

The trap: a server that accepts the upgrade without the subprotocol
sends the publisher's bytes alone, so every message would look like one
without an id; that, and a refusal that is no error (a long-poll's
`200`), fail the workload instead.
"""

from __future__ import annotations

from urllib.parse import quote

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from broker.wire import NOTICE_TYPE
from ops.bench.streams import Stream, StreamConnection
from ops.bench.wsmeta import read_meta

SUBPROTOCOL = "ws+meta.nchan"
NOTICE = NOTICE_TYPE.encode()


class WebSocketProtocol(StreamConnection):
    def __init__(self, stream: Stream, host: str, port: int) -> None:
        super().__init__(stream, host, port)
        self.ws = WSConnection(ConnectionType.CLIENT)
        # A message's payload so far, when it arrived in several pieces.
        self.partial: list[bytes] = []

    def request(self) -> bytes:
        stream = self.stream
        target = stream.target_path
        if stream.last_event_id:
            target += "?last_event_id=" + quote(stream.last_event_id.decode("ascii"))
        return self.ws.send(
            Request(host=f"{self.host}:{self.port}", target=target, subprotocols=[SUBPROTOCOL])
        )

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                self._piece(event.data.encode("utf-8"), event.message_finished)
            elif isinstance(event, BytesMessage):
                self._piece(bytes(event.data), event.message_finished)
            elif isinstance(event, Ping):
                self._send(ws.send(event.response()))
            elif isinstance(event, AcceptConnection):
                if event.subprotocol != SUBPROTOCOL:
                    self.not_a_stream(
                        f"the upgrade of {self.stream.target_path} was accepted with "
                        f"subprotocol {event.subprotocol!r}, not {SUBPROTOCOL}"
                    )
                    return
                self.accept()
            elif isinstance(event, RejectConnection):
                if event.status_code >= 400:
                    self.refused()
                else:
                    self.not_a_stream(
                        f"the upgrade of {self.stream.target_path} was answered "
                        f"with {event.status_code}"
                    )
                return
            elif isinstance(event, CloseConnection):
                # Answered, then the connection ends and the socket opens again.
                if ws.state.name == "REMOTE_CLOSING":
                    self._send(ws.send(event.response()))
                self.close()
                return

    def _piece(self, piece: bytes, finished: bool) -> None:
        if not finished:
            self.partial.append(piece)
            return
        if self.partial:
            self.partial.append(piece)
            piece = b"".join(self.partial)
            self.partial = []
        message = read_meta(piece)
        if message is None:
            # No header: counted as a message without an id, so a bad id.
            self.deliver(None, piece)
        elif message.content_type == NOTICE:
            self.stream.named[NOTICE] += 1
        else:
            self.deliver(message.id, message.data)

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
