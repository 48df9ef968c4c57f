"""When an edge should next look at each channel it follows, to forget the idle ones.

An edge forgets a channel nobody waits on or asked for within
`topic_linger`. Looking at every channel on every sweep costs time in
proportion to all of them: at a million followed channels, more than a
second of the loop every second. Here each channel has one entry, due
when it could first be idle for the linger, and a sweep looks only at the
entries that fell due, and at most a batch of them, so a crowd falling
idle at once is forgotten over several sweeps rather than stalling one.

The trap: a due time is a lower bound, not a promise. A channel asked for
again after its entry was made is looked at when the old entry falls
due, found in use, and queued again for its new time (`Feed` does this);
so a channel is never forgotten early, and it never has two entries.
"""

from __future__ import annotations

import heapq


class IdleQueue:
    """Channel ids by the monotonic time each is next looked at, soonest first."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, channel_id: str, due: float) -> None:
        """Look at `channel_id` again at `due`; the caller keeps one entry per channel."""
        heapq.heappush(self._entries, (due, channel_id))

    def take_due(self, now: float, limit: int) -> list[str]:
        """Take out, soonest first, up to `limit` channels whose entries are due at `now`;
        entries the caller adds for them afterwards wait for a later call."""
        entries = self._entries
        taken: list[str] = []
        while entries and entries[0][0] <= now and len(taken) < limit:
            taken.append(heapq.heappop(entries)[1])
        return taken
