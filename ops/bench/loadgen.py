"""The load generator: one persistent HTTP/1.1 connection per subscriber, on asyncio protocols.

Each subscriber walks its channel with If-Modified-Since / If-None-Match
exactly as a browser client does and records every body it receives. It
is written against the bare protocol (no HTTP library) so that the client
is not what limits a run; its own CPU time is reported beside the server's
so a reader can tell when it was.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import uvloop

from ops.bench.ledger import Ledger

T = TypeVar("T")

# Where a failed poll waits before asking again, as a client backs off.
RETRY_AFTER = 0.2
# Connections opened at once: beyond the listen backlog, SYNs are dropped
# and retried a second later, which would show up as latency.
CONNECT_BATCH = 100


@dataclass
class Subscriber:
    channel_id: str
    target_path: str
    expected: int
    ledger: Ledger = field(default_factory=Ledger)
    errors: int = 0
    polls: int = 0
    done: asyncio.Future[None] | None = None

    @property
    def received(self) -> int:
        return len(self.ledger.seqs)


class ResponseReader(asyncio.Protocol, ABC):
    """Splits what a server sends into HTTP/1.1 responses and hands each to `answered`.

    Framed by Content-Length or chunked; of the headers only the validators
    are kept, the one part of a head a client acts on. A response framed by
    closing the connection is not expected from either server, so it is an
    error rather than a guess.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).split(b"\r\n")
            length = 0
            chunked = False
            last_modified = etag = None
            for line in head[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"last-modified":
                    last_modified = value.strip()
                elif lowered == b"etag":
                    etag = value.strip()
                elif lowered == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
            if chunked:
                framed = dechunk(buffer, end + 4)
                if framed is None:
                    return
                body, consumed = framed
            else:
                if len(buffer) < end + 4 + length:
                    return
                body, consumed = bytes(buffer[end + 4 : end + 4 + length]), end + 4 + length
            del buffer[:consumed]
            self.answered(int(head[0].split()[1]), body, last_modified, etag)

    @abstractmethod
    def answered(
        self, status: int, body: bytes, last_modified: bytes | None, etag: bytes | None
    ) -> None: ...


def dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """The body of a chunked response starting at `start`, and where it ends; None if incomplete."""
    parts: list[bytes] = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        if size == 0:
            # No trailers are sent by either server: the last chunk ends the body.
            if len(buffer) < line_end + 4:
                return None
            return b"".join(parts), line_end + 4
        if len(buffer) < line_end + 2 + size + 2:
            return None
        parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
        at = line_end + 2 + size + 2


class PollProtocol(ResponseReader):
    def __init__(self, subscriber: Subscriber, host: str) -> None:
        super().__init__()
        self.subscriber = subscriber
        self.host = host
        self.validators = b""
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.poll()

    def poll(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.subscriber.polls += 1
        self.transport.write(
            b"GET "
            + self.subscriber.target_path.encode()
            + b" HTTP/1.1\r\nHost: "
            + self.host.encode()
            + b"\r\n"
            + self.validators
            + b"\r\n"
        )

    def answered(
        self, status: int, body: bytes, last_modified: bytes | None, etag: bytes | None
    ) -> None:
        subscriber = self.subscriber
        if status == 200:
            seq = subscriber.ledger.record(body, time.time())
            if last_modified is not None and etag is not None:
                self.validators = (
                    b"If-Modified-Since: " + last_modified + b"\r\nIf-None-Match: " + etag + b"\r\n"
                )
            # Done at the last message, or at as many as expected: a subscriber
            # that lost some still finishes, and the ledger says what it lost.
            if seq == subscriber.expected - 1 or subscriber.received >= subscriber.expected:
                if subscriber.done is not None and not subscriber.done.done():
                    subscriber.done.set_result(None)
                return
            self.poll()
        elif status == 304:
            self.poll()
        else:
            subscriber.errors += 1
            asyncio.get_running_loop().call_later(RETRY_AFTER, self.poll)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        done = self.subscriber.done
        if not self.closing and done is not None and not done.done():
            # The server closed a keep-alive connection: poll again on a new
            # one from the same cursor, as a browser does.
            self.subscriber.errors += 1
            self.buffer.clear()
            asyncio.get_running_loop().create_task(self._reconnect())
        elif not self.lost.done():
            self.lost.set_result(None)

    async def _reconnect(self) -> None:
        host, _, port = self.host.rpartition(":")
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, host, int(port))
        except OSError:
            self.subscriber.errors += 1
            asyncio.get_running_loop().call_later(RETRY_AFTER, self.connection_lost, None)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def connect_all(host: str, port: int, subscribers: list[Subscriber]) -> list[PollProtocol]:
    loop = asyncio.get_running_loop()
    protocols: list[PollProtocol] = []
    for start in range(0, len(subscribers), CONNECT_BATCH):
        batch = subscribers[start : start + CONNECT_BATCH]
        for subscriber in batch:
            subscriber.done = loop.create_future()
        made = await asyncio.gather(
            *(
                loop.create_connection(factory(subscriber, host, port), host, port)
                for subscriber in batch
            )
        )
        protocols += [protocol for _, protocol in made]
    return protocols


def factory(subscriber: Subscriber, host: str, port: int) -> Callable[[], PollProtocol]:
    return lambda: PollProtocol(subscriber, f"{host}:{port}")


async def wait_all(subscribers: list[Subscriber], timeout: float) -> float:
    """Wait until every subscriber has all it expects; returns when the last one did."""
    futures = [s.done for s in subscribers if s.done is not None]
    await asyncio.wait_for(asyncio.gather(*futures), timeout)
    return time.time()


def close_all(protocols: list[PollProtocol]) -> None:
    for protocol in protocols:
        protocol.close()


def run(coroutine_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the benchmark's loop on uvloop (a dependency of the edges too)."""
    return uvloop.run(coroutine_factory())
