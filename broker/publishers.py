"""Who has sent what: each publisher's newest sequence number, for exactly-once ingress.

A publisher numbers its messages 0, 1, 2, … and sends again whatever a
dead connection may have swallowed, so the broker sees some messages
twice; it keeps the first, drops the repeat and acknowledges both. A
message that skips a number is refused as a gap, because the missing one
is on its way again and must be sequenced first. A publisher the broker
does not know (new, or forgotten after a restart without a history file)
starts at the message it marks as its oldest unacknowledged (`base`): one
written on a new connection before that oldest one is refused as a gap,
since messages before it may have died with the old broker.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator

# A publisher silent this long is forgotten (threads and processes come and go).
FORGET_AFTER = 3600.0


class Verdict(enum.Enum):
    NEW = "new"
    REPEAT = "repeats"
    GAP = "gaps"


class Publishers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[bytes, int] = {}
        self._seen: dict[bytes, float] = {}

    def admit(self, publisher: bytes, seq: int, base: int) -> Verdict:
        self._seen[publisher] = self._clock()
        last = self._last.get(publisher)
        if last is None:
            if seq != base:
                return Verdict.GAP
            self._last[publisher] = seq
            return Verdict.NEW
        if seq == last + 1:
            self._last[publisher] = seq
            return Verdict.NEW
        return Verdict.REPEAT if seq <= last else Verdict.GAP

    def last(self, publisher: bytes) -> int | None:
        return self._last.get(publisher)

    def restore(self, publisher: bytes, seq: int) -> None:
        if seq > self._last.get(publisher, -1):
            self._last[publisher] = seq
        self._seen[publisher] = self._clock()

    def items(self) -> Iterator[tuple[bytes, int]]:
        return iter(self._last.items())

    def forget_silent(self) -> None:
        deadline = self._clock() - FORGET_AFTER
        for publisher in [p for p, seen in self._seen.items() if seen < deadline]:
            del self._seen[publisher]
            self._last.pop(publisher, None)
