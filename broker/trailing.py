"""Which channels the broker sends a trailing sync marker, tick by tick.

An edge notices a lost message from the next one on its channel, whose
`prev` names what it missed. Only the last message of a burst has no next
one: a sync marker naming the channel's newest id, sent once the channel
went quiet, covers it. A channel still being published to needs none, and
under load, where most channels are, a marker per channel and tick would
be another event for every edge on almost every publish.

The trap: quiet means nothing published for a whole tick, not since the
last tick began, so the marker comes one to two ticks after the last
message; a channel deleted counts as published (its marker says it is gone).
"""

from __future__ import annotations


class TrailingSyncs:
    def __init__(self) -> None:
        # Published since the last tick, and in the tick before it.
        self._now: set[str] = set()
        self._before: set[str] = set()

    def published(self, channel_id: str) -> None:
        self._now.add(channel_id)

    def tick(self) -> set[str]:
        """The channels whose marker is due: published in the tick before this one's,
        nothing since."""
        quiet = self._before - self._now
        self._before, self._now = self._now, set()
        return quiet
