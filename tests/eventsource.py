"""An EventSource client for tests: a stream read off a raw socket, parsed as a browser parses it.

`EventSourceParser` follows the WHATWG "event stream interpretation"
(lines end at CRLF, LF or CR; `data` lines joined by LF; an event without
data is not dispatched; `id` sets the last event id, which an event
without an `id` line keeps), so a test sees what a page's EventSource
would, and nothing the edge writes can pass by being read too kindly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge.eventstream import EVENT_STREAM
from tests.raw_http import RawClient, open_socket


@dataclass(frozen=True)
class Event:
    type: str
    data: str
    # The stream's last event id once this event was dispatched.
    last_event_id: str


@dataclass
class EventSourceParser:
    events: list[Event] = field(default_factory=list)
    comments: int = 0
    retry: int | None = None
    last_event_id: str = ""
    _pending: bytes = b""
    _data: list[str] = field(default_factory=list)
    _type: str = ""
    _id: str | None = None

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        while True:
            cut = -1
            for index, byte in enumerate(self._pending):
                if byte in (10, 13):
                    cut = index
                    break
            if cut < 0:
                return
            line = self._pending[:cut]
            end = cut + 1
            if self._pending[cut] == 13:
                if end == len(self._pending):
                    return  # a CR that a LF may follow in the next chunk
                if self._pending[end] == 10:
                    end += 1
            self._pending = self._pending[end:]
            self._line(line.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        if not line:
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments += 1
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)

    def _dispatch(self) -> None:
        if self._id is not None:
            self.last_event_id = self._id
            self._id = None
        if self._data:
            data = "\n".join(self._data)
            self.events.append(Event(self._type or "message", data, self.last_event_id))
        self._data = []
        self._type = ""


class EventStream(RawClient):
    """One stream opened with a raw GET, read as it arrives; a context manager."""

    def __init__(
        self,
        base: str,
        target: str,
        *headers: str,
        timeout: float = 10,
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = open_socket(base, timeout, receive_buffer)
        lines = [f"GET {target} HTTP/1.1", "Host: edge", f"Accept: {EVENT_STREAM}", *headers]
        self.sock.sendall(("\r\n".join([*lines, "", ""])).encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.sock.recv(65536)
            assert chunk, f"the edge closed the connection before a head: {received!r}"
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 "), status_line
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.parser = EventSourceParser()
        self.ended = False
        # A refusal's body (it has a length); a stream's first bytes otherwise.
        self.body = rest
        if self.status == 200 and "content-length" not in self.headers:
            self.parser.feed(rest)
        elif "content-length" in self.headers:
            while len(self.body) < int(self.headers["content-length"]):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.body += chunk

    @property
    def events(self) -> list[Event]:
        return self.parser.events

    def read_some(self, timeout: float) -> bool:
        """Read what arrives within `timeout`; False once the edge closed the stream."""
        if self.ended:
            return False
        chunk = self.receive(timeout)
        if chunk is None:
            return True
        if not chunk:
            self.ended = True
            return False
        self.parser.feed(chunk)
        return True

    def summary(self) -> str:
        """What arrived, short enough for a failure message whatever the bodies' size."""
        events = self.events
        shown = [(event.type, event.data[:40], event.last_event_id) for event in events[-3:]]
        return f"{len(events)} events, the last {shown}, {self.parser.comments} comments"

    def until(self, done: object, timeout: float = 10, what: str = "events") -> None:
        """Read until `done()` holds, or fail after `timeout` seconds."""
        assert callable(done)
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.summary()}")
            if not self.read_some(min(remaining, 0.5)) and not done():
                raise AssertionError(f"the stream ended waiting for {what}; got {self.summary()}")

    def events_of(self, count: int, timeout: float = 10) -> list[Event]:
        """Read until `count` events have arrived; returns all of them."""
        self.until(lambda: len(self.events) >= count, timeout, f"{count} events")
        return self.events

    def until_closed(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.read_some(max(0.01, min(0.5, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise AssertionError(f"the stream was not closed within {timeout} s")
