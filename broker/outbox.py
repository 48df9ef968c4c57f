"""One sending socket's messages, from being handed in until the broker acknowledges them.

The publisher's half of the ingress protocol (`broker.publishers` is the
broker's), shared by `send_update`'s sockets and the edge's HTTP publisher,
so it lives beside the wire format and imports nothing from Django.

A message handed to a ZeroMQ socket is not yet the broker's: a connection
that dies takes what it carried with it, and nothing says so. So each
sending socket numbers its messages 0, 1, 2, … under an identity of its
own (16 random bytes) and keeps each one here until a cumulative ack from
the broker covers it: as the `wire.Publish` the broker reads, packed by
the writer that puts it on a socket (an edge in its broker's process
hands it over as it is, `broker.local`). The broker drops numbers it
already holds and refuses one that skips a number (a gap ack), so writing
the unacknowledged tail again is always safe. This module decides what is
written again, and when:

* after a new connection, everything past the acks (`on_reconnect`);
* after a gap ack, everything past the number the broker holds;
* after a gap ack from a broker that does not know this publisher (one
  restarted without a history file), everything from the oldest;
* after `RESEND_AFTER` seconds without an ack for what was written,
  everything past the acks, for a write a dying connection swallowed with
  no later message to provoke a gap ack.

The oldest unacknowledged message, whenever it is written, says it is the
oldest (`wire.Publish.base`): a broker that does not know this publisher
starts it there, and refuses a later one that arrives first, since older
ones may have died with its predecessor. Pure bookkeeping with an injected clock, so each of these
cases is tested alone; the sockets, threads and process hooks are
`pushserver.sender`'s and `edge.ingress`'s.

The traps:

* not thread-safe: one per sending socket, used under that socket's lock;
* a message handed out, by `append` or by `due`, counts as written at
  once, so the path of a message is one pack and one write: a writer that
  could not write it must call `unwrite` and stop, or the message waits
  for the next reconnection or `RESEND_AFTER`;
* `due` is a generator: nothing is decided until it is iterated;
* a gap ack below what the broker once acknowledged (its history lost
  messages, say a machine crash before the file reached the disk) is a gap
  this identity can no longer fill: the queue is numbered afresh under a
  new identity, and those of its messages the broker held without having
  acknowledged them are sequenced twice.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

from broker import wire

# Written messages unacknowledged for this long are written again.
RESEND_AFTER = 2.0


class Renumbered(NamedTuple):
    """The broker holds this publisher's messages only up to `broker_holds`, though it
    acknowledged up to `acknowledged`: the `queued` messages left under a new identity."""

    broker_holds: int
    acknowledged: int
    queued: int


class Outbox:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.identity = os.urandom(16)
        # Index i holds message `acked + 1 + i`: everything the broker has not
        # acknowledged, oldest first.
        self.unacked: deque[wire.Publish] = deque()
        self.acked = -1
        self.next_seq = 0
        # The newest number handed out for writing on this connection; never
        # below `acked`.
        self.written_upto = -1
        # When `acked` last moved, or when writing from it began.
        self.progress_at = clock()

    def append(
        self,
        channel_id: str,
        body: bytes,
        content_type: str | None,
        key: str | None = None,
        reply: bool = False,
        event: str | None = None,
    ) -> wire.Publish | None:
        """Number and keep a message; returns it when it is the one to write now, None
        when older ones wait to be written first (`due` hands it out after them).

        Its number is `next_seq` as it was before the call."""
        seq = self.next_seq
        publish = wire.Publish(
            channel_id, content_type, body, self.identity, seq, self.acked + 1, key, reply, event
        )
        self.unacked.append(publish)
        self.next_seq = seq + 1
        written_upto = self.written_upto
        if written_upto != seq - 1:
            return None
        if written_upto == self.acked:
            self.progress_at = self._clock()
        self.written_upto = seq
        return publish

    def unwrite(self) -> None:
        """The message handed out last could not be written: it is due again."""
        self.written_upto -= 1

    def due(self) -> Iterator[wire.Publish]:
        """The messages to write now, oldest first."""
        if self.written_upto > self.acked and self._clock() - self.progress_at > RESEND_AFTER:
            self.written_upto = self.acked
        unacked = self.unacked
        while self.written_upto < self.next_seq - 1:
            index = self.written_upto - self.acked
            if index == 0:
                self.progress_at = self._clock()
                unacked[0] = self._marked_oldest(unacked[0])
            self.written_upto += 1
            yield unacked[index]

    def write_due(self, write: Callable[[wire.Publish], bool]) -> None:
        """Hand `write` the messages due, oldest first, until it could not write one
        (it returns False), which is then due again."""
        for publish in self.due():
            if not write(publish):
                self.unwrite()
                return

    def on_reconnect(self) -> None:
        """A new connection: what the last one carried past the acks may have died with it."""
        self.written_upto = self.acked

    def on_ack(self, ack: wire.Ack) -> Renumbered | None:
        if not self.acknowledged(ack.publisher, ack.seq) or not ack.gap:
            return None
        if ack.seq == wire.UNKNOWN:
            self.written_upto = self.acked
        elif ack.seq < self.acked:
            return self._renumber(ack.seq)
        else:
            # Refused for want of an earlier message: written again after it.
            self.written_upto = min(self.written_upto, ack.seq)
        return None

    def acknowledged(self, publisher: bytes, seq: int) -> bool:
        """The broker holds every message up to `seq` (an ack, or the answer to a publish
        that asked for one); False when addressed to an identity this outbox gave up."""
        if publisher != self.identity:
            return False
        seq = min(seq, self.next_seq - 1)
        if seq > self.acked:
            unacked = self.unacked
            for _ in range(seq - self.acked):
                unacked.popleft()
            self.acked = seq
            self.progress_at = self._clock()
            self.written_upto = max(self.written_upto, seq)
        return True

    def _renumber(self, broker_holds: int) -> Renumbered:
        renumbered = Renumbered(broker_holds, self.acked, len(self.unacked))
        self.identity = identity = os.urandom(16)
        publishes = list(self.unacked)
        # In place: a caller may hold the deque.
        self.unacked.clear()
        self.unacked.extend(
            p._replace(publisher=identity, seq=seq, base=0) for seq, p in enumerate(publishes)
        )
        self.next_seq = len(publishes)
        self.acked = self.written_upto = -1
        self.progress_at = self._clock()
        return renumbered

    def _marked_oldest(self, publish: wire.Publish) -> wire.Publish:
        return publish if publish.base == publish.seq else publish._replace(base=publish.seq)
