"""What an active broker sends its standby, what the standby does with it, and when acks go.

The active broker writes every change as a history record (`broker.history`:
messages with their publisher's number and key, channels created, deleted
or forgotten, numbers taken without a message). With a standby the same
records also go into the open batch; at the end of each ingress batch and
each tick the batch is closed, numbered and sent. The standby applies
batches in order to its own sequencer, ledger and keys (and its own
history file), so it holds what a restart with ``history_file`` would
recover, and confirms each batch by number.

The rule that makes an acknowledgement mean two copies: whatever tells the
outside world that a message exists (the events that carry it to edges, the
acks and answers to its publisher) is held back with the batch that holds
its record and released when the standby confirms that batch. Without a
joined standby it is released at once: the pair is *degraded*, and says so.

A standby that joins (or lost a batch, or follows another epoch) first
asks for a copy: the whole state as compact records, standing at a batch
number; batches after it are its tail. It counts as a replica, and holds
acks back, only once it confirmed the copy.

The traps:

* an action with no record of its own (the ack of a repeat) may be about
  a message whose batch is still unconfirmed: it waits for the newest
  batch sent, not for nothing;
* a standby that stopped confirming but still heartbeats would hold every
  ack forever: past `confirm_timeout` it is dropped (`overdue`) and must copy
  again;
* a standby cannot tell for itself that it was dropped: across a broken
  link it still holds a replica it thinks complete while the active one
  goes on alone, and once the link is back no batch comes to show the gap.
  So the active broker says on every message whether it still counts its
  peer (`counts_peer`), and a replica no longer counted copies again;
* released actions are the caller's to run, in the order returned.

Pure bookkeeping with an injected clock, tested without sockets.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from broker.history import apply_record, read_records
from broker.idempotency import Keys
from broker.publishers import Publishers
from broker.sequencer import Sequencer

T = TypeVar("T")

# Records are sent in frames of about this many bytes (a record larger than
# this is a frame of its own), each under the link's frame limit.
FRAME_BYTES = 256 * 1024


class Backup(enum.Enum):
    """The active broker's view of its standby."""

    ABSENT = "absent"  # none joined: degraded
    COPYING = "copying"  # sent a copy, not yet confirmed: still degraded
    JOINED = "joined"  # a replica: acks wait for it


@dataclass(slots=True)
class Batch:
    number: int
    records: list[bytes]


@dataclass(slots=True)
class _Pending(Generic[T]):
    number: int
    sent_at: float
    actions: list[T] = field(default_factory=list)


class Replication(Generic[T]):
    """The active broker's side: the open batch, batches awaiting confirmation, the
    actions they hold back."""

    def __init__(self, confirm_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.confirm_timeout = confirm_timeout
        self._clock = clock
        self.backup = Backup.ABSENT
        # The number the open batch will get once closed.
        self.next_number = 1
        # The newest batch the standby confirmed.
        self.confirmed_upto = 0
        # The batch a copy stands at, while the standby copies.
        self.copy_number: int | None = None
        self._open: list[bytes] = []
        self._actions: list[T] = []
        self._pending: deque[_Pending[T]] = deque()
        # Actions `close` released itself (no batch left to wait for).
        self._released: list[T] = []

    @property
    def degraded(self) -> bool:
        return self.backup is not Backup.JOINED

    @property
    def counts_peer(self) -> bool:
        """Whether the standby's replica counts: joined, or copying what it asked for."""
        return self.backup is not Backup.ABSENT

    def record(self, packed: bytes) -> None:
        """A change, as one or more packed history records, for the open batch."""
        if self.backup is not Backup.ABSENT:
            self._open.append(packed)

    def hold(self, action: T) -> bool:
        """Hold `action` until every record so far is confirmed; False means no standby
        counts, and the caller runs it now."""
        if self.backup is not Backup.JOINED:
            return False
        self._actions.append(action)
        return True

    def close(self) -> Batch | None:
        """Close the open batch; returns it for the standby, or None when it is empty.
        Actions it released at once wait in `take_released`."""
        records, actions = self._open, self._actions
        self._open, self._actions = [], []
        if not records:
            if actions:
                # Nothing new: the actions wait for the newest batch sent (a repeat's
                # ack is about a message that may be in it).
                if self._pending:
                    self._pending[-1].actions.extend(actions)
                else:
                    # Everything sent is confirmed already.
                    self._released.extend(actions)
            return None
        number = self.next_number
        self.next_number += 1
        if self.backup is Backup.JOINED:
            self._pending.append(_Pending(number, self._clock(), actions))
        else:
            self._released.extend(actions)
        return Batch(number, records)

    def take_released(self) -> list[T]:
        released, self._released = self._released, []
        return released

    def confirmed(self, number: int) -> list[T]:
        """The standby confirmed every batch up to `number`: the actions they held."""
        if number > self.confirmed_upto:
            self.confirmed_upto = number
        copy_number = self.copy_number
        if self.backup is Backup.COPYING and copy_number is not None and number >= copy_number:
            self.backup = Backup.JOINED
            self.copy_number = None
        released: list[T] = []
        pending = self._pending
        while pending and pending[0].number <= number:
            released.extend(pending.popleft().actions)
        return released

    def begin_copy(self) -> tuple[int, list[T]]:
        """The standby asked for a copy. Close the open batch (and send it) first; returns the
        number the copy stands at, and the actions held for a standby that no longer counts."""
        assert not self._open, "close the open batch before a copy"
        released = self._drop_pending()
        self.backup = Backup.COPYING
        self.copy_number = self.next_number - 1
        return self.copy_number, released

    def lost(self) -> list[T]:
        """The standby is gone (silent, overdue): degraded; returns every action held."""
        self._open = []
        released = self._drop_pending()
        self.backup = Backup.ABSENT
        self.copy_number = None
        return released

    def _drop_pending(self) -> list[T]:
        released = [action for pending in self._pending for action in pending.actions]
        released.extend(self._actions)
        self._pending.clear()
        self._actions = []
        return released

    @property
    def in_flight(self) -> int:
        """Batches sent to a joined standby and not yet confirmed."""
        return len(self._pending)

    @property
    def open_records(self) -> int:
        return len(self._open)

    def overdue(self) -> bool:
        """A joined standby left a batch unconfirmed for longer than `confirm_timeout`."""
        pending = self._pending
        return bool(pending) and self._clock() - pending[0].sent_at > self.confirm_timeout

    def lag(self) -> tuple[int, float]:
        """Batches sent and not yet confirmed, and the age of the oldest of them (seconds)."""
        pending = self._pending
        if not pending:
            return 0, 0.0
        return len(pending), self._clock() - pending[0].sent_at


class Verdict(enum.Enum):
    APPLY = "apply"
    OLD = "old"  # applied already (sent again): confirm again, apply nothing
    NEED_COPY = "need copy"  # a batch is missing, or another epoch: copy first


class Replica:
    """The standby's side: which batch of which epoch its state stands at."""

    def __init__(self, copy_retry: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.copy_retry = copy_retry
        self._clock = clock
        self.epoch = 0
        # The newest batch applied, or None before a copy.
        self.applied: int | None = None
        self._copy_asked_at: float | None = None

    @property
    def synced(self) -> bool:
        return self.applied is not None

    def reset(self) -> None:
        """Follow nobody (this broker became active, or stepped down and must copy)."""
        self.applied = None
        self._copy_asked_at = None

    def wants_copy(self) -> bool:
        """Whether to ask the active broker for a copy now (once per `copy_retry`)."""
        if self.applied is not None:
            return False
        now = self._clock()
        if self._copy_asked_at is not None and now - self._copy_asked_at < self.copy_retry:
            return False
        self._copy_asked_at = now
        return True

    def on_active(self, counted: bool) -> bool:
        """The active broker said whether it counts this replica. One it no longer counts
        went on without it, so it is stale and must copy again; True when that made it
        so. It is kept meanwhile: should the active broker die before the copy, it is
        still the best there is."""
        if self.applied is None or counted:
            return False
        self.applied = None
        return True

    def on_copy(self, epoch: int, number: int) -> None:
        self.epoch = epoch
        self.applied = number
        self._copy_asked_at = None

    def on_batch(self, epoch: int, number: int) -> Verdict:
        applied = self.applied
        if applied is None or epoch != self.epoch:
            self.applied = None
            return Verdict.NEED_COPY
        if number <= applied:
            return Verdict.OLD
        if number != applied + 1:
            self.applied = None
            return Verdict.NEED_COPY
        self.applied = number
        return Verdict.APPLY


def apply_frames(
    frames: Iterable[bytes], sequencer: Sequencer, publishers: Publishers, keys: Keys | None
) -> int:
    """Apply the records packed in `frames` to a standby's state; returns how many."""
    applied = 0
    for frame in frames:
        for record in read_records(frame):
            apply_record(sequencer, publishers, keys, record)
            applied += 1
    return applied


def frames_of(records: Iterable[bytes], limit: int = FRAME_BYTES) -> Iterator[bytes]:
    """`records` joined into frames of about `limit` bytes, each record whole."""
    chunk: list[bytes] = []
    size = 0
    for record in records:
        if chunk and size + len(record) > limit:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(record)
        size += len(record)
    if chunk:
        yield b"".join(chunk)


def take_over(sequencer: Sequencer, now: float) -> None:
    """A broker becoming active issues no id before the second after `now`, nor before the
    second after the newest id its replica holds.

    Each channel's next id already follows its newest replicated one; this
    also puts every new id after any the old active broker may have issued
    without replicating it (such ids reached nobody, since nothing leaves a
    broker before its standby confirmed it, but the rule costs one pass over
    the channels per failover and holds whatever the replica missed).
    """
    newest = max((c.last.time for c in sequencer.channels() if c.last is not None), default=0)
    if sequencer.watermark is not None:
        newest = max(newest, sequencer.watermark.time)
    sequencer.first_time = max(sequencer.first_time, int(now) + 1, newest + 1)
