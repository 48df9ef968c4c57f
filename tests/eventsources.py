"""Many EventSource subscribers in one test process, on plain asyncio streams.

Each subscriber holds one stream open, reads it as a browser's EventSource
does (the event-stream format of the HTML standard: fields, `data` lines
joined by LF, a blank line dispatching the event, comments ignored) and,
when the stream ends or fails, opens it again with `Last-Event-ID`, the
browser's own resume. Its counters tell which of those happened, so a test
can prove that subscribers did resume and did not simply stay on one edge.

The trap: the edge may answer a stream with chunked transfer coding or
close-delimited; the chunk boundaries fall anywhere, including inside a
line or between CR and LF, so lines are cut from the decoded body only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.client import path

EVENT_STREAM = "text/event-stream"
# After a failed or ended stream, the pause before opening it again: well
# under the edge's `retry:`, which a browser would wait, to keep tests short.
RETRY_AFTER = 0.2


@dataclass
class Event:
    id: str | None
    event: str
    data: str


class EventParser:
    """The event-stream format, fed bytes as they arrive, giving whole events."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._has_id = False
        self.comments = 0
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        events = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            end, after = cut
            line = self._buffer[:end].decode("utf-8", errors="replace")
            self._buffer = self._buffer[after:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> Event | None:
        if not line:
            if not self._data:
                self._event, self._has_id = "", False
                return None
            own_id = self._id if self._has_id else None
            event = Event(own_id, self._event or "message", "\n".join(self._data))
            self._data, self._event, self._has_id = [], "", False
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id, self._has_id = value, True
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line of `buffer` ends and the next begins, or None if not yet known."""
    for index, byte in enumerate(buffer):
        if byte == 0x0A:
            return index, index + 1
        if byte == 0x0D:
            if index + 1 == len(buffer):
                return None  # a CR at the end: the LF of a CRLF may follow
            return index, index + 2 if buffer[index + 1] == 0x0A else index + 1
    return None


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        while chunk := await reader.read(65536):
            yield chunk


class StreamRefused(Exception):
    pass


@dataclass
class StreamSubscriber:
    """Follows one channel on a stream, through `edges` in turn, resuming by `Last-Event-ID`.

    Has the attributes `tests.stream` reads of a poller: `received`, `ids`,
    `polls` (streams opened), `errors` (streams that failed or ended early).
    """

    edges: list[str]
    channel_id: str
    offset: int = 0
    location: str = "updates"
    # A stream that fails is always opened again; the field matches the poller's.
    tolerate_errors: bool = True
    received: list[bytes] = field(default_factory=list)
    ids: list[tuple[int, int]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    polls: int = 0
    errors: int = 0
    last_event_id: str | None = None

    async def walk(self, count: int) -> list[bytes]:
        while len(self.received) < count:
            base = self.edges[(self.offset + self.polls) % len(self.edges)]
            self.polls += 1
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, StreamRefused):
                await self._follow(base, count)
            if len(self.received) < count:
                self.errors += 1
                await asyncio.sleep(RETRY_AFTER)
        return self.received

    async def _follow(self, base: str, count: int) -> None:
        parts = urlsplit(base)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            lines = [
                f"GET {path(self.location, self.channel_id)} HTTP/1.1",
                f"Host: {parts.netloc}",
                f"Accept: {EVENT_STREAM}",
            ]
            if self.last_event_id is not None:
                lines.append(f"Last-Event-ID: {self.last_event_id}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status != 200 or not headers.get("content-type", "").startswith(EVENT_STREAM):
                raise StreamRefused(f"{status} {headers.get('content-type')}")
            parser = EventParser()
            async for chunk in _body(reader, headers):
                for event in parser.feed(chunk):
                    self._take(event)
                if len(self.received) >= count:
                    return
        finally:
            writer.close()

    def _take(self, event: Event) -> None:
        self.events.append(event)
        if event.event != "message" or event.id is None:
            return
        time, _, tag = event.id.partition(":")
        self.last_event_id = event.id
        self.ids.append((int(time), int(tag)))
        self.received.append(event.data.encode())
