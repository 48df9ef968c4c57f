"""Idempotency keys of recent publishes, and what each was answered.

An HTTP publisher that timed out or got a 503 cannot tell whether its
message was published (the edge's outbox may still deliver it), so it
retries with the same `Idempotency-Key`. The retry may reach another edge
behind a balancer, so the keys are kept here, in the broker, where every
publish of the cluster passes: a key seen on the same channel within the
window is answered with what the first publish was answered, and the
message is not published again.

Pure bookkeeping with an injected wall clock (keys are restored from the
history file after a restart, and their times must mean the same then).
The traps:

* the window is bounded twice, by time and by count: past `limit` keys
  the oldest are forgotten early, so a flood of keyed publishes shortens
  the window rather than growing the broker without bound;
* a key restored from the history file has no recorded answer (only the
  key is written with the message): its retry is answered with the
  channel's info as it is then.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import NamedTuple

from broker.wire import ChannelInfo


class Recorded(NamedTuple):
    # When the key's publish was sequenced, by the wall clock.
    at: float
    # What it was answered; None for a key restored from the history file.
    info: ChannelInfo | None


class Keys:
    def __init__(self, window: float, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.limit = limit
        self._clock = clock
        # Oldest first: keys are recorded in time order, so expiry pops from the front.
        self._recorded: OrderedDict[tuple[str, str], Recorded] = OrderedDict()

    def __len__(self) -> int:
        return len(self._recorded)

    def get(self, channel_id: str, key: str) -> Recorded | None:
        """What the publish with `key` on `channel_id` was answered, if it is in the window."""
        self._expire()
        return self._recorded.get((channel_id, key))

    def record(self, channel_id: str, key: str, info: ChannelInfo) -> None:
        self._remember(channel_id, key, Recorded(self._clock(), info))

    def restore(self, channel_id: str, key: str, at: float) -> None:
        """A key read back from the history file, sequenced at `at` (wall clock)."""
        if at > self._clock() - self.window:
            self._remember(channel_id, key, Recorded(at, None))

    def items(self) -> Iterator[tuple[str, str, float]]:
        """(channel_id, key, at) of every key in the window, oldest first."""
        self._expire()
        for (channel_id, key), recorded in self._recorded.items():
            yield channel_id, key, recorded.at

    def _remember(self, channel_id: str, key: str, recorded: Recorded) -> None:
        found = (channel_id, key)
        self._recorded.pop(found, None)
        self._recorded[found] = recorded
        self._expire()
        while len(self._recorded) > self.limit:
            self._recorded.popitem(last=False)

    def _expire(self) -> None:
        recorded = self._recorded
        oldest = self._clock() - self.window
        while recorded and next(iter(recorded.values())).at <= oldest:
            recorded.popitem(last=False)
