"""How many bytes of large message bodies libzmq still holds for the events socket, so that a
subscriber that stops reading cannot make the broker hold more than a budget.

libzmq bounds what a socket queues for each subscriber by a count of
messages (`events_sndhwm`), not bytes: the count that lets a busy edge
ride out a burst of small messages would let one that stops reading hold
100,000 messages of up to 4 MiB each. And the count cannot follow the
sizes: lowering a high-water mark on a connection that already carried
traffic can leave it full for good (libzmq's writer learns what the
reader took only every low-water mark's worth of messages). So large
bodies go out without a copy and tracked; libzmq lets go of one once
every subscriber sent or dropped it. While what it holds exceeds the
budget, a large message is not sent live: edges learn of it from the
next sync and fetch it with the channel's snapshot (a refill), as they
do after any loss. The trap: one slow subscriber holds back large
messages from every edge, until it reads again or its heartbeat times
out and libzmq drops it with its queue (about four seconds for one that
stopped reading altogether).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class Tracker(Protocol):
    @property
    def done(self) -> bool: ...


class InFlight:
    def __init__(self, budget: int) -> None:
        """`budget` bytes at once; 0 for no bound."""
        self._budget = budget
        self._held: deque[tuple[Tracker, int]] = deque()
        self.bytes = 0

    def admits(self, size: int) -> bool:
        """Whether a body of `size` bytes may go out now."""
        held = self._held
        # Released in about the order sent: looking only at the oldest keeps
        # this cheap, and a later one released first is counted a bit longer.
        while held and held[0][0].done:
            self.bytes -= held.popleft()[1]
        return not self._budget or self.bytes + size <= self._budget or not held

    def sent(self, tracker: Tracker, size: int) -> None:
        self._held.append((tracker, size))
        self.bytes += size
