"""W6's load generator: EventSource streams, one per connection, on asyncio protocols.

Each stream asks as a browser's EventSource does (`Accept:
text/event-stream`, and `Last-Event-ID` when it opens again), reads the
body through `ops.bench.eventstream` (chunked or not, as the server
frames it) and checks every event as it arrives (`StreamLedger`): its
body's sequence number, and its id against the stream's last and against
what the channel's other streams saw. A stream the server closes opens
again at once from its last event id, as EventSource would after `retry`;
each time is counted. Written against the bare protocol like `loadgen.py`,
so the client is not what limits a run.

The trap: a server that answers the stream's request as a long-poll (a
`200` with a message and no `text/event-stream`) would look like a stream
that got one event; such an answer fails the workload instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from ops.bench.eventstream import ChunkedDecoder, EventStreamParser
from ops.bench.ledger import StreamLedger
from ops.bench.loadgen import CONNECT_BATCH, RETRY_AFTER

EVENT_STREAM = b"text/event-stream"
MESSAGE = b"message"


class NotAStream(Exception):
    """The server answered a stream's request with something that is not a stream."""


@dataclass(eq=False)
class Stream:
    channel_id: str
    target_path: str
    ledger: StreamLedger
    expected: int
    # Heads of 200 event streams received: 1, plus one per reopening.
    opened: int = 0
    reopened: int = 0
    errors: int = 0
    # Events of types other than `message` (the server's own), by type.
    named: Counter[bytes] = field(default_factory=Counter)
    last_event_id: bytes = b""
    done: asyncio.Future[None] | None = None
    protocol: StreamProtocol | None = None
    closing: bool = False

    @property
    def received(self) -> int:
        return self.ledger.received

    def finish(self, failure: Exception | None = None) -> None:
        if self.done is not None and not self.done.done():
            if failure is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(failure)


class StreamProtocol(asyncio.Protocol):
    def __init__(self, stream: Stream, host: str, port: int) -> None:
        self.stream = stream
        self.host = host
        self.port = port
        self.head = bytearray()
        self.in_body = False
        self.chunked: ChunkedDecoder | None = None
        self.parser = EventStreamParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        stream = self.stream
        stream.protocol = self
        resume = b""
        if stream.last_event_id:
            resume = b"Last-Event-ID: " + stream.last_event_id + b"\r\n"
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n%s\r\n"
            % (stream.target_path.encode(), self.host.encode(), self.port, resume)
        )

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self.head[end + 4 :])
            if not self._accept(bytes(self.head[:end])):
                return
            self.in_body = True
        if self.chunked is not None:
            data = self.chunked.feed(data)
        if not data:
            return
        stream = self.stream
        parser = self.parser
        ledger = stream.ledger
        for event in parser.feed(data):
            if event.type != MESSAGE:
                stream.named[event.type] += 1
                continue
            seq = ledger.record(event.last_event_id if event.own_id else None, event.data)
            if seq == stream.expected - 1 or ledger.received >= stream.expected:
                stream.finish()
        stream.last_event_id = parser.last_event_id

    def _accept(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        content_type = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-type":
                content_type = value.strip().lower()
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = ChunkedDecoder()
        stream = self.stream
        if status != 200:
            # Refused for now (a 503 while the broker is away, say): open again shortly.
            stream.errors += 1
            self._close()
            return False
        if not content_type.startswith(EVENT_STREAM):
            stream.finish(
                NotAStream(
                    f"GET {stream.target_path} with Accept: text/event-stream was answered "
                    f"with Content-Type {content_type.decode('latin-1')!r}"
                )
            )
            self._close()
            return False
        stream.opened += 1
        return True

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        stream = self.stream
        if stream.protocol is self:
            stream.protocol = None
        if stream.closing or (stream.done is not None and stream.done.done()):
            return
        # The server ended the stream: open it again from the last event id.
        stream.reopened += 1
        loop = asyncio.get_running_loop()
        delay = 0.0 if self.in_body else RETRY_AFTER
        loop.call_later(delay, lambda: loop.create_task(_reopen(stream, self.host, self.port)))


async def _reopen(stream: Stream, host: str, port: int) -> None:
    if stream.closing:
        return
    try:
        await asyncio.get_running_loop().create_connection(_factory(stream, host, port), host, port)
    except OSError:
        stream.errors += 1
        asyncio.get_running_loop().call_later(
            RETRY_AFTER, lambda: asyncio.get_running_loop().create_task(_reopen(stream, host, port))
        )


async def open_all(host: str, port: int, streams: list[Stream]) -> None:
    loop = asyncio.get_running_loop()
    for start in range(0, len(streams), CONNECT_BATCH):
        batch = streams[start : start + CONNECT_BATCH]
        for stream in batch:
            stream.done = loop.create_future()
        await asyncio.gather(
            *(loop.create_connection(_factory(stream, host, port), host, port) for stream in batch)
        )


def _factory(stream: Stream, host: str, port: int) -> Callable[[], StreamProtocol]:
    return lambda: StreamProtocol(stream, host, port)


async def wait_until(ready: list[Stream], test: str, timeout: float) -> None:
    """Wait until every stream is `opened` or has `received` an event; a failed stream
    (not a stream at all) fails the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        for stream in ready:
            done = stream.done
            if done is not None and done.done() and done.exception() is not None:
                raise cast(BaseException, done.exception())
        if all(getattr(stream, test) > 0 for stream in ready):
            return
        if time.monotonic() > deadline:
            missing = sum(1 for stream in ready if getattr(stream, test) == 0)
            raise TimeoutError(f"{missing} of {len(ready)} streams not {test} in {timeout} s")
        await asyncio.sleep(0.02)


async def wait_all(streams: list[Stream], timeout: float) -> float:
    """Wait until every stream has all it expects; returns when the last one did."""
    await asyncio.wait_for(
        asyncio.gather(*(s.done for s in streams if s.done is not None)), timeout
    )
    return time.time()


def close_all(streams: list[Stream]) -> None:
    for stream in streams:
        stream.closing = True
        if stream.protocol is not None:
            stream.protocol._close()
