"""Who is listening: the subscribers edges hold, per channel, summed over the cluster.

Pure bookkeeping with no sockets, so its rules can be tested alone. Each
edge reports its own counts (what changed, and now and then all of them);
the broker keeps each edge's last word and the sum per channel, which
channel info reports and which decides a publish's 201 or 202. The trap
is an edge that dies: it says nothing, and its counts would stand forever.
So an edge silent for longer than the presence timeout is forgotten with
its subscribers, and counts are kept only for channels the broker holds,
so a deleted channel's presence goes with it and an edge cannot grow this
with channels that do not exist. A second trap is in the decoding: msgpack
interns the keys of every map it unpacks, and the interpreter's table of
interned strings never shrinks, so the counts are kept under the channel
id objects the broker already holds, never under the report's own.
Whether a channel is still in use (so the broker keeps it) is measured on
the broker's own clock from when it heard of the latest request, never
from the edges' clocks, which may be skewed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from broker.memory import fitted


class Presence:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # Per edge: channel id -> held subscribers it last reported (never 0).
        self._held: dict[bytes, dict[str, int]] = {}
        self._seen: dict[bytes, float] = {}
        # Per channel: the sum over every edge (never 0); the latest request
        # (the edge's clock) and when it was heard of (this clock).
        self._subscribers: dict[str, int] = {}
        self._requested: dict[str, tuple[float, float]] = {}
        # Each table's largest size since it was last rebuilt (`broker.memory.fitted`):
        # a crowd of held polls that left must not keep its tables' memory.
        self._requested_peak = 0
        self._subscribers_peak = 0
        self._held_peaks: dict[bytes, int] = {}
        # How many times a table was rebuilt smaller.
        self.rebuilds = 0

    def subscribers(self, channel_id: str) -> int:
        """Subscribers held on every edge together."""
        return self._subscribers.get(channel_id, 0)

    def requested(self, channel_id: str) -> float | None:
        """The Unix time of the latest subscriber request on any edge; None when never."""
        requested = self._requested.get(channel_id)
        return None if requested is None else requested[0]

    def in_use(self, channel_id: str, linger: float) -> bool:
        """Whether subscribers are held on it, or a request was heard within `linger` seconds."""
        if channel_id in self._subscribers:
            return True
        requested = self._requested.get(channel_id)
        if requested is None:
            return False
        now = self._clock()
        if requested[1] > now:
            # The clock was set back: the linger starts again from now.
            self._requested[channel_id] = (requested[0], now)
            return True
        return now - requested[1] < linger

    def report(
        self,
        edge: bytes,
        counts: dict[str, tuple[int, float]],
        full: bool,
        known: Callable[[str], str | None],
    ) -> None:
        """Take an edge's `counts` (channel id -> held subscribers, latest request time).

        With `full`, the counts are all the edge holds: channels it no longer
        names are counted 0 on it. `known` gives a channel id as the broker
        holds it, or None for a channel it does not hold, which is ignored.
        """
        now = self._seen[edge] = self._clock()
        held = self._held.setdefault(edge, {})
        if full:
            for gone in set(held) - set(counts):
                self._set(held, gone, 0)
        for reported, (subscribers, requested) in counts.items():
            channel_id = known(reported)
            if channel_id is None:
                continue
            latest = self._requested.get(channel_id)
            if requested and (latest is None or requested > latest[0]):
                self._requested[channel_id] = (requested, now)
                self._requested_peak = max(self._requested_peak, len(self._requested))
            self._set(held, channel_id, max(subscribers, 0))
        self._fit(edge)

    def _set(self, held: dict[str, int], channel_id: str, count: int) -> None:
        before = held.pop(channel_id, 0)
        if count:
            held[channel_id] = count
        total = self._subscribers.get(channel_id, 0) + count - before
        if total:
            self._subscribers[channel_id] = total
        else:
            self._subscribers.pop(channel_id, None)

    def forget_channel(self, channel_id: str) -> None:
        """A deleted or forgotten channel: nobody is held on it, nobody ever asked for it."""
        for held in self._held.values():
            held.pop(channel_id, None)
        self._subscribers.pop(channel_id, None)
        if self._requested.pop(channel_id, None) is not None:
            table = self._requested
            self._requested, self._requested_peak = fitted(table, self._requested_peak)
            self.rebuilds += self._requested is not table

    def _fit(self, edge: bytes) -> None:
        """After a report: rebuild the edge's table and the sums, if they fell to a quarter."""
        held = self._held[edge]
        self._held[edge], self._held_peaks[edge] = fitted(held, self._held_peaks.get(edge, 0))
        sums = self._subscribers
        self._subscribers, self._subscribers_peak = fitted(sums, self._subscribers_peak)
        self.rebuilds += (self._held[edge] is not held) + (self._subscribers is not sums)

    def forget_silent_edges(self, timeout: float) -> list[bytes]:
        """Forget the edges that reported nothing for `timeout` seconds; returns them."""
        deadline = self._clock() - timeout
        gone = [edge for edge, seen in self._seen.items() if seen < deadline]
        for edge in gone:
            held = self._held.pop(edge, {})
            for channel_id in list(held):
                self._set(held, channel_id, 0)
            del self._seen[edge]
            self._held_peaks.pop(edge, None)
        if gone:
            sums = self._subscribers
            self._subscribers, self._subscribers_peak = fitted(sums, self._subscribers_peak)
            self.rebuilds += self._subscribers is not sums
        return gone
