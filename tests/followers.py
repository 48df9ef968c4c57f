"""Many EventSource and WebSocket subscribers in one test process, on plain asyncio streams.

`tests.eventsource` and `tests.websocket_client` read one stream or socket
in a test's own thread; here hundreds are followed at once, each on its own
connection, read with the same parser (the event-stream format) or wsproto,
and, when the connection ends or fails, opened again from the last id
received: `Last-Event-ID` for a stream, `last_event_id` in the query for a
socket, as browsers and NchanSubscriber resume. Their counters tell how
often that happened, so a test can prove that subscribers resumed elsewhere.

The trap: behind a balancer the edge's close-delimited stream arrives
chunked; chunk boundaries fall anywhere, even between CR and LF, so lines
are cut from the decoded body only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from broker.wire import NOTICE_TYPE
from edge.eventstream import EVENT_STREAM, LAST_EVENT_ID_PARAMETER
from edge.websocket import SUBPROTOCOL
from tests.client import path
from tests.eventsource import EventSourceParser

# After a failed or ended stream, the pause before opening it again: well
# under the edge's `retry:`, which a browser would wait, to keep tests short.
RETRY_AFTER = 0.2


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


class Refused(Exception):
    pass


@dataclass
class Follower:
    """Follows one channel on one connection at a time, through `edges` in turn.

    Has the attributes `tests.stream` reads of a poller: `received`, `ids`,
    `polls` (connections opened), `errors` (connections that failed or ended early).
    """

    edges: list[str]
    channel_id: str
    offset: int = 0
    location: str = "updates"
    # A stream that fails is always opened again; the field matches the poller's.
    tolerate_errors: bool = True
    received: list[bytes] = field(default_factory=list)
    ids: list[tuple[int, int]] = field(default_factory=list)
    # The edge's own notices (missed, deleted) as they came.
    notices: list[str] = field(default_factory=list)
    polls: int = 0
    errors: int = 0
    last_event_id: str | None = None

    async def walk(self, count: int) -> list[bytes]:
        while len(self.received) < count:
            base = self.edges[(self.offset + self.polls) % len(self.edges)]
            self.polls += 1
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, Refused):
                await self._follow(base, count)
            if len(self.received) < count:
                self.errors += 1
                await asyncio.sleep(RETRY_AFTER)
        return self.received

    async def _follow(self, base: str, count: int) -> None:
        raise NotImplementedError

    def _take(self, last_event_id: str, data: bytes) -> None:
        time, _, tag = last_event_id.partition(":")
        self.last_event_id = last_event_id
        self.ids.append((int(time), int(tag)))
        self.received.append(data)


class StreamSubscriber(Follower):
    """A follower on an EventSource stream, resuming by `Last-Event-ID`."""

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
                raise Refused(f"{status} {headers.get('content-type')}")
            parser = EventSourceParser()
            async for chunk in _body(reader, headers):
                parser.feed(chunk)
                for event in parser.events:
                    if event.type == "message":
                        self._take(event.last_event_id, event.data.encode())
                    else:
                        self.notices.append(event.type)
                parser.events.clear()
                if len(self.received) >= count:
                    return
        finally:
            writer.close()


class SocketSubscriber(Follower):
    """A follower on a WebSocket in `ws+meta.nchan`, resuming by `last_event_id` in the query."""

    async def _follow(self, base: str, count: int) -> None:
        parts = urlsplit(base)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        ws = WSConnection(ConnectionType.CLIENT)
        target = path(self.location, self.channel_id)
        if self.last_event_id is not None:
            target += "?" + urlencode({LAST_EVENT_ID_PARAMETER: self.last_event_id})
        try:
            writer.write(
                ws.send(Request(host=parts.netloc, target=target, subprotocols=[SUBPROTOCOL]))
            )
            parts_of_message: list[bytes] = []
            while chunk := await reader.read(65536):
                ws.receive_data(chunk)
                for event in ws.events():
                    if isinstance(event, RejectConnection):
                        raise Refused(f"handshake refused {event.status_code}")
                    if isinstance(event, Ping):
                        writer.write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        return
                    elif isinstance(event, TextMessage | BytesMessage):
                        data = event.data.encode() if isinstance(event, TextMessage) else event.data
                        parts_of_message.append(data)
                        if event.message_finished:
                            self._frame(b"".join(parts_of_message))
                            parts_of_message.clear()
                if len(self.received) >= count:
                    return
        finally:
            writer.close()

    def _frame(self, data: bytes) -> None:
        head, _, body = data.partition(b"\n\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\n"))
        if fields.get("content-type") == NOTICE_TYPE:
            self.notices.append(body.decode())
        else:
            self._take(fields["id"], body)
