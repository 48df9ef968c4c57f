"""Exact accounting of what each subscriber received: lost, duplicated, out of order.

Every benchmark message carries its sequence number (per channel, from 0)
and the time it was published, so a run is checked message by message; a
run with a single loss is a failed run, whatever its speed. A run over a
million channels with one message each keeps a count per channel instead
of a ledger (`Tally`): a list per channel would weigh more than the
server it measures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


def message_body(seq: int, published: float, padding: int = 0) -> bytes:
    return json.dumps({"type": "bench", "seq": seq, "t": published, "pad": "x" * padding}).encode()


def channel_body(index: int, published: float) -> bytes:
    """The one message of channel number `index`: it names its channel, so a
    message served on the wrong channel is not counted as delivered."""
    return json.dumps({"type": "bench", "seq": 0, "t": published, "channel": index}).encode()


def read_body(body: bytes) -> tuple[int, float]:
    loaded = json.loads(body)
    return int(loaded["seq"]), float(loaded["t"])


@dataclass
class Ledger:
    """What one subscriber got, in arrival order."""

    seqs: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def record(self, body: bytes, now: float) -> int:
        seq, published = read_body(body)
        self.seqs.append(seq)
        self.latencies.append(now - published)
        return seq

    def faults(self, expected: int) -> Faults:
        seen: set[int] = set()
        duplicated = out_of_order = 0
        newest = -1
        for seq in self.seqs:
            if seq in seen:
                duplicated += 1
                continue
            seen.add(seq)
            if seq < newest:
                out_of_order += 1
            newest = max(newest, seq)
        lost = len(set(range(expected)) - seen)
        return Faults(lost, duplicated, out_of_order)


@dataclass(frozen=True)
class Faults:
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0

    def __add__(self, other: Faults) -> Faults:
        return Faults(
            self.lost + other.lost,
            self.duplicated + other.duplicated,
            self.out_of_order + other.out_of_order,
        )

    @property
    def clean(self) -> bool:
        return self == Faults()


class Tally:
    """How often each of many channels delivered its one message (`channel_body`)."""

    def __init__(self, channels: int) -> None:
        self.counts = bytearray(channels)

    def record(self, index: int, body: bytes) -> bool:
        """Count `body` for channel `index`; False when it is not that channel's message."""
        loaded = json.loads(body)
        if loaded.get("channel") != index or loaded.get("seq") != 0:
            return False
        self.counts[index] = min(255, self.counts[index] + 1)
        return True

    @property
    def delivered(self) -> int:
        return len(self.counts) - self.counts.count(0)

    def faults(self) -> Faults:
        lost = self.counts.count(0)
        repeated = len(self.counts) - lost - self.counts.count(1)
        duplicated = sum(count - 1 for count in self.counts if count > 1) if repeated else 0
        return Faults(lost, duplicated)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
