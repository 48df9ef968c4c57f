"""A WebSocket on a subscriber location: one subscriber of each of its channels' buffers.

The subscriber location (`edge.subscriber`) admits the handshake, writes
the 101 and hands the connection over; from then on the socket sends every
held message after its cursors, then each live message as its buffer
offers it, framed by `edge.websocket`, and reads what the client sends
through that module's `Session` (pongs, closes, data it ignores). It is
the EventSource stream's twin (`edge.stream`): the same buffers, the same
cursors, the same flow control, only the framing and the health differ.
On a one-channel socket a message's frame is built once and kept on its
`Held` (`frame`, `meta_frame`), so every socket of the channel writes the
same bytes, and live frames are corked (`edge.corks`) as a stream's events are.

The trap is, again, a reader that takes less than the channel sends. The
catch-up after opening writes while the connection is under its
high-water mark and waits for it to drain; a live message finding more
than `stream_buffer` untaken is not written, and the socket is closed
with 1013 after what it was sent (counted `slow`): the client resumes
from its last id, on any edge, and loses nothing the buffers hold. A
reader that takes none of it is dropped by the connection's stall
deadline, which is why a tick does not ping a socket whose output waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from broker.wire import DELETED_EVENT, MISSED_EVENT, MessageId
from edge.channels import ChannelBuffer, Held
from edge.config import SubscriberLocation
from edge.connection import Connection
from edge.corks import Cork, Outbox
from edge.websocket import (
    CHANNEL_DELETED,
    GOING_AWAY,
    MESSAGE_TOO_BIG,
    TRY_AGAIN_LATER,
    Reply,
    Session,
    cursor_id,
    message_frame,
    notice_frame,
)

log = logging.getLogger("pushserver.edge")

# Why sockets end (pushserver_edge_websockets_closed_total{reason}).
CLIENT = "client"  # the client closed, or the connection was lost
DELETED = "deleted"  # 4410
SLOW = "slow"  # 1013
STOPPING = "stopping"  # 1001
SILENT = "silent"  # no answer to a ping: dropped
TOO_BIG = "too_big"  # 1009
PROTOCOL = "protocol"  # the client broke RFC 6455 (1002, 1007)


@dataclass
class WebSockets:
    """What every WebSocket of an edge shares: the ones open, why the others ended, and
    how many data messages clients sent that were ignored."""

    open: set[WebSocket] = field(default_factory=set)
    closed: Counter[str] = field(default_factory=Counter)
    ignored: int = 0
    # Live frames wait here until the turn of the loop that brought them ends.
    outbox: Outbox = field(default_factory=Outbox)


def shared_frame(held: Held, meta: bool) -> bytes:
    """`held` as the frame of a one-channel socket, built once per message and framing."""
    message = held.message
    if meta:
        framed = held.meta_frame
        if framed is None:
            framed = held.meta_frame = message_frame(
                message.body, message.content_type, str(message.id)
            )
    else:
        framed = held.frame
        if framed is None:
            framed = held.frame = message_frame(message.body, None)
    return framed


class Member:
    """A socket's subscription to one of its channels: what the channel's buffer offers to."""

    __slots__ = ("socket", "index", "buffer", "cursor")

    def __init__(
        self, socket: WebSocket, index: int, buffer: ChannelBuffer, cursor: MessageId | None
    ) -> None:
        self.socket = socket
        self.index = index
        self.buffer = buffer
        self.cursor = cursor

    def offer(self, held: Held, missed: bool) -> bool:
        # The socket's side of it, here rather than a call away: this runs per delivery.
        socket = self.socket
        if socket.ended:
            return False
        if socket.draining:
            return True  # catching up: the buffer keeps the message until it is written
        cork = socket.cork
        if cork.untaken() > socket.location.stream_buffer:
            socket.close(TRY_AGAIN_LATER, SLOW)
            return False
        cork.write(socket.frames(self, held, missed))
        if self.buffer.last != held.id:
            socket.catch_up()  # several arrived at once (a refill)
        return not socket.ended

    def deleted(self) -> None:
        self.socket.deleted(self)

    def release(self) -> None:
        self.socket.close(GOING_AWAY, STOPPING)


class WebSocket:
    __slots__ = (
        "shared",
        "location",
        "connection",
        "cork",
        "meta",
        "session",
        "members",
        "on_end",
        "ended",
        "draining",
        "timer",
    )

    def __init__(
        self,
        shared: WebSockets,
        location: SubscriberLocation,
        connection: Connection,
        meta: bool,
        on_end: Callable[[], None],
    ) -> None:
        self.shared = shared
        self.location = location
        self.connection = connection
        self.cork = Cork(connection, shared.outbox)
        # Frames in ws+meta.nchan (ids, content types, notices), else the bytes alone.
        self.meta = meta
        self.session = Session()
        self.members: list[Member] = []
        # Called once when the socket ends, however it ends.
        self.on_end = on_end
        self.ended = False
        # Catching up, waiting for the client to take what was written.
        self.draining = False
        self.timer: asyncio.TimerHandle | None = None

    def open(
        self, head: bytes, buffers: Sequence[ChannelBuffer], cursors: Sequence[MessageId | None]
    ) -> None:
        """Write `head` (the 101, ended by its blank line), take the connection over and
        start following `buffers`."""
        connection = self.connection
        connection.send(head)
        self.shared.open.add(self)
        self.members = [
            Member(self, index, buffer, cursor)
            for index, (buffer, cursor) in enumerate(zip(buffers, cursors, strict=True))
        ]
        for member in self.members:
            member.buffer.wait(member)
        self._schedule()
        connection.take_over(self.received)
        self.catch_up()

    # -- what buffers and the connection call -----------------------------------------

    def deleted(self, member: Member) -> None:
        if self.ended:
            return
        if self.meta and self.session.open:
            cursors = [other.cursor for other in self.members]
            self.cork.send(
                notice_frame(
                    DELETED_EVENT, member.buffer.channel_id, cursor_id(cursors, member.index)
                )
            )
        self.close(CHANNEL_DELETED, DELETED)

    def received(self, data: bytes) -> None:
        """Bytes from the client: answered as the session says."""
        if self.ended:
            return
        session = self.session
        before = session.ignored
        try:
            reply = session.receive(data)
        except Exception:
            log.exception("a WebSocket's incoming frames could not be read")
            self.end(PROTOCOL, drop=True)
            return
        self.shared.ignored += session.ignored - before
        self._reply(reply)

    def close(self, code: int, reason: str) -> None:
        """Send a close with `code` after what was sent, and end the socket (as `reason`)."""
        if self.ended:
            return
        self.cork.send(self.session.close(code))
        self.end(reason)

    def end(self, reason: str, drop: bool = False) -> None:
        """Stop following the channels, count why, and close the connection (unless the
        client already did): at once with `drop`, else once what was written went out."""
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
        if drop:
            self.cork.discard()
            self.connection.drop()
        elif reason != CLIENT or self.session.ended:
            self.cork.flush()
            self.connection.finish(keep_alive=False)
        else:
            self.cork.discard()

    # -- writing ---------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        if reply.send:
            self.cork.send(reply.send)
        if not reply.end:
            return
        code = reply.code
        if code is None:
            self.end(SILENT, drop=True)
        elif code == MESSAGE_TOO_BIG:
            self.end(TOO_BIG)
        elif code in (1002, 1007):
            self.end(PROTOCOL)
        else:
            self.end(CLIENT)

    def frames(self, member: Member, held: Held, missed: bool) -> bytes:
        """`held` as this socket's frame (after the missed notice, if any); moves the
        member's cursor to it."""
        members = self.members
        meta = self.meta
        missed_notice = b""
        if missed and meta:
            cursors = [other.cursor for other in members]
            missed_notice = notice_frame(
                MISSED_EVENT, member.buffer.channel_id, cursor_id(cursors, member.index)
            )
        member.cursor = held.id
        if len(members) == 1:
            frame = shared_frame(held, meta)
        else:
            message = held.message
            cursors = [other.cursor for other in members]
            frame = message_frame(
                message.body, message.content_type, cursor_id(cursors, member.index)
            )
        return missed_notice + frame if missed_notice else frame

    def _next(self) -> tuple[Member, Held, bool] | None:
        """The oldest message any channel holds after the socket's cursor for it."""
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
            connection.send(self.frames(*found))

    def _drained(self, _: asyncio.Future[None]) -> None:
        if not self.ended and self.draining:
            self.catch_up()

    # -- health ------------------------------------------------------------------------

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.location.stream_keepalive, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.ended:
            return
        if self.cork.untaken():
            self.session.skip()
        else:
            self._reply(self.session.tick())
            if self.ended:
                return
        self._schedule()
