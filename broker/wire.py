"""The ZeroMQ wire format spoken between publishers, the broker and edges.

This module is the only place the format is written down; `send_update`,
the broker and every edge import it, and none of them builds or parses a
frame by hand. It imports nothing from Django.

Three socket pairs carry it:

* ingress, DEALER -> ROUTER: one frame per publish, a msgpack array
  ``[version, publisher, seq, channel_id, content_type, body, base, key, reply]``
  (and a tenth field, the event name, only when the publisher named one)
  naming its publisher, that publisher's sequence number and its oldest
  unacknowledged one, an idempotency key (or nil) and whether the
  publisher wants the message's own answer; the broker answers with
  cumulative acknowledgements, so a publisher can send again what a dead
  connection swallowed and the broker can drop what it already has, and
  with a `Published` answer (the channel's info) for each message that
  asked for one, before the ack that covers it. An array, not a map, and
  one frame, not a header and a body, because this is `send_update`'s
  and the HTTP publisher's hot path: each frame is a socket call;
* events, XPUB -> SUB: `[topic, header]` or `[topic, header, body]`;
  a channel's topic is its UTF-8 id followed by NUL, so the subscription
  for channel ``a`` never matches channel ``ab``; heartbeats travel on the
  bare NUL topic, which no channel topic starts with because channel ids
  may not contain NUL;
* control, DEALER -> ROUTER: `[header, *bodies]` requests and replies.

Other headers are msgpack maps carrying the format version under ``v``; bodies
are opaque bytes passed through untouched from the publisher to the
browser. The trap: a frame from the network is untrusted, so every
``decode_*`` raises `WireError` rather than anything else on bad input.
"""

from __future__ import annotations

import functools
import math
import re
import reprlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import msgpack

VERSION = 1
HEARTBEAT_TOPIC = b"\0"
MAX_CHANNEL_ID_BYTES = 1024
# A message id's time is a Unix second an HTTP date can name (up to 9999-12-31):
# edges render it as Last-Modified.
LAST_SECOND = 253_402_300_799
# An idempotency key names one publish; anything longer is not a key but a payload.
MAX_KEY_BYTES = 255


class WireError(ValueError):
    """A frame that does not follow this format."""


class MessageId(NamedTuple):
    """A message's id: the second the broker accepted it and a tag within that second.

    Tuples order as the protocol orders ids, so ids compare with ``<``.
    """

    time: int
    tag: int

    def __str__(self) -> str:
        return f"{self.time}:{self.tag}"


def channel_id_problem(channel_id: str) -> str | None:
    """Why `channel_id` cannot name a channel, or None when it can."""
    if not channel_id:
        return "channel id is empty"
    if "\0" in channel_id:
        return "channel id contains NUL"
    if len(channel_id.encode("utf-8", "surrogatepass")) > MAX_CHANNEL_ID_BYTES:
        return f"channel id is longer than {MAX_CHANNEL_ID_BYTES} bytes"
    return None


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an idempotency key, or None when it can."""
    if not key:
        return "idempotency key is empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"idempotency key is longer than {MAX_KEY_BYTES} bytes"
    return None


# What an HTTP header value may hold (RFC 9110 field-value: visible characters,
# spaces, tabs and obs-text), as the Latin-1 a response head is written in.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
MAX_CONTENT_TYPE_CHARS = 1024
# The content type of the edges' own notices in ws+meta.nchan frames (edge.websocket):
# a client tells a notice from a message by it, so no message may carry it.
NOTICE_TYPE = "application/vnd.pushserver.notice+json"


def content_type_problem(content_type: str) -> str | None:
    """Why `content_type` cannot go out in a Content-Type header, or None when it can."""
    if len(content_type) > MAX_CONTENT_TYPE_CHARS:
        # Before the cache, so a hostile publisher's long ones are never kept there.
        return f"content type is longer than {MAX_CONTENT_TYPE_CHARS} characters"
    return _content_type_problem(content_type)


# Checked at every hop of every message (publisher, broker, edge, response), and a
# site uses a handful of types: remembered, where the check costs a regex each time.
@functools.lru_cache(maxsize=256)
def _content_type_problem(content_type: str) -> str | None:
    if _HEADER_VALUE.fullmatch(content_type) is None:
        return f"content type {_shown.repr(content_type)} is not a header value"
    # Media types are case-insensitive, and parameters would not make it another one.
    if content_type.partition(";")[0].strip().lower() == NOTICE_TYPE:
        return f"content type {NOTICE_TYPE!r} is reserved for the edges' notices"
    return None


# An event name, as EventSource's `event:` line and Nchan's X-EventSource-Event
# header carry it: short, and nothing a line break or a header could be forged with.
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Event names the edges send themselves: a client seeing one of them must know the
# edge, not a publisher, sent it. `message` is what EventSource dispatches an
# unnamed event as (a publisher naming it would be indistinguishable from none),
# `open` and `error` are the EventSource object's own events.
MISSED_EVENT = "pushserver-missed"
DELETED_EVENT = "pushserver-deleted"
RESERVED_EVENT_NAMES = frozenset({MISSED_EVENT, DELETED_EVENT, "message", "open", "error"})


def event_name_problem(name: str) -> str | None:
    """Why `name` cannot name an event, or None when it can.

    >>> event_name_problem("price-update") is None
    True
    """
    if EVENT_NAME.fullmatch(name) is None:
        return f"event name {_shown.repr(name)} is not 1 to 64 of A-Z a-z 0-9 _ . : -"
    if name in RESERVED_EVENT_NAMES:
        return f"event name {name!r} is reserved"
    return None


def topic(channel_id: str) -> bytes:
    return channel_id.encode("utf-8") + b"\0"


def channel_of(topic_frame: bytes) -> str:
    if not topic_frame.endswith(b"\0") or len(topic_frame) < 2:
        raise WireError(f"topic {topic_frame[:40]!r} does not end in NUL")
    try:
        return topic_frame[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"topic is not UTF-8: {exc}") from None


# Untrusted values in error messages: repr() of one nested a thousand deep (msgpack
# allows 1024) raises RecursionError, which is not a WireError.
_shown = reprlib.Repr()
_shown.maxlevel = 3
_shown.maxstring = _shown.maxother = 60


_packers = threading.local()


def _packer() -> msgpack.Packer:
    # msgpack.packb builds a Packer per call, as costly as the packing; a Packer
    # is not thread-safe (senders pack on their own threads), so one per thread.
    try:
        packer: msgpack.Packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer


def _pack(header: dict[str, Any]) -> bytes:
    header["v"] = VERSION
    packed: bytes = _packer().pack(header)
    return packed


def _unpack(frame: bytes) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError(f"header is not msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise WireError(f"header is a {type(header).__name__}, expected a map")
    if header.get("v") != VERSION:
        raise WireError(f"wire version {_shown.repr(header.get('v'))}, expected {VERSION}")
    return header


def _id(value: Any) -> MessageId:
    # Read for every message an edge receives: `type(...) is int` is the cheap way
    # to refuse bools, which are ints to isinstance.
    if type(value) in (list, tuple) and len(value) == 2:
        seconds, tag = value
        if type(seconds) is int and type(tag) is int and 0 <= seconds <= LAST_SECOND and tag >= 0:
            return MessageId(seconds, tag)
    raise WireError(f"message id {_shown.repr(value)} is not a [time, tag] pair")


def _optional_id(value: Any) -> MessageId | None:
    return None if value is None else _id(value)


def _str(header: dict[str, Any], key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise WireError(f"{key!r} is {type(value).__name__}, expected str")
    return value


def _optional_str(header: dict[str, Any], key: str) -> str | None:
    value = header.get(key)
    if value is not None and not isinstance(value, str):
        raise WireError(f"{key!r} is {type(value).__name__}, expected str or nil")
    return value


def _channel(header: dict[str, Any]) -> str:
    channel_id = _str(header, "c")
    problem = channel_id_problem(channel_id)
    if problem:
        raise WireError(problem)
    return channel_id


def _bytes(frame: Any) -> bytes:
    # pyzmq hands out bytes, or Frame objects when copy=False was used.
    return frame if isinstance(frame, bytes) else bytes(frame)


# -- ingress: publishers to the broker ---------------------------------------


class Publish(NamedTuple):
    # A tuple, not a frozen dataclass: the broker makes one per message, and a
    # frozen dataclass's __init__ costs as much as decoding the frame.
    channel_id: str
    content_type: str | None
    body: bytes
    # Who sent it (random, one per sending socket) and its number there,
    # counting from 0 without gaps.
    publisher: bytes
    seq: int
    # Every number below this was acknowledged when the message was written;
    # equal to `seq` when it is the oldest the sender still waits on. A broker
    # that does not know the publisher starts it only there.
    base: int
    # The caller's name for this publish: another with the same key on the
    # same channel within the broker's window is answered as this one was
    # and not published again. None for `send_update`.
    key: str | None = None
    # The publisher waits on this message's own answer (`Published`), as an
    # HTTP publish does for its status and channel info.
    reply: bool = False
    # The EventSource event name the publisher gave it (`event_name_problem`), or None.
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The broker holds every message of `publisher` up to `seq`.

    With `gap`, the broker refused a later message because one before it
    never arrived: the publisher sends again everything after `seq`. A gap
    at `UNKNOWN` means the broker does not know the publisher (it restarted
    without a history file) and refused a message that was not the oldest
    unacknowledged one: the publisher sends again from its oldest.
    """

    publisher: bytes
    seq: int
    gap: bool = False
    # The standby pair's epoch of the broker that sent it (0 without a pair).
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class NotActive:
    """A broker of a standby pair refused a publish: it is not the active one (its peer is
    still heard, so a client's vote does not make it so). The publisher goes to the other."""

    epoch: int


# The `seq` of a gap ack from a broker that does not know the publisher.
UNKNOWN = -1


class Published(NamedTuple):
    """The answer to a publish that asked for one: the channel's info after it.

    It is also an ack up to `seq`: the broker sequenced or held every
    message of the publisher up to it, and sends no ack of its own when the
    answers of a batch already say as much.

    Sent for a repeat too (a publisher that lost the first answer with its
    connection asks again): then with the info the broker recorded under the
    message's key, or else the channel's info as it is now.
    """

    publisher: bytes
    seq: int
    info: ChannelInfo


class PublishPacker:
    """Packs publishes into their one frame, reusing one msgpack buffer.

    Not thread-safe (the buffer is shared): one per sending socket.
    """

    __slots__ = ("_pack",)

    def __init__(self) -> None:
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def __call__(
        self,
        channel_id: str,
        body: bytes,
        content_type: str | None,
        publisher: bytes,
        seq: int,
        base: int,
        key: str | None = None,
        reply: bool = False,
        event: str | None = None,
    ) -> bytes:
        return self.encode(
            Publish(channel_id, content_type, body, publisher, seq, base, key, reply, event)
        )

    def encode(self, publish: Publish) -> bytes:
        """The frame of `publish` (what `decode_publish` reads back)."""
        fields = [
            VERSION,
            publish.publisher,
            publish.seq,
            publish.channel_id,
            publish.content_type,
            publish.body,
            publish.base,
            publish.key,
            publish.reply,
        ]
        event = publish.event
        if event is not None:
            # Only then: a message without a name is the nine fields it always was.
            fields.append(event)
        packed: bytes = self._pack(fields)
        return packed


def _whole(value: Any) -> bool:
    return type(value) is int


def decode_publish(frames: Sequence[bytes]) -> Publish:
    if len(frames) != 1:
        raise WireError(f"publish has {len(frames)} frames, expected 1")
    try:
        fields = msgpack.unpackb(_bytes(frames[0]), raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError(f"publish is not msgpack: {exc}") from None
    if not isinstance(fields, list) or not 9 <= len(fields) <= 10:
        raise WireError("publish is not an array of 9 or 10 fields")
    version, publisher, seq, channel_id, content_type, body, base, key, reply = fields[:9]
    event = None
    if len(fields) == 10:
        event = fields[9]
        if event is None:
            raise WireError("publish has a tenth field, the event name, that is nil")
        _event(event)
    if version != VERSION:
        raise WireError(f"wire version {_shown.repr(version)}, expected {VERSION}")
    if not isinstance(publisher, bytes) or not publisher:
        raise WireError("publish without a publisher id")
    if not _whole(seq) or seq < 0:
        raise WireError(f"publish sequence number {_shown.repr(seq)} is not a whole number")
    if not isinstance(channel_id, str):
        raise WireError(f"channel id is {type(channel_id).__name__}, expected str")
    problem = channel_id_problem(channel_id)
    if problem:
        raise WireError(problem)
    _content_type(content_type)
    if not isinstance(body, bytes):
        raise WireError(f"publish body is {type(body).__name__}, expected bytes")
    if not _whole(base) or not 0 <= base <= seq:
        raise WireError(
            f"publish base {_shown.repr(base)} is not a whole number up to its sequence number"
        )
    if key is not None:
        if not isinstance(key, str):
            raise WireError(f"idempotency key is {type(key).__name__}, expected str or nil")
        problem = key_problem(key)
        if problem:
            raise WireError(problem)
    if not isinstance(reply, bool):
        raise WireError(f"publish reply flag {_shown.repr(reply)} is not true or false")
    return Publish(channel_id, content_type, body, publisher, seq, base, key, reply, event)


def encode_ack(ack: Ack) -> list[bytes]:
    header = {"k": "ack", "p": ack.publisher, "s": ack.seq, "gap": ack.gap}
    if ack.epoch:
        header["e"] = ack.epoch
    return [_pack(header)]


def encode_not_active(refusal: NotActive) -> list[bytes]:
    return [_pack({"k": "passive", "e": refusal.epoch})]


def decode_ack(frames: Sequence[bytes]) -> Ack:
    answer = decode_answer(frames)
    if not isinstance(answer, Ack):
        raise WireError("not an ack")
    return answer


def encode_published(published: Published) -> list[bytes]:
    # An array, not a map like the ack: one per HTTP publish, read on the edge's hot path.
    info = published.info
    fields = [VERSION, published.publisher, published.seq]
    fields += [info.messages, info.requested, info.subscribers, info.last]
    return [_packer().pack(fields)]


# What the ingress answers a publisher with.
Answer = Ack | Published | NotActive


def encode_answer(answer: Answer) -> list[bytes]:
    if isinstance(answer, Published):
        return encode_published(answer)
    if isinstance(answer, Ack):
        return encode_ack(answer)
    return encode_not_active(answer)


def decode_answer(frames: Sequence[bytes]) -> Answer:
    """What the broker's ingress sends a publisher: an ack (a map) or a publish's answer
    (an array)."""
    if len(frames) != 1:
        raise WireError(f"ingress answer has {len(frames)} frames, expected 1")
    frame = _bytes(frames[0])
    try:
        value = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError(f"ingress answer is not msgpack: {exc}") from None
    if isinstance(value, list):
        return _published(value)
    header = _unpack(frame)
    epoch = header.get("e", 0)
    if not _whole(epoch):
        raise WireError(f"ingress answer's epoch {_shown.repr(epoch)} is not a whole number")
    if header.get("k") == "passive":
        return NotActive(cast(int, epoch))
    publisher = header.get("p")
    seq = header.get("s")
    if header.get("k") != "ack" or not isinstance(publisher, bytes) or not _whole(seq):
        raise WireError(f"ingress answer {_shown.repr(header)} is not an ack")
    return Ack(publisher, cast(int, seq), bool(header.get("gap")), cast(int, epoch))


def _published(fields: list[Any]) -> Published:
    if len(fields) != 7:
        raise WireError(f"publish answer has {len(fields)} fields, expected 7")
    version, publisher, seq, messages, requested, subscribers, last = fields
    if version != VERSION:
        raise WireError(f"wire version {_shown.repr(version)}, expected {VERSION}")
    if not isinstance(publisher, bytes) or not _whole(seq):
        raise WireError("publish answer without a publisher and number")
    if not _whole(messages) or not _whole(subscribers):
        raise WireError("publish answer without message and subscriber counts")
    if requested is not None and not (
        _whole(requested) or (isinstance(requested, float) and math.isfinite(requested))
    ):
        raise WireError(
            f"publish answer's request time {_shown.repr(requested)} is not a finite number"
        )
    info = ChannelInfo(
        messages, None if requested is None else float(requested), subscribers, _optional_id(last)
    )
    return Published(publisher, seq, info)


# -- events: the broker to edges ---------------------------------------------


class Message(NamedTuple):
    """A message as the broker sequenced it.

    `prev` is the id of the channel's message before this one (None for the
    first the broker knows); `floor` is the newest id the broker has dropped
    from the channel's history, so an edge drops the same messages; `event`
    is the EventSource event name its publisher gave it, or None.

    A tuple, like `Publish`: the broker makes one per message.
    """

    channel_id: str
    id: MessageId
    prev: MessageId | None
    floor: MessageId | None
    content_type: str | None
    body: bytes
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Sync:
    """The broker's summary of a channel: sent when an edge subscribes and
    after bursts, so an edge that missed a live message notices."""

    channel_id: str
    exists: bool
    last: MessageId | None


@dataclass(frozen=True, slots=True)
class Deleted:
    channel_id: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """`epoch` names one run of a broker (edges resynchronise when it changes);
    `pair_epoch` is the standby pair's (`broker.pair`), 0 without a pair, and
    `active` says whether the broker serves (a pair's passive one does not)."""

    epoch: str
    time: float
    active: bool = True
    pair_epoch: int = 0


Event = Message | Sync | Deleted | Heartbeat


def encode_message(message: Message) -> list[bytes]:
    header = {
        "k": "m",
        "id": message.id,
        "prev": message.prev,
        "floor": message.floor,
        "t": message.content_type,
    }
    if message.event is not None:
        header["e"] = message.event
    return [topic(message.channel_id), _pack(header), message.body]


def encode_sync(sync: Sync) -> list[bytes]:
    return [topic(sync.channel_id), _pack({"k": "s", "exists": sync.exists, "last": sync.last})]


def encode_deleted(channel_id: str) -> list[bytes]:
    return [topic(channel_id), _pack({"k": "d"})]


def encode_heartbeat(heartbeat: Heartbeat) -> list[bytes]:
    header: dict[str, Any] = {"k": "h", "epoch": heartbeat.epoch, "time": heartbeat.time}
    if heartbeat.pair_epoch or not heartbeat.active:
        header["a"] = heartbeat.active
        header["n"] = heartbeat.pair_epoch
    return [HEARTBEAT_TOPIC, _pack(header)]


def encode_event(event: Event) -> list[bytes]:
    """The frames of any event, its topic first."""
    if isinstance(event, Message):
        return encode_message(event)
    if isinstance(event, Sync):
        return encode_sync(event)
    if isinstance(event, Deleted):
        return encode_deleted(event.channel_id)
    return encode_heartbeat(event)


def event_topic(event: Event) -> bytes:
    """The topic an event is sent on (the first of its frames)."""
    return HEARTBEAT_TOPIC if isinstance(event, Heartbeat) else topic(event.channel_id)


def decode_event(frames: Sequence[bytes]) -> Event:
    if len(frames) < 2:
        raise WireError(f"event has {len(frames)} frames, expected at least 2")
    topic_frame = _bytes(frames[0])
    header = _unpack(_bytes(frames[1]))
    kind = header.get("k")
    if topic_frame == HEARTBEAT_TOPIC:
        if kind != "h":
            raise WireError(f"event of kind {_shown.repr(kind)} on the heartbeat topic")
        heartbeat_time = header.get("time")
        if not isinstance(heartbeat_time, int | float):
            raise WireError("heartbeat without a time")
        pair_epoch = header.get("n", 0)
        if not _whole(pair_epoch):
            raise WireError(f"heartbeat's pair epoch {_shown.repr(pair_epoch)} is not whole")
        return Heartbeat(
            _str(header, "epoch"),
            float(heartbeat_time),
            bool(header.get("a", True)),
            cast(int, pair_epoch),
        )
    channel_id = channel_of(topic_frame)
    if kind == "m":
        if len(frames) != 3:
            raise WireError(f"message has {len(frames)} frames, expected 3")
        return Message(
            channel_id,
            _id(header.get("id")),
            _optional_id(header.get("prev")),
            _optional_id(header.get("floor")),
            _content_type(header.get("t")),
            _bytes(frames[2]),
            _optional_event(header.get("e")),
        )
    if kind == "s":
        return Sync(channel_id, bool(header.get("exists")), _optional_id(header.get("last")))
    if kind == "d":
        return Deleted(channel_id)
    raise WireError(f"unknown event kind {_shown.repr(kind)}")


# -- control: edges to the broker and back -----------------------------------


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the publisher location reports about a channel.

    `requested` is the Unix time of the last subscriber request anywhere in
    the cluster, None when never requested.
    """

    messages: int
    requested: float | None
    subscribers: int
    last: MessageId | None


@dataclass(frozen=True, slots=True)
class Limits:
    """The history bounds the broker applies, sent to edges so both agree."""

    max_messages: int
    min_messages: int
    message_timeout: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    channel_id: str
    exists: bool
    last: MessageId | None
    floor: MessageId | None
    limits: Limits
    messages: tuple[Message, ...]


# Requests an edge sends; the broker answers every one but "presence".
SNAPSHOT = "snapshot"
PUBLISH = "publish"
CREATE = "create"
INFO = "info"
DELETE = "delete"
PRESENCE = "presence"
REQUEST_KINDS = frozenset({SNAPSHOT, PUBLISH, CREATE, INFO, DELETE, PRESENCE})


@dataclass(frozen=True, slots=True)
class Request:
    kind: str
    request_id: int
    channel_id: str
    content_type: str | None = None
    body: bytes = b""
    create: bool = False
    # A publish's EventSource event name, or None.
    event: str | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """An edge's held subscribers and latest request time, per channel it reports.

    An edge sends the channels whose figures changed; a channel with zero
    subscribers is reported once and then forgotten by the broker.
    """

    counts: dict[str, tuple[int, float]]
    # A full report replaces everything the broker held for this edge.
    full: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    found: bool
    info: ChannelInfo | None = None
    snapshot: Snapshot | None = None
    message_id: MessageId | None = None


def encode_request(request: Request) -> list[bytes]:
    header = {
        "k": request.kind,
        "r": request.request_id,
        "c": request.channel_id,
        "t": request.content_type,
        "create": request.create,
    }
    if request.kind == PUBLISH:
        if request.event is not None:
            header["e"] = request.event
        return [_pack(header), request.body]
    return [_pack(header)]


def encode_presence(presence: Presence) -> list[bytes]:
    return [_pack({"k": PRESENCE, "counts": presence.counts, "full": presence.full})]


def decode_request(frames: Sequence[bytes]) -> Request | Presence:
    if not frames:
        raise WireError("empty control request")
    header = _unpack(_bytes(frames[0]))
    kind = header.get("k")
    # A map or an array cannot be looked up in a set: TypeError, not WireError.
    if not isinstance(kind, str) or kind not in REQUEST_KINDS:
        raise WireError(f"unknown request kind {_shown.repr(kind)}")
    if kind == PRESENCE:
        counts = header.get("counts")
        if not isinstance(counts, dict):
            raise WireError("presence without counts")
        checked: dict[str, tuple[int, float]] = {}
        for channel_id, figures in counts.items():
            if (
                not isinstance(channel_id, str)
                or channel_id_problem(channel_id)
                or not isinstance(figures, list | tuple)
                or len(figures) != 2
                or not isinstance(figures[0], int)
                or not isinstance(figures[1], int | float)
                # Channel info subtracts it from the time now, and nothing exceeds infinity.
                or not math.isfinite(figures[1])
            ):
                raise WireError(f"bad presence entry for {_shown.repr(channel_id)}")
            checked[channel_id] = (figures[0], float(figures[1]))
        return Presence(checked, bool(header.get("full")))
    request_id = header.get("r")
    if not isinstance(request_id, int):
        raise WireError("request without an integer id")
    expected_frames = 2 if kind == PUBLISH else 1
    if len(frames) != expected_frames:
        raise WireError(f"{kind} request has {len(frames)} frames, expected {expected_frames}")
    return Request(
        kind,
        request_id,
        _channel(header),
        _content_type(header.get("t")),
        _bytes(frames[1]) if kind == PUBLISH else b"",
        bool(header.get("create")),
        _optional_event(header.get("e")) if kind == PUBLISH else None,
    )


def _info_map(info: ChannelInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"n": info.messages, "req": info.requested, "s": info.subscribers, "last": info.last}


def encode_reply(reply: Reply) -> list[bytes]:
    header: dict[str, Any] = {
        "r": reply.request_id,
        "found": reply.found,
        "info": _info_map(reply.info),
        "id": reply.message_id,
    }
    bodies: list[bytes] = []
    snapshot = reply.snapshot
    if snapshot is not None:
        header["snap"] = {
            "c": snapshot.channel_id,
            "exists": snapshot.exists,
            "last": snapshot.last,
            "floor": snapshot.floor,
            "limits": [
                snapshot.limits.max_messages,
                snapshot.limits.min_messages,
                snapshot.limits.message_timeout,
            ],
            # A fourth entry only for a message with an event name.
            "ids": [
                (m.id, m.prev, m.content_type)
                if m.event is None
                else (m.id, m.prev, m.content_type, m.event)
                for m in snapshot.messages
            ],
        }
        bodies = [m.body for m in snapshot.messages]
    return [_pack(header), *bodies]


def _decode_info(value: Any) -> ChannelInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WireError("channel info is not a map")
    try:
        requested = None if value["req"] is None else float(value["req"])
        if requested is not None and not math.isfinite(requested):
            raise WireError(f"channel info requested at {requested}")
        return ChannelInfo(
            int(value["n"]),
            requested,
            int(value["s"]),
            _optional_id(value["last"]),
        )
    # int() of an infinite float raises OverflowError.
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"bad channel info: {exc}") from None


def _content_type(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WireError(f"content type is {type(value).__name__}, expected str or nil")
    problem = content_type_problem(value)
    if problem:
        raise WireError(problem)
    return value


def _event(value: Any) -> str:
    if not isinstance(value, str):
        raise WireError(f"event name is {type(value).__name__}, expected str")
    problem = event_name_problem(value)
    if problem:
        raise WireError(problem)
    return value


def _optional_event(value: Any) -> str | None:
    return None if value is None else _event(value)


def _snapshot_message(channel_id: str, floor: MessageId | None, entry: Any, body: bytes) -> Message:
    if type(entry) not in (list, tuple) or not 3 <= len(entry) <= 4:
        raise WireError(f"snapshot entry {_shown.repr(entry)} is not [id, prev, type(, event)]")
    event = _event(entry[3]) if len(entry) == 4 else None
    return Message(
        channel_id,
        _id(entry[0]),
        _optional_id(entry[1]),
        floor,
        _content_type(entry[2]),
        _bytes(body),
        event,
    )


def _decode_snapshot(value: Any, bodies: Sequence[bytes]) -> Snapshot:
    if not isinstance(value, dict):
        raise WireError("snapshot is not a map")
    try:
        channel_id = value["c"]
        if not isinstance(channel_id, str):
            raise WireError(f"snapshot of channel {_shown.repr(channel_id)}")
        entries = value["ids"]
        max_messages, min_messages, message_timeout = value["limits"]
        if len(entries) != len(bodies):
            raise WireError(f"snapshot lists {len(entries)} messages but carries {len(bodies)}")
        floor = _optional_id(value["floor"])
        messages = tuple(
            _snapshot_message(channel_id, floor, entry, body)
            for entry, body in zip(entries, bodies, strict=True)
        )
        return Snapshot(
            channel_id,
            bool(value["exists"]),
            _optional_id(value["last"]),
            floor,
            _limits(int(max_messages), int(min_messages), float(message_timeout)),
            messages,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"bad snapshot: {exc}") from None


@functools.lru_cache(maxsize=8)
def _limits(max_messages: int, min_messages: int, message_timeout: float) -> Limits:
    # Every snapshot carries the same few limits: an edge keeps one object of each,
    # not one per channel it follows.
    return Limits(max_messages, min_messages, message_timeout)


def decode_reply(frames: Sequence[bytes]) -> Reply:
    if not frames:
        raise WireError("empty control reply")
    header = _unpack(_bytes(frames[0]))
    request_id = header.get("r")
    if not isinstance(request_id, int):
        raise WireError("reply without an integer request id")
    snap = header.get("snap")
    return Reply(
        request_id,
        bool(header.get("found")),
        _decode_info(header.get("info")),
        None if snap is None else _decode_snapshot(snap, frames[1:]),
        _optional_id(header.get("id")),
    )


# -- the standby link: broker to broker ----------------------------------------
#
# Each broker of a pair sends everything it has to say to its peer on one
# DEALER, connected to the peer's ROUTER: `[header, *record frames]`. Every
# header carries the sender's role, state, epoch and whether it holds a
# complete replica, so each message is also a heartbeat (`broker.pair`);
# an active sender's also says whether it counts its peer as its standby.

PEER_HEARTBEAT = "hb"
PEER_BATCH = "batch"  # records after batch `n - 1`, as batch `n`
PEER_COPY = "copy"  # the whole state, standing at batch `n`
PEER_CONFIRM = "confirm"  # every batch up to `n` applied
PEER_WANT_COPY = "want"
PEER_KINDS = (PEER_HEARTBEAT, PEER_BATCH, PEER_COPY, PEER_CONFIRM, PEER_WANT_COPY)
PEER_ROLES = ("primary", "backup")
PEER_STATES = ("waiting", "active", "passive")


@dataclass(frozen=True, slots=True)
class PeerMessage:
    kind: str
    role: str
    state: str
    epoch: int
    synced: bool
    number: int = 0
    # A confirmation's: the epoch of the active broker whose batches it confirms.
    follows: int = 0
    records: tuple[bytes, ...] = ()
    # An active broker's: whether its peer's replica still counts (joined or
    # copying). A peer that never says so (an older release) is taken as counting.
    counts_peer: bool = True


def encode_peer(message: PeerMessage) -> list[bytes]:
    header = {
        "v": VERSION,
        "k": message.kind,
        "r": message.role,
        "s": message.state,
        "e": message.epoch,
        "y": message.synced,
        "n": message.number,
        "f": message.follows,
        "c": message.counts_peer,
    }
    return [_pack(header), *message.records]


def decode_peer(frames: Sequence[bytes]) -> PeerMessage:
    if not frames:
        raise WireError("peer message has no frames")
    header = _unpack(_bytes(frames[0]))
    kind, role, state = header.get("k"), header.get("r"), header.get("s")
    epoch, number, follows = header.get("e"), header.get("n"), header.get("f", 0)
    if kind not in PEER_KINDS or role not in PEER_ROLES or state not in PEER_STATES:
        raise WireError(f"peer header {_shown.repr(header)} names no kind, role and state")
    if not _whole(epoch) or not _whole(number) or not _whole(follows):
        raise WireError(f"peer header {_shown.repr(header)} has no epoch and number")
    return PeerMessage(
        cast(str, kind),
        cast(str, role),
        cast(str, state),
        cast(int, epoch),
        bool(header.get("y")),
        cast(int, number),
        cast(int, follows),
        tuple(_bytes(frame) for frame in frames[1:]),
        bool(header.get("c", True)),
    )
