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

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker.wire import DELETED_EVENT, MISSED_EVENT, MessageId
from edge.channels import ChannelBuffer, Held
from edge.config import SubscriberLocation
from edge.connection import Connection
from edge.following import CLIENT, DELETED, SLOW, STOPPING, Follower, Followers, Member
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

# Why sockets end (pushserver_edge_websockets_closed_total{reason}): `edge.following`'s
# CLIENT (the client closed, or the connection was lost), DELETED (4410), SLOW (1013)
# and STOPPING (1001), and
SILENT = "silent"  # no answer to a ping: dropped
TOO_BIG = "too_big"  # 1009
PROTOCOL = "protocol"  # the client broke RFC 6455 (1002, 1007)


@dataclass
class WebSockets(Followers):
    """What every WebSocket of an edge shares: the ones open, why the others ended, and
    how many data messages clients sent that were ignored."""

    ignored: int = 0


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


class WebSocket(Follower):
    __slots__ = ("meta", "session")
    shared: WebSockets

    def __init__(
        self,
        shared: WebSockets,
        location: SubscriberLocation,
        connection: Connection,
        meta: bool,
        on_end: Callable[[], None],
    ) -> None:
        super().__init__(shared, location, connection, on_end)
        # Frames in ws+meta.nchan (ids, content types, notices), else the bytes alone.
        self.meta = meta
        self.session = Session()

    def open(
        self, head: bytes, buffers: Sequence[ChannelBuffer], cursors: Sequence[MessageId | None]
    ) -> None:
        """Write `head` (the 101, ended by its blank line), take the connection over and
        start following `buffers`."""
        connection = self.connection
        connection.send(head)
        self.follow(buffers, cursors)
        connection.take_over(self.received)
        self.catch_up()

    # -- what the connection calls -----------------------------------------------------

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
        if not self.unfollow(reason):
            return
        if drop:
            self.cork.discard()
            self.connection.drop()
        elif reason != CLIENT or self.session.ended:
            self.cork.flush()
            self.connection.finish(keep_alive=False)
        else:
            self.cork.discard()

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

    # -- the transport's part of `edge.following` ---------------------------------------

    def render(self, member: Member, held: Held, missed: bool) -> bytes:
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

    def slow(self) -> None:
        self.close(TRY_AGAIN_LATER, SLOW)

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

    def release(self) -> None:
        self.close(GOING_AWAY, STOPPING)

    def keep_alive(self) -> None:
        # A socket whose output waits is not pinged: a reader that takes none of it is
        # dropped by the connection's stall deadline.
        if self.cork.untaken():
            self.session.skip()
        else:
            self._reply(self.session.tick())
