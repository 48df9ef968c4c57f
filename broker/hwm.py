"""The events socket's high-water mark, set from a budget of bytes per subscriber.

libzmq bounds what a socket queues for each peer by counting messages,
not bytes, so the same mark that lets a busy edge ride out a burst of
small messages (`events_sndhwm`, 100,000 by default) lets one that stops
reading hold 100,000 messages of up to 4 MiB each. Here the mark follows
the size of what is sent: before a message larger than the budget
allows at the current mark, the mark is lowered (libzmq applies it to
every existing connection too), and it goes back up once no such message
was sent for a while. So a subscriber's queue holds at most about
`budget` bytes, or one message when a single message is larger. A queue
at its mark drops what comes next for that subscriber only; an edge
notices the gap and refills from a snapshot. Pure bookkeeping: the
server applies the marks this returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Seconds without a large message before the mark goes back up.
RAISE_AFTER = 10.0
UNBOUNDED = 2**63


class QueueMark:
    def __init__(
        self,
        budget: int,
        most: int,
        raise_after: float = RAISE_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`budget` bytes per subscriber, at most `most` messages; 0 for either turns the
        bounds off (an unbounded queue), as `events_sndhwm = 0` always has."""
        self._budget = budget
        self._most = most
        self._raise_after = raise_after
        self._clock = clock
        self._large_at = 0.0
        self.mark = most
        # Messages up to this many bytes fit the budget at the current mark.
        self.largest_fitting = self._fitting(most)

    def _fitting(self, mark: int) -> int:
        if not self._budget or not self._most:
            return UNBOUNDED
        return self._budget // mark

    def sending(self, size: int) -> int | None:
        """A message of `size` bytes larger than `largest_fitting` goes out next; returns the
        mark to set before it, or None when the current one does."""
        self._large_at = self._clock()
        mark = min(self._most, max(1, self._budget // max(size, 1)))
        if mark >= self.mark:
            return None
        self.mark = mark
        self.largest_fitting = self._fitting(mark)
        return mark

    def relax(self) -> int | None:
        """Call now and then: returns `most` once no large message was sent for a while."""
        if self.mark == self._most or self._clock() - self._large_at < self._raise_after:
            return None
        self.mark = self._most
        self.largest_fitting = self._fitting(self._most)
        return self.mark
