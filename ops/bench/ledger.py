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
    # Stream events whose `id` was missing, not newer than the one before, or not
    # the id another stream of the channel saw for the same message.
    bad_ids: int = 0

    def __add__(self, other: Faults) -> Faults:
        return Faults(
            self.lost + other.lost,
            self.duplicated + other.duplicated,
            self.out_of_order + other.out_of_order,
            self.bad_ids + other.bad_ids,
        )

    @property
    def clean(self) -> bool:
        return self == Faults()


class Catalog:
    """What every stream of one channel must agree on: each body's sequence number (read
    once per distinct body, not once per delivery) and each message's event id."""

    def __init__(self) -> None:
        self.seqs: dict[bytes, int] = {}
        self.ids: dict[int, bytes] = {}

    def seq(self, body: bytes) -> int:
        seq = self.seqs.get(body)
        if seq is None:
            seq = self.seqs[body] = read_body(body)[0]
        return seq


def parse_event_id(value: bytes) -> tuple[int, int] | None:
    """A single channel's event id, `<time>:<tag>`, as a pair that orders as ids do."""
    time, colon, tag = value.partition(b":")
    if not colon or not time.isdigit() or not tag.isdigit():
        return None
    return int(time), int(tag)


class StreamLedger:
    """What one EventSource stream got, checked on arrival: a stream delivers up to
    millions of events, too many to keep a list of.

    Each event's body gives its sequence number; its `id` must be its own,
    newer than the stream's last, and the same as every other stream of the
    channel saw for that message (the broker's id, on every edge).
    """

    __slots__ = ("catalog", "seen", "received", "newest", "last_id", "counts")

    def __init__(self, catalog: Catalog, expected: int) -> None:
        self.catalog = catalog
        self.seen = bytearray(expected)
        self.received = 0
        self.newest = -1
        self.last_id: tuple[int, int] | None = None
        # duplicated, out of order, bad ids
        self.counts = [0, 0, 0]

    def record(self, event_id: bytes | None, data: bytes) -> int:
        """Count one event (`event_id` None when it had no `id` line); returns its number."""
        catalog = self.catalog
        seq = catalog.seq(data)
        self.received += 1
        counts = self.counts
        parsed = None if event_id is None else parse_event_id(event_id)
        if (
            event_id is None
            or parsed is None
            or (self.last_id is not None and parsed <= self.last_id)
            or catalog.ids.setdefault(seq, event_id) != event_id
        ):
            counts[2] += 1
        if parsed is not None and (self.last_id is None or parsed > self.last_id):
            self.last_id = parsed
        seen = self.seen
        if not 0 <= seq < len(seen):
            counts[1] += 1  # a message nobody published on this channel
        elif seen[seq]:
            counts[0] += 1
        else:
            seen[seq] = 1
            if seq < self.newest:
                counts[1] += 1
            else:
                self.newest = seq
        return seq

    def faults(self) -> Faults:
        duplicated, out_of_order, bad_ids = self.counts
        return Faults(self.seen.count(0), duplicated, out_of_order, bad_ids)


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
