"""Corked writes: what a turn of the loop gives a connection, written to it once.

The feed hands the buffers a batch of the broker's messages in one
callback, and each buffer offers each message to every stream and socket
of its channel. Written as it is offered, a flood costs a `transport.write`
per delivery, and a `send` system call whenever that socket's buffer was
empty (most of the edge's CPU under W6, `ops/bench/README.md`). So a
stream's live events go into its `Cork`, and the edge's `Outbox` writes
each cork's bytes in one piece once the turn's callbacks have run
(`loop.call_soon`, once per turn for all of them): the Python and the
system call are paid per connection and batch, not per message.

The trap is order: once something waits in a cork, every other byte for
that connection (a notice, a close frame, a pong) must queue behind it, so
they go through `send`, which writes at once only when nothing waits. And
what waits counts toward the slow-reader bound (`untaken`) exactly as
what was written and not taken does.
"""

from __future__ import annotations

import asyncio

from edge.connection import Connection


class Outbox:
    """The corks with bytes waiting this turn of the loop, and one flush for all of them."""

    __slots__ = ("_corks", "_scheduled")

    def __init__(self) -> None:
        self._corks: list[Cork] = []
        self._scheduled = False

    def add(self, cork: Cork) -> None:
        self._corks.append(cork)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        corks, self._corks = self._corks, []
        for cork in corks:
            cork.flush()


class Cork:
    """One connection's bytes held back until the end of the turn."""

    __slots__ = ("connection", "outbox", "parts", "size", "base")

    def __init__(self, connection: Connection, outbox: Outbox) -> None:
        self.connection = connection
        self.outbox = outbox
        self.parts: list[bytes] = []
        # Bytes in `parts`, and what the connection had not sent when the first was added.
        self.size = 0
        self.base = 0

    def write(self, data: bytes) -> None:
        """Queue `data` to be written at the end of the turn."""
        parts = self.parts
        if not parts:
            self.base = self.connection.unsent()
            self.outbox.add(self)
        parts.append(data)
        self.size += len(data)

    def send(self, data: bytes) -> None:
        """Write `data` now, or after what waits if something does (so in order)."""
        if self.parts:
            self.write(data)
        else:
            self.connection.send(data)

    def untaken(self) -> int:
        """Bytes the client has not taken: written and unsent, or waiting here."""
        if not self.parts:
            return self.connection.unsent()
        return self.base + self.size

    def flush(self) -> None:
        """Write what waits, in one piece."""
        parts = self.parts
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.parts = []
        self.size = 0
        self.connection.send(data)

    def discard(self) -> None:
        """Forget what waits (the connection is being dropped, or its client left)."""
        self.parts = []
        self.size = 0
