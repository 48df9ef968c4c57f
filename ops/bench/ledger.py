"""Exact accounting of what each subscriber received: lost, duplicated, out of order.

Every benchmark message carries its sequence number (per channel, from 0)
and the time it was published, so a run is checked message by message; a
run with a single loss is a failed run, whatever its speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


def message_body(seq: int, published: float, padding: int = 0) -> bytes:
    return json.dumps({"type": "bench", "seq": seq, "t": published, "pad": "x" * padding}).encode()


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


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
