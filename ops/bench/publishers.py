"""HTTP publishers in the load generator: a few keep-alive connections, one POST in flight each.

Each connection sends its next POST when the previous one is answered, as
a web application publishing over a connection pool does, and every
message of a channel goes over the same connection, so a channel's
messages are published in order. The trap is the publish time written
into each body: it is taken when the POST is written, so a delivery's
latency includes the server's whole publish path, not only its fan-out.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from ops.bench.ledger import message_body
from ops.bench.loadgen import ResponseReader

# What a publisher location answers a POST with (created for held subscribers, else accepted).
PUBLISHED = (201, 202)


@dataclass
class Publishing:
    """What the publishers were answered, and when the last answer came."""

    answered: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    last_answer: float = 0.0


class PublishProtocol(ResponseReader):
    def __init__(self, host: str, posts: Iterator[tuple[str, int]], publishing: Publishing) -> None:
        super().__init__()
        self.host = host.encode()
        self.posts = posts
        self.publishing = publishing
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.post_next()

    def post_next(self) -> None:
        assert self.transport is not None
        following = next(self.posts, None)
        if following is None:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        path, seq = following
        body = message_body(seq, time.time())
        self.transport.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + self.host
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    def answered(
        self, status: int, body: bytes, last_modified: bytes | None, etag: bytes | None
    ) -> None:
        publishing = self.publishing
        publishing.answered += 1
        publishing.last_answer = time.time()
        if status not in PUBLISHED:
            if not publishing.refused:
                print(f"a publish was answered {status}: {body[:200]!r}", file=sys.stderr)
            publishing.refused[status] += 1
        self.post_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                ConnectionError(
                    f"a publisher connection closed after {self.publishing.answered} answers: {exc}"
                )
            )


def round_robin(
    paths: list[str], rounds: int, connections: int, connection: int
) -> Iterator[tuple[str, int]]:
    """What connection number `connection` posts: its share of the channels, round by round."""
    mine = paths[connection::connections]
    for seq in range(rounds):
        for path in mine:
            yield path, seq


def publisher(
    host: str, posts: Iterator[tuple[str, int]], publishing: Publishing
) -> Callable[[], PublishProtocol]:
    return lambda: PublishProtocol(host, posts, publishing)


async def publish_over_http(
    host: str, port: int, paths: list[str], rounds: int, connections: int
) -> Publishing:
    """POST `rounds` messages (seq 0, 1, …) to each path; returns once the last is answered."""
    loop = asyncio.get_running_loop()
    publishing = Publishing()
    made = await asyncio.gather(
        *(
            loop.create_connection(
                publisher(
                    f"{host}:{port}", round_robin(paths, rounds, connections, number), publishing
                ),
                host,
                port,
            )
            for number in range(connections)
        )
    )
    await asyncio.gather(*(protocol.done for _, protocol in made))
    return publishing
