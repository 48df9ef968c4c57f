"""Long-lived subscriptions, one per connection: what W6's EventSource streams and W7's
WebSockets share.

A `Stream` is one subscriber that the server keeps sending to: its ledger
(`StreamLedger`, every message checked on arrival), its last id, and how
often it was opened. A transport's protocol (`ops.bench.eventsource`,
`ops.bench.wsclient`) subclasses `StreamConnection`: it writes its request
and reads its framing, and hands each message to `deliver`; opening,
reopening and closing are here. A stream the server ends is opened again
at once from its last id, as EventSource after `retry` and NchanSubscriber
after a close do; each time is counted (`reopened`). Written against the
bare protocol like `loadgen.py`, so the client is not what limits a run.

The trap: a server that answers a stream's request with something else
(a long-poll's `200`, a WebSocket without the subprotocol that carries
ids) would look like a stream that got one message, or messages without
ids; such an answer fails the workload instead (`NotAStream`).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from ops.bench.ledger import StreamLedger
from ops.bench.loadgen import CONNECT_BATCH, RETRY_AFTER


class NotAStream(Exception):
    """The server answered a stream's request with something that is not a stream."""


@dataclass(eq=False)
class Stream:
    channel_id: str
    target_path: str
    ledger: StreamLedger
    expected: int
    # The protocol each of its connections speaks.
    kind: type[StreamConnection]
    # Streams accepted by the server: 1, plus one per reopening.
    opened: int = 0
    reopened: int = 0
    errors: int = 0
    # The server's own events or frames (EventSource event types other than
    # `message`; a WebSocket's notices, by content type), not messages.
    named: Counter[bytes] = field(default_factory=Counter)
    last_event_id: bytes = b""
    done: asyncio.Future[None] | None = None
    protocol: StreamConnection | None = None
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


class StreamConnection(asyncio.Protocol, ABC):
    """One connection of a stream; a transport says what it sends (`request`) and reads."""

    def __init__(self, stream: Stream, host: str, port: int) -> None:
        self.stream = stream
        self.host = host
        self.port = port
        # Set once the server accepted the stream: a reopening after that is at once.
        self.accepted = False
        self.transport: asyncio.Transport | None = None

    @abstractmethod
    def request(self) -> bytes: ...

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.stream.protocol = self
        self.transport.write(self.request())

    def accept(self) -> None:
        self.accepted = True
        self.stream.opened += 1

    def refused(self) -> None:
        """Refused for now (a 503 while the broker is away, say): open again shortly."""
        self.stream.errors += 1
        self.close()

    def not_a_stream(self, why: str) -> None:
        self.stream.finish(NotAStream(why))
        self.close()

    def deliver(self, event_id: bytes | None, data: bytes) -> None:
        """One message, with its own id (None when it came without one)."""
        stream = self.stream
        ledger = stream.ledger
        seq = ledger.record(event_id, data)
        if event_id is not None:
            stream.last_event_id = event_id
        if seq == stream.expected - 1 or ledger.received >= stream.expected:
            stream.finish()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        stream = self.stream
        if stream.protocol is self:
            stream.protocol = None
        if stream.closing or (stream.done is not None and stream.done.done()):
            return
        # The server ended the stream: open it again from the last id.
        stream.reopened += 1
        loop = asyncio.get_running_loop()
        delay = 0.0 if self.accepted else RETRY_AFTER
        loop.call_later(delay, lambda: loop.create_task(_reopen(stream, self.host, self.port)))


async def _reopen(stream: Stream, host: str, port: int) -> None:
    if stream.closing:
        return
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(_factory(stream, host, port), host, port)
    except OSError:
        stream.errors += 1
        loop.call_later(RETRY_AFTER, lambda: loop.create_task(_reopen(stream, host, port)))


async def open_all(host: str, port: int, streams: list[Stream]) -> None:
    loop = asyncio.get_running_loop()
    for start in range(0, len(streams), CONNECT_BATCH):
        batch = streams[start : start + CONNECT_BATCH]
        for stream in batch:
            stream.done = loop.create_future()
        await asyncio.gather(
            *(loop.create_connection(_factory(stream, host, port), host, port) for stream in batch)
        )


def _factory(stream: Stream, host: str, port: int) -> Callable[[], StreamConnection]:
    return lambda: stream.kind(stream, host, port)


async def wait_until(ready: list[Stream], test: str, timeout: float) -> None:
    """Wait until every stream is `opened` or has `received` a message; a failed stream
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
            stream.protocol.close()
