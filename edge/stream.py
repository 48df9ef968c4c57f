"""An EventSource stream: one subscriber of each of its channels' buffers, on one connection.

The subscriber location (`edge.subscriber`) admits the request and opens
the stream; from then on the stream writes the head, a `retry:`, every
held message after its cursors, then each live message as its buffer
offers it, and a comment every `stream_keepalive` seconds of silence. The
format is `edge.eventstream`'s. On a one-channel stream the event bytes,
`id:` included, are rendered once per message and kept on its `Held`, so
a thousand streams of a channel cost one rendering; live events wait in
the stream's cork (`edge.corks`) until the feed's batch has been handed
out, so a flood costs one write per stream and batch, not per event.

The trap is a reader that takes less than the channel sends. Queued
without bound, one stalled browser would hold every message in the
edge's memory. So the catch-up after opening is flow-controlled: it
writes while the connection is under its high-water mark and waits for
it to drain before writing more, and the buffer keeps what waits. A
live message finding more than `stream_buffer` untaken closes the
stream instead, discarding what was not taken (counted as `slow`):
the browser reconnects with the id of the last event it received whole,
on any edge, and loses nothing the buffers still hold.

The body ends only when the connection does (no length, no chunks): the
edge ends a stream on a deleted channel (after `pushserver-deleted`), on
SIGTERM, or when the reader is too slow, and the client by leaving.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from broker.wire import DELETED_EVENT, MISSED_EVENT, MessageId
from edge.channels import ChannelBuffer, Held
from edge.config import SubscriberLocation
from edge.connection import Connection
from edge.corks import Cork, Outbox
from edge.eventstream import (
    KEEPALIVE,
    event_body,
    format_cursors,
    id_line,
    notice,
    retry_field,
)

# Why streams end (pushserver_edge_streams_closed_total{reason}).
CLIENT = "client"
DELETED = "deleted"
SLOW = "slow"
STOPPING = "stopping"
# Answered with a retry instead of opening (the broker or Django away: a poll's 503).
UNAVAILABLE = "unavailable"
# A stream's `retry:` lies within this factor either side of `stream_retry`.
RETRY_JITTER = 0.5


@dataclass
class Streams:
    """What every stream of an edge shares: the ones open, and why the others ended."""

    open: set[Stream] = field(default_factory=set)
    closed: Counter[str] = field(default_factory=Counter)
    random: random.Random = field(default_factory=random.Random)
    # Live events wait here until the turn of the loop that brought them ends.
    outbox: Outbox = field(default_factory=Outbox)

    def retry(self, milliseconds: int) -> bytes:
        """A `retry:` field for one stream: `milliseconds` give or take RETRY_JITTER, so the
        browsers of a dead edge do not all come back in the same millisecond."""
        jittered = round(milliseconds * (1 + RETRY_JITTER * (2 * self.random.random() - 1)))
        return retry_field(max(1, jittered))


def shared_body(held: Held) -> bytes:
    """What follows the `id:` line of `held`'s event, rendered once."""
    body = held.event_body
    if body is None:
        message = held.message
        body = held.event_body = event_body(message.body, message.event)
    return body


def shared_event(held: Held) -> bytes:
    """`held` as the whole event of a one-channel stream, rendered once."""
    event = held.event
    if event is None:
        event = held.event = id_line(str(held.message.id)) + shared_body(held)
    return event


class Member:
    """A stream's subscription to one of its channels: what the channel's buffer offers to."""

    __slots__ = ("stream", "index", "buffer", "cursor")

    def __init__(
        self, stream: Stream, index: int, buffer: ChannelBuffer, cursor: MessageId | None
    ) -> None:
        self.stream = stream
        self.index = index
        self.buffer = buffer
        self.cursor = cursor

    def offer(self, held: Held, missed: bool) -> bool:
        # The stream's side of it, here rather than a call away: this runs per delivery.
        stream = self.stream
        if stream.ended:
            return False
        if stream.draining:
            return True  # catching up: the buffer keeps the message until it is written
        cork = stream.cork
        if cork.untaken() > stream.location.stream_buffer:
            stream.end(SLOW)
            return False
        cork.write(stream.event(self, held, missed))
        stream.wrote = True
        if self.buffer.last != held.id:
            stream.catch_up()  # several arrived at once (a refill)
        return not stream.ended

    def deleted(self) -> None:
        self.stream.deleted(self)

    def release(self) -> None:
        self.stream.end(STOPPING)


class Stream:
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
        shared: Streams,
        location: SubscriberLocation,
        connection: Connection,
        on_end: Callable[[], None],
    ) -> None:
        self.shared = shared
        self.location = location
        self.connection = connection
        self.cork = Cork(connection, shared.outbox)
        self.members: list[Member] = []
        # Called once when the stream ends, however it ends.
        self.on_end = on_end
        self.ended = False
        # Catching up, waiting for the client to take what was written.
        self.draining = False
        # Something was written since the last keep-alive tick.
        self.wrote = False
        self.timer: asyncio.TimerHandle | None = None

    def open(
        self, head: bytes, buffers: Sequence[ChannelBuffer], cursors: Sequence[MessageId | None]
    ) -> None:
        """Write `head` (the 200's, ended by its blank line) and start following `buffers`."""
        shared = self.shared
        self.connection.send(head + shared.retry(self.location.stream_retry))
        shared.open.add(self)
        self.members = [
            Member(self, index, buffer, cursor)
            for index, (buffer, cursor) in enumerate(zip(buffers, cursors, strict=True))
        ]
        for member in self.members:
            member.buffer.wait(member)
        self._schedule()
        self.catch_up()

    # -- what buffers and the connection call -----------------------------------------

    def deleted(self, member: Member) -> None:
        if self.ended:
            return
        self.cork.send(notice(DELETED_EVENT, member.buffer.channel_id))
        self.end(DELETED)

    def end(self, reason: str) -> None:
        """Stop following the channels, count why, and close the connection (unless the
        client already did)."""
        if self.ended:
            return
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
        if reason == SLOW:
            self.cork.discard()
            self.connection.drop()
        elif reason == CLIENT:
            self.cork.discard()
        else:
            self.cork.flush()
            self.connection.finish(keep_alive=False)

    # -- writing ---------------------------------------------------------------------

    def event(self, member: Member, held: Held, missed: bool) -> bytes:
        """`held` as this stream's event (after the missed notice, if any); moves the
        member's cursor to it."""
        member.cursor = held.id
        members = self.members
        if len(members) == 1:
            event = held.event or shared_event(held)
        else:
            cursors = [other.cursor for other in members]
            event = id_line(format_cursors(cursors, member.index)) + shared_body(held)
        if missed:
            return notice(MISSED_EVENT, member.buffer.channel_id) + event
        return event

    def _next(self) -> tuple[Member, Held, bool] | None:
        """The oldest message any channel holds after the stream's cursor for it."""
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
            connection.send(self.event(*found))
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
        # Only on a silent connection with nothing untaken: a reader that takes nothing
        # is then noticed by the connection's stall deadline, which a comment would renew.
        if not self.wrote and not self.cork.untaken():
            self.cork.send(KEEPALIVE)
        self.wrote = False
        self._schedule()
