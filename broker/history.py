"""The broker's history on disk, so channels survive a broker restart.

An append-only file of msgpack records: every sequenced message (with
the publisher's sequence number, so a restarted broker still drops
repeats, and its idempotency key, so it still knows a retry), every
channel created, deleted or forgotten. Each record is written with one unbuffered
`write` before the message is sent to edges, so a killed broker (even
`kill -9`) loses nothing the operating system was handed; only a crash of
the machine itself can lose the last records, because nothing is fsynced
per message. At start the file is replayed, then rewritten compactly (what
the limits still hold, and each channel's newest id); it is compacted
again whenever it has grown to several times that size. A compacted file
no longer names forgotten channels, but it keeps the sequencer's
watermark: with the clock set back, a channel made again after a restart
must still start after every id its forgotten self had.

A message with an EventSource event name is an ``e`` record, an ``m``
record with the name before the body: messages without one are written as
they always were, so a file written before names existed loads unchanged,
and the positional tail (publisher, number, key) stays unambiguous.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from broker.idempotency import Keys
from broker.publishers import Publishers
from broker.sequencer import Channel, Sequencer
from broker.wire import Message, MessageId

log = logging.getLogger("pushserver.broker")

FORMAT = 1
COMPACT_FACTOR = 4
COMPACT_MIN_BYTES = 16 * 1024 * 1024


def _id(value: Any) -> MessageId | None:
    return None if value is None else MessageId(int(value[0]), int(value[1]))


def apply_record(
    sequencer: Sequencer, publishers: Publishers, keys: Keys | None, record: Any
) -> None:
    """Apply one record, as read back from a file or received by a standby broker."""
    kind = record[0]
    if kind in ("m", "e"):
        if kind == "m":
            _, channel_id, mid, prev, content_type, body, *sent_by = record
            event = None
        else:
            _, channel_id, mid, prev, content_type, event, body, *sent_by = record
        message_id = MessageId(int(mid[0]), int(mid[1]))
        sequencer.restore(
            Message(channel_id, message_id, _id(prev), None, content_type, body, event)
        )
        if sent_by:
            publishers.restore(sent_by[0], int(sent_by[1]))
        if len(sent_by) > 2 and keys is not None:
            keys.restore(channel_id, sent_by[2], message_id.time)
    elif kind == "k":
        if keys is not None:
            keys.restore(record[1], record[2], float(record[3]))
    elif kind == "c":
        _, channel_id, last, floor = record
        sequencer.restore_channel(channel_id, _id(last), _id(floor))
    elif kind == "d":
        sequencer.delete(record[1])
    elif kind == "f":
        sequencer.forget(record[1], _id(record[2]))
    elif kind == "w":
        sequencer.restore_watermark(MessageId(int(record[1][0]), int(record[1][1])))
    elif kind == "p":
        publishers.restore(record[1], int(record[2]))
    elif kind == "v" and record[1] != FORMAT:
        raise ValueError(f"history format {record[1]}, expected {FORMAT}")


class History:
    def __init__(self, path: Path, keys: Keys | None = None) -> None:
        self.path = path
        self._keys = keys
        self._file: BinaryIO | None = None
        self._compacted_size = 0

    def use_keys(self, keys: Keys | None) -> None:
        """The keys to replay into and to compact from (a standby's state replaced by a copy)."""
        self._keys = keys

    def load(self, sequencer: Sequencer, publishers: Publishers) -> int:
        """Replay the file into `sequencer`, rewrite it compactly and open it for appending.

        Returns how many records were replayed. A torn last record (the
        broker died mid-write) is ignored.
        """
        replayed = 0
        if self.path.exists():
            with self.path.open("rb") as existing:
                unpacker = msgpack.Unpacker(existing, raw=False, strict_map_key=False)
                try:
                    for record in unpacker:
                        self._apply(sequencer, publishers, record)
                        replayed += 1
                except (ValueError, msgpack.UnpackException) as error:
                    log.warning("history %s ends in a damaged record: %s", self.path, error)
            sequencer.expire()
        self.compact(sequencer, publishers)
        return replayed

    def _apply(self, sequencer: Sequencer, publishers: Publishers, record: Any) -> None:
        apply_record(sequencer, publishers, self._keys, record)

    def compact(self, sequencer: Sequencer, publishers: Publishers) -> None:
        """Rewrite the file as the channels are now, then append to it."""
        self.rewrite(state_records(sequencer, publishers, self._keys))

    def rewrite(self, records: Iterable[bytes]) -> None:
        """Replace the file with `records` (a compacted state), then append to it."""
        if self._file is not None:
            self._file.close()
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("wb") as compacted:
            for record in records:
                compacted.write(record)
            compacted.flush()
            os.fsync(compacted.fileno())
        os.replace(temporary, self.path)
        self._compacted_size = self.path.stat().st_size
        self._file = self.path.open("ab", buffering=0)

    def maybe_compact(self, sequencer: Sequencer, publishers: Publishers) -> None:
        if self._file is None:
            return
        size = self._file.tell()
        if size > max(COMPACT_MIN_BYTES, COMPACT_FACTOR * self._compacted_size):
            self.compact(sequencer, publishers)

    def append(self, records: bytes) -> None:
        """Write packed records as they are (one or several, with one `write`)."""
        assert self._file is not None
        self._file.write(records)

    def published(
        self, message: Message, sent_by: tuple[bytes, int] | None = None, key: str | None = None
    ) -> None:
        self.append(message_record(message, sent_by, key))

    def numbered(self, publisher: bytes, seq: int) -> None:
        """A publisher's number taken by a message not published (a retry of a key)."""
        self.append(numbered_record(publisher, seq))

    def created(self, channel_id: str) -> None:
        self.append(created_record(channel_id))

    def deleted(self, channel_id: str) -> None:
        self.append(deleted_record(channel_id))

    def forgotten(self, channels: list[Channel]) -> None:
        # One write for the lot: a broker forgets channels by the thousand.
        self.append(forgotten_records(channels))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# -- records: the file's, and what an active broker sends its standby --------


def state_records(
    sequencer: Sequencer, publishers: Publishers, keys: Keys | None
) -> Iterator[bytes]:
    """The state as compact records: what a compacted file holds, and a standby's copy."""
    yield msgpack.packb(("v", FORMAT))
    if sequencer.watermark is not None:
        yield msgpack.packb(("w", sequencer.watermark))
    for channel in sequencer.channels():
        yield msgpack.packb(("c", channel.channel_id, channel.last, channel.floor))
        for message in channel.messages:
            yield message_record(message)
    for publisher, seq in publishers.items():
        yield numbered_record(publisher, seq)
    for channel_id, key, at in keys.items() if keys is not None else ():
        yield msgpack.packb(("k", channel_id, key, at))


def message_record(
    message: Message, sent_by: tuple[bytes, int] | None = None, key: str | None = None
) -> bytes:
    record: tuple[Any, ...] = (
        "m",
        message.channel_id,
        message.id,
        message.prev,
        message.content_type,
    )
    if message.event is not None:
        record = ("e", *record[1:], message.event)
    # The publisher's number and the key travel in the same record as the
    # message, so no kill can keep one without the other. A key comes only
    # with a number (through the ingress), so its place is never ambiguous.
    extra = (*(sent_by or ()), *(() if key is None else (key,)))
    packed: bytes = msgpack.packb((*record, message.body, *extra), use_bin_type=True)
    return packed


def numbered_record(publisher: bytes, seq: int) -> bytes:
    packed: bytes = msgpack.packb(("p", publisher, seq), use_bin_type=True)
    return packed


def created_record(channel_id: str) -> bytes:
    packed: bytes = msgpack.packb(("c", channel_id, None, None))
    return packed


def deleted_record(channel_id: str) -> bytes:
    packed: bytes = msgpack.packb(("d", channel_id))
    return packed


def forgotten_records(channels: list[Channel]) -> bytes:
    return b"".join(msgpack.packb(("f", channel.channel_id, channel.last)) for channel in channels)


def read_records(data: bytes) -> Iterator[Any]:
    """The records packed in `data`, in order."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    yield from unpacker
