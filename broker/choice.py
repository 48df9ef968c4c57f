"""Which of a standby pair's two brokers a client talks to: the client's half of Binary Star.

A client (`send_update`'s sockets, an edge's feed) knows both brokers'
endpoints and talks to one at a time, the primary first. It moves to the
other when the one it talks to says it is not active, when it has been
silent for the switch time (that move is the client's vote: a passive
broker whose peer is silent too becomes active when a client comes), or
when the other says it is active in an epoch at least as new as any seen.

The trap is an old active broker that comes back (it was frozen, or cut
off): it still says "active", in its old epoch. A client never accepts an
epoch older than the newest it has seen, so that broker's word counts for
nothing until it has stepped down. Pure bookkeeping with an injected
clock; the sockets are the callers'.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Choice:
    """The client's choice among `count` brokers (two for a pair, one without).

    >>> choice = Choice(2, switch_after=2.0)
    >>> choice.current
    0
    >>> choice.heard(1, active=True, epoch=7)
    True
    >>> choice.current
    1
    """

    def __init__(
        self, count: int, switch_after: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.count = count
        self.switch_after = switch_after
        self._clock = clock
        self.current = 0
        self.newest_epoch = 0
        # Moves from one broker to the other.
        self.switches = 0
        now = clock()
        # When the current broker was last heard, or when it became current.
        self._heard_at = now

    def heard(self, index: int, active: bool, epoch: int) -> bool:
        """Broker `index` spoke (a heartbeat, an ack) as `active` or not, in `epoch`.

        Returns whether what it said counts: False for an epoch older than the
        newest seen. An active broker in the newest epoch becomes the current one.
        """
        if epoch < self.newest_epoch:
            return False
        self.newest_epoch = epoch
        if active and index != self.current:
            self._switch_to(index)
        elif index == self.current:
            self._heard_at = self._clock()
        return True

    def accepts(self, index: int) -> bool:
        """Whether events from broker `index` are to be applied: the current one's only."""
        return index == self.current

    def refused(self, index: int) -> bool:
        """Broker `index` said it is not active; returns whether the client moved on."""
        if index != self.current or self.count == 1:
            return False
        self._switch_to((index + 1) % self.count)
        return True

    def silent(self) -> bool:
        """Called while the client waits for the current broker: moves to the other once the
        current one has been silent for `switch_after`; returns whether it moved."""
        if self.count == 1 or self._clock() - self._heard_at < self.switch_after:
            return False
        self._switch_to((self.current + 1) % self.count)
        return True

    def _switch_to(self, index: int) -> None:
        self.current = index
        self.switches += 1
        self._heard_at = self._clock()
