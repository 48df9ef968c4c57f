"""Polls of many channels, one each, on a few keep-alive connections.

W8 asks a million channels for their one message; a connection per
channel would measure connection set-up, not channels, so each of a few
dozen connections asks for the next channel as soon as its last poll was
answered. Channels are handed over in batches as they are published
(`Walk.add`), and the trap is time: `message_timeout` is short on purpose
(the servers must forget), so a batch polled much later than it was
published would find nothing. The publisher therefore waits for room
(`on_batch_done`) and stays at most a couple of batches ahead. A
connection waiting for the next batch is idle, and a server may close an
idle keep-alive connection: the poller opens another and asks again what
it had asked, as a browser does, and counts it.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import cast

from ops.bench.ledger import Tally
from ops.bench.loadgen import RETRY_AFTER, ResponseReader

# A poll answered 5xx (a broker slow to sync a new channel) is asked again this often.
RETRIES = 5


class Walk:
    """The channels still to poll, the connections waiting for more, and what was answered."""

    def __init__(
        self, path_of: Callable[[int], str], tally: Tally, on_batch_done: Callable[[], None]
    ) -> None:
        self.path_of = path_of
        self.tally = tally
        self.on_batch_done = on_batch_done
        self.pending: deque[int] = deque()
        self.idle: list[WalkProtocol] = []
        # The longest the pollers waited for the publisher, seconds.
        self.longest_wait = 0.0
        self._idle_since = 0.0
        self.added = 0
        self.answered = 0
        self.retries = 0
        # Connections the server closed, by the last status answered on each.
        self.closed_by_server: Counter[int] = Counter()
        self.not_delivered: Counter[int] = Counter()
        # Seconds from a batch's hand-over to a poll of it: the oldest message
        # found, the youngest not found. Tells expiry (a poll too late) from a fault.
        self.oldest_found = 0.0
        self.youngest_missed = float("inf")
        self._batch_ends: deque[int] = deque()
        self._batch_starts: list[int] = []
        self._batch_times: list[float] = []
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, indexes: range) -> None:
        self.pending.extend(indexes)
        self.added += len(indexes)
        self._batch_ends.append(self.added)
        self._batch_starts.append(indexes.start)
        self._batch_times.append(time.monotonic())
        idle, self.idle = self.idle, []
        if idle:
            self.longest_wait = max(self.longest_wait, time.monotonic() - self._idle_since)
        for protocol in idle:
            protocol.poll_next()

    def wait_for_more(self, protocol: WalkProtocol) -> None:
        if not self.idle:
            self._idle_since = time.monotonic()
        self.idle.append(protocol)

    def done_with(self, index: int, delivered: bool, status: int) -> None:
        batch = bisect.bisect_right(self._batch_starts, index) - 1
        age = time.monotonic() - self._batch_times[batch]
        if delivered:
            self.oldest_found = max(self.oldest_found, age)
        else:
            self.not_delivered[status] += 1
            self.youngest_missed = min(self.youngest_missed, age)
        self.answered += 1
        while self._batch_ends and self.answered >= self._batch_ends[0]:
            self._batch_ends.popleft()
            self.on_batch_done()
        if self.answered == len(self.tally.counts) and not self.finished.done():
            self.finished.set_result(None)

    def failed(self, error: Exception) -> None:
        if not self.finished.done():
            self.finished.set_exception(error)


class WalkProtocol(ResponseReader):
    def __init__(self, walk: Walk, host: str) -> None:
        super().__init__()
        self.walk = walk
        self.host = host
        self.transport: asyncio.Transport | None = None
        # The channel asked for and not answered yet; None between polls.
        self.index: int | None = None
        self.waiting = False
        self.tries = 0
        self.last_status = 0
        self.retry: asyncio.TimerHandle | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.index is not None:
            self.poll()  # asked on a connection the server closed: ask again here
        elif not self.waiting:
            self.poll_next()

    def poll_next(self) -> None:
        walk = self.walk
        self.waiting = not walk.pending
        if self.waiting:
            walk.wait_for_more(self)
            return
        self.index = walk.pending.popleft()
        self.tries = 0
        self.poll()

    def poll(self) -> None:
        if self.index is None or self.transport is None or self.transport.is_closing():
            return  # sent once connected again
        path = self.walk.path_of(self.index).encode()
        self.transport.write(
            b"GET " + path + b" HTTP/1.1\r\nHost: " + self.host.encode() + b"\r\n\r\n"
        )

    def answered(
        self, status: int, body: bytes, last_modified: bytes | None, etag: bytes | None
    ) -> None:
        walk = self.walk
        index = self.index
        if index is None:
            walk.failed(ConnectionError(f"an answer ({status}) to no poll"))
            return
        self.last_status = status
        if status >= 500 and self.tries < RETRIES:
            self.tries += 1
            walk.retries += 1
            self.retry = asyncio.get_running_loop().call_later(RETRY_AFTER, self.poll)
            return
        self.index = None
        delivered = status == 200 and walk.tally.record(index, body)
        walk.done_with(index, delivered, status)
        self.poll_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buffer.clear()
        if self.retry is not None:
            self.retry.cancel()  # the poll is asked again once connected
        if self.closing:
            return
        self.walk.closed_by_server[self.last_status] += 1
        asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        host, _, port = self.host.rpartition(":")
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, host, int(port))
        except OSError as error:
            self.walk.failed(ConnectionError(f"could not open a polling connection again: {error}"))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def walk_all(
    host: str, port: int, walk: Walk, connections: int, stalled_after: float
) -> None:
    """Open the connections and return once every channel was answered.

    Fails when no poll was answered for `stalled_after` seconds, so a
    server that stopped answering ends the run with a reason, not a hang.
    """
    loop = asyncio.get_running_loop()
    made = await asyncio.gather(
        *(
            loop.create_connection(walker(walk, f"{host}:{port}"), host, port)
            for _ in range(connections)
        )
    )
    protocols = [protocol for _, protocol in made]
    seen, moved = walk.answered, time.monotonic()
    while not walk.finished.done():
        await asyncio.wait([walk.finished], timeout=1.0)
        if walk.answered != seen:
            seen, moved = walk.answered, time.monotonic()
        elif time.monotonic() - moved > stalled_after:
            close_walkers(protocols)
            raise TimeoutError(
                f"no poll answered for {stalled_after} s, at {walk.answered} of {walk.added} asked"
            )
    close_walkers(protocols)
    walk.finished.result()


def walker(walk: Walk, host: str) -> Callable[[], WalkProtocol]:
    return lambda: WalkProtocol(walk, host)


def close_walkers(protocols: list[WalkProtocol]) -> None:
    for protocol in protocols:
        protocol.close()
