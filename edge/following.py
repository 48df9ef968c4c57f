"""Following channels on one open connection: what an EventSource stream and a WebSocket share.

A follower (`edge.stream`'s `Stream`, `edge.socket_subscriber`'s
`WebSocket`) is one subscriber of each of its channels' buffers: a
`Member` per channel holds the cursor and takes what the buffer offers.
The follower writes every held message after its cursors, oldest first,
then each live message as it comes, corked (`edge.corks`) until the
feed's batch has been handed out, and keeps a timer for its keep-alive.
What differs between the transports is small and overridden: how a
message is rendered (`render`), how a slow reader, a deleted channel and
SIGTERM are told (`slow`, `deleted`, `release`), how the connection is
closed (`end`) and what a quiet tick sends (`keep_alive`).

The trap is a reader that takes less than the channel sends. Queued
without bound, one stalled client would hold every message in the edge's
memory. So the catch-up is flow-controlled: it writes while the
connection is under its high-water mark and waits for it to drain, the
buffer keeping what waits; a live message finding more than
`stream_buffer` untaken ends the follower as `slow` instead. `offer` runs
once per delivery and follower, so it stays a handful of attribute reads.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from broker.wire import MessageId
from edge.channels import ChannelBuffer, Held
from edge.config import SubscriberLocation
from edge.connection import Connection
from edge.corks import Cork, Outbox

# Why followers end (the reason label of their `…_closed_total`), on every transport.
CLIENT = "client"  # the client left, or the connection was lost
DELETED = "deleted"
SLOW = "slow"
STOPPING = "stopping"


@dataclass
class Followers:
    """What every follower of one transport on an edge shares: the ones open, and why the
    others ended."""

    open: set[Follower] = field(default_factory=set)
    closed: Counter[str] = field(default_factory=Counter)
    # Live writes wait here until the turn of the loop that brought them ends.
    outbox: Outbox = field(default_factory=Outbox)


class Member:
    """A follower's subscription to one of its channels: what the channel's buffer offers to."""

    __slots__ = ("follower", "index", "buffer", "cursor")

    def __init__(
        self, follower: Follower, index: int, buffer: ChannelBuffer, cursor: MessageId | None
    ) -> None:
        self.follower = follower
        self.index = index
        self.buffer = buffer
        self.cursor = cursor

    def offer(self, held: Held, missed: bool) -> bool:
        # The follower's side of it, here rather than a call away: this runs per delivery.
        follower = self.follower
        if follower.ended:
            return False
        if follower.draining:
            return True  # catching up: the buffer keeps the message until it is written
        cork = follower.cork
        if cork.untaken() > follower.location.stream_buffer:
            follower.slow()
            return False
        cork.write(follower.render(self, held, missed))
        follower.wrote = True
        if self.buffer.last != held.id:
            follower.catch_up()  # several arrived at once (a refill)
        return not follower.ended

    def deleted(self) -> None:
        self.follower.deleted(self)

    def release(self) -> None:
        self.follower.release()


class Follower(ABC):
    """The bookkeeping of one connection following its channels; subclasses say how the
    transport renders, tells and closes."""

    __slots__ = (
        "shared",
        "location",
        "connection",
        "cork",
        "members",
        "on_end",
        "ended",
        "draining",
        "wrote",
        "timer",
    )

    def __init__(
        self,
        shared: Followers,
        location: SubscriberLocation,
        connection: Connection,
        on_end: Callable[[], None],
    ) -> None:
        self.shared = shared
        self.location = location
        self.connection = connection
        self.cork = Cork(connection, shared.outbox)
        self.members: list[Member] = []
        # Called once when the follower ends, however it ends.
        self.on_end = on_end
        self.ended = False
        # Catching up, waiting for the client to take what was written.
        self.draining = False
        # Something was written since the last keep-alive tick.
        self.wrote = False
        self.timer: asyncio.TimerHandle | None = None

    # -- the transport's part --------------------------------------------------------

    @abstractmethod
    def render(self, member: Member, held: Held, missed: bool) -> bytes:
        """`held` as this follower writes it (after the missed notice, if any); moves the
        member's cursor to it."""

    @abstractmethod
    def slow(self) -> None:
        """A live message found more than `stream_buffer` untaken."""

    @abstractmethod
    def deleted(self, member: Member) -> None:
        """`member`'s channel was deleted."""

    @abstractmethod
    def release(self) -> None:
        """The edge is stopping (SIGTERM)."""

    @abstractmethod
    def keep_alive(self) -> None:
        """A keep-alive tick, on a follower that has not ended."""

    # -- following -------------------------------------------------------------------

    def follow(self, buffers: Sequence[ChannelBuffer], cursors: Sequence[MessageId | None]) -> None:
        """Count the follower open, wait on `buffers` from `cursors` and start the timer
        (the catch-up is the caller's, once the connection is ready for it)."""
        self.shared.open.add(self)
        self.members = [
            Member(self, index, buffer, cursor)
            for index, (buffer, cursor) in enumerate(zip(buffers, cursors, strict=True))
        ]
        for member in self.members:
            member.buffer.wait(member)
        self._schedule()

    def unfollow(self, reason: str) -> bool:
        """Stop following the channels and count why; False if that was done already.
        Closing the connection is the caller's."""
        if self.ended:
            return False
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for member in self.members:
            member.buffer.forget(member)
        shared = self.shared
        shared.open.discard(self)
        shared.closed[reason] += 1
        self.on_end()
        return True

    def _next(self) -> tuple[Member, Held, bool] | None:
        """The oldest message any channel holds after the follower's cursor for it."""
        best: tuple[Member, Held, bool] | None = None
        for member in self.members:
            held, missed = member.buffer.find(member.cursor)
            if held is not None and (best is None or held.id < best[1].id):
                best = (member, held, missed)
        return best

    def catch_up(self) -> None:
        """Write what the buffers hold after the cursors while the client takes it."""
        self.draining = False
        connection = self.connection
        self.cork.flush()  # what the live path queued goes first
        while not self.ended:
            found = self._next()
            if found is None:
                return
            if not connection.writable:
                # Above the connection's high-water mark: go on once it drained.
                self.draining = True
                connection.drained().add_done_callback(self._drained)
                return
            connection.send(self.render(*found))
            self.wrote = True

    def _drained(self, _: asyncio.Future[None]) -> None:
        if not self.ended and self.draining:
            self.catch_up()

    # -- keep-alive --------------------------------------------------------------------

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.location.stream_keepalive, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.ended:
            return
        self.keep_alive()
        if not self.ended:
            self._schedule()
