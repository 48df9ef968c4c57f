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

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.wire import DELETED_EVENT, MISSED_EVENT, MessageId
from edge.channels import ChannelBuffer, Held
from edge.eventstream import (
    KEEPALIVE,
    event_body,
    format_cursors,
    id_line,
    notice,
    retry_field,
)
from edge.following import CLIENT, DELETED, SLOW, STOPPING, Follower, Followers, Member

# Why streams end (pushserver_edge_streams_closed_total{reason}): `edge.following`'s
# CLIENT, DELETED, SLOW and STOPPING, and
# answered with a retry instead of opening (the broker or Django away: a poll's 503).
UNAVAILABLE = "unavailable"
# A stream's `retry:` lies within this factor either side of `stream_retry`.
RETRY_JITTER = 0.5

__all__ = ["CLIENT", "UNAVAILABLE", "Stream", "Streams", "shared_body", "shared_event"]


@dataclass
class Streams(Followers):
    """What every stream of an edge shares: the ones open, and why the others ended."""

    random: random.Random = field(default_factory=random.Random)

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


class Stream(Follower):
    __slots__ = ()
    shared: Streams

    def open(
        self, head: bytes, buffers: Sequence[ChannelBuffer], cursors: Sequence[MessageId | None]
    ) -> None:
        """Write `head` (the 200's, ended by its blank line) and start following `buffers`."""
        self.connection.send(head + self.shared.retry(self.location.stream_retry))
        self.follow(buffers, cursors)
        self.catch_up()

    def end(self, reason: str) -> None:
        """Stop following the channels, count why, and close the connection (unless the
        client already did)."""
        if not self.unfollow(reason):
            return
        if reason == SLOW:
            self.cork.discard()
            self.connection.drop()
        elif reason == CLIENT:
            self.cork.discard()
        else:
            self.cork.flush()
            self.connection.finish(keep_alive=False)

    # -- the transport's part of `edge.following` ---------------------------------------

    def render(self, member: Member, held: Held, missed: bool) -> bytes:
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

    def slow(self) -> None:
        self.end(SLOW)

    def deleted(self, member: Member) -> None:
        if self.ended:
            return
        self.cork.send(notice(DELETED_EVENT, member.buffer.channel_id))
        self.end(DELETED)

    def release(self) -> None:
        self.end(STOPPING)

    def keep_alive(self) -> None:
        # Only on a silent connection with nothing untaken: a reader that takes nothing
        # is then noticed by the connection's stall deadline, which a comment would renew.
        if not self.wrote and not self.cork.untaken():
            self.cork.send(KEEPALIVE)
        self.wrote = False
