"""A WebSocket client for the tests: wsproto's client side on a blocking socket.

wsproto writes the handshake and the masked frames a browser would and
reads the edge's 101, frames and close; this module only moves the bytes
and keeps what arrived. A refused handshake is kept as its status, headers
and body. Reading stops at a deadline, so a test waits for nothing forever.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from edge.websocket import SUBPROTOCOL
from tests.raw_http import RawClient, open_socket


@dataclass
class Received:
    """One whole data message as the client read it, and, in ws+meta.nchan, its header."""

    data: bytes
    text: bool

    @property
    def meta(self) -> tuple[dict[str, str], bytes]:
        """The ws+meta.nchan header fields and the data after the blank line."""
        head, _, body = self.data.partition(b"\n\n")
        fields = {}
        for line in head.decode("utf-8").split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        return fields, body

    @property
    def id(self) -> str:
        return self.meta[0]["id"]

    @property
    def body(self) -> bytes:
        return self.meta[1]


@dataclass
class Socket(RawClient):
    base: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    subprotocols: list[str] = field(default_factory=lambda: [SUBPROTOCOL])
    receive_buffer: int | None = None
    # Answer the edge's pings (a client that does not is silent).
    answer_pings: bool = True

    def __post_init__(self) -> None:
        address = urlsplit(self.base)
        self.sock = open_socket(self.base, 10, self.receive_buffer)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[Received] = []
        self.pings = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        # The connection ended (EOF or reset) after the handshake.
        self.ended = False
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.subprotocol: str | None = None
        self.body = b""
        self._parts: list[bytes] = []
        request = Request(
            host=f"{address.hostname}:{address.port}",
            target=self.target,
            subprotocols=self.subprotocols,
            extra_headers=[(name.encode(), value.encode()) for name, value in self.headers],
        )
        self.sock.sendall(self.ws.send(request))
        self._handshake(10)

    def _handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.status is None or (self.status != 101 and not self.ended):
            if not self._read(deadline):
                break

    def _read(self, deadline: float) -> bool:
        """Read what arrives before `deadline`; False when nothing more will."""
        if self.ended:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        data = self.receive(left)
        if data is None:
            return False
        if not data:
            self.ended = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        for event in self.ws.events():
            self._event(event)
        return not self.ended

    def _event(self, event: Event) -> None:
        if isinstance(event, AcceptConnection):
            self.status = 101
            self.subprotocol = event.subprotocol
            self.response_headers = {
                name.decode().lower(): value.decode() for name, value in event.extra_headers
            }
        elif isinstance(event, RejectConnection):
            self.status = event.status_code
            self.response_headers = {
                name.decode().lower(): value.decode() for name, value in event.headers
            }
        elif isinstance(event, RejectData):
            self.body += event.data
        elif isinstance(event, Ping):
            self.pings += 1
            if self.answer_pings:
                self.send_bytes(self.ws.send(event.response()))
        elif isinstance(event, Pong):
            pass
        elif isinstance(event, CloseConnection):
            if self.close_code is not None:
                return  # wsproto's 1006 for the end of a connection already closed
            self.close_code, self.close_reason = event.code, event.reason
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                self.send_bytes(self.ws.send(event.response()))
        elif isinstance(event, (TextMessage, BytesMessage)):
            data = event.data
            self._parts.append(data.encode("utf-8") if isinstance(data, str) else data)
            if event.message_finished:
                self.messages.append(
                    Received(b"".join(self._parts), isinstance(event, TextMessage))
                )
                self._parts = []

    def send_bytes(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.ended = True

    def send(self, event: Message[str] | Message[bytes] | Ping | CloseConnection) -> None:
        self.send_bytes(self.ws.send(event))

    def messages_of(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if not self._read(deadline):
                break
        assert len(self.messages) >= count, (
            f"{len(self.messages)} of {count} messages arrived; "
            f"closed {self.close_code} {self.close_reason}, ended {self.ended}"
        )
        return self.messages

    def read_some(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._read(deadline):
            pass

    def until_closed(self, timeout: float = 10.0) -> int | None:
        """Read until the connection ends; the close code it ended with (None without one)."""
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        assert self.ended, f"the connection was still open after {timeout} s"
        return self.close_code
