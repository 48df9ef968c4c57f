"""Exactly-once ingress: the broker's rules per publisher, the Publish and Ack frames, and the
broker applying both on its ROUTER, across a restart with a history file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from broker import wire
from broker.publishers import FORGET_AFTER, Publishers, Verdict
from tests.processes import eventually
from tests.test_send_update import ThreadBroker, snapshot

A = b"publisher-a"
B = b"publisher-b"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the rules ---------------------------------------------------------------


def test_an_unknown_publisher_starts_at_the_message_it_marks_as_its_oldest() -> None:
    publishers = Publishers()
    assert publishers.last(A) is None
    assert publishers.admit(A, 0, base=0) is Verdict.NEW
    # After a restart without a history file the broker knows nobody, and a
    # publisher resends from its oldest unacknowledged message.
    assert publishers.admit(B, 41, base=41) is Verdict.NEW
    assert publishers.last(A) == 0
    assert publishers.last(B) == 41


def test_an_unknown_publisher_writing_ahead_of_its_oldest_is_refused_as_a_gap() -> None:
    """40 and 41 were written to a broker that died; 42 reached the new one first."""
    publishers = Publishers()
    assert publishers.admit(A, 42, base=40) is Verdict.GAP
    assert publishers.last(A) is None
    assert publishers.admit(A, 40, base=40) is Verdict.NEW
    assert publishers.admit(A, 41, base=40) is Verdict.NEW
    assert publishers.admit(A, 42, base=40) is Verdict.NEW


def test_a_publish_without_a_base_starts_an_unknown_publisher_anywhere() -> None:
    """The first format carries no base: such a sender is taken where it is, as before."""
    assert Publishers().admit(A, 41) is Verdict.NEW


def test_the_next_number_is_new_a_number_held_is_a_repeat_a_skip_is_a_gap() -> None:
    publishers = Publishers()
    for seq in range(3):
        assert publishers.admit(A, seq) is Verdict.NEW
    assert publishers.admit(A, 2) is Verdict.REPEAT
    assert publishers.admit(A, 0) is Verdict.REPEAT
    assert publishers.admit(A, 5) is Verdict.GAP
    assert publishers.last(A) == 2  # neither a repeat nor a gap moves it
    assert publishers.admit(A, 3) is Verdict.NEW
    assert publishers.last(A) == 3


def test_publishers_are_counted_apart() -> None:
    publishers = Publishers()
    assert publishers.admit(A, 0) is Verdict.NEW
    assert publishers.admit(B, 0) is Verdict.NEW
    assert publishers.admit(A, 1) is Verdict.NEW
    assert publishers.admit(B, 0) is Verdict.REPEAT
    assert dict(publishers.items()) == {A: 1, B: 0}


def test_restore_only_ever_raises_a_number() -> None:
    publishers = Publishers()
    publishers.restore(A, 7)
    publishers.restore(A, 3)  # an older record replayed later changes nothing
    assert publishers.last(A) == 7
    assert publishers.admit(A, 7) is Verdict.REPEAT
    assert publishers.admit(A, 9) is Verdict.GAP
    assert publishers.admit(A, 8) is Verdict.NEW


def test_a_publisher_silent_for_an_hour_is_forgotten_and_any_message_refreshes_it() -> None:
    clock = Clock(10_000.0)
    publishers = Publishers(clock)
    publishers.admit(A, 0)
    publishers.restore(B, 5)
    clock.now += FORGET_AFTER - 1
    publishers.admit(A, 0)  # a repeat still counts as a sign of life
    clock.now += 2
    publishers.forget_silent()
    assert publishers.last(A) == 0
    assert publishers.last(B) is None
    assert dict(publishers.items()) == {A: 0}
    assert publishers.admit(B, 6) is Verdict.NEW  # forgotten: starts wherever it is


# -- the frames --------------------------------------------------------------


def test_a_publish_carries_its_publisher_and_number_in_one_frame() -> None:
    frames = wire.encode_publish("news", b'{"a":1}', "application/json", A, 12)
    assert len(frames) == 1
    assert wire.decode_publish(frames) == wire.Publish(
        "news", "application/json", b'{"a":1}', A, 12
    )
    no_type = wire.decode_publish(wire.encode_publish("news", b"", None, B, 0))
    assert (no_type.content_type, no_type.body, no_type.seq) == (None, b"", 0)


def test_the_packer_a_sender_keeps_writes_what_encode_publish_writes() -> None:
    pack = wire.PublishPacker()
    for seq, body in enumerate([b"", b"x" * 70_000, b'{"a":1}']):
        frame = pack("news", body, "application/json", A, seq, 0)
        assert [frame] == wire.encode_publish("news", body, "application/json", A, seq, 0)
        assert wire.decode_publish([frame]).base == 0


def test_publish_frames_also_decode_from_pyzmq_frame_objects() -> None:
    frames = [zmq.Frame(f) for f in wire.encode_publish("c", b"body", None, A, 3)]
    assert wire.decode_publish(frames) == wire.Publish("c", None, b"body", A, 3)  # type: ignore[arg-type]


def header(**fields: object) -> bytes:
    packed: bytes = msgpack.packb({"v": wire.VERSION, **fields}, use_bin_type=True)
    return packed


def first_format(
    channel: str, body: bytes, content_type: str | None, publisher: bytes, seq: int
) -> list[bytes]:
    """A publish as senders before the one-frame format wrote it: a header map, then the body."""
    return [header(c=channel, t=content_type, p=publisher, s=seq), body]


def test_a_publish_in_the_first_format_still_decodes() -> None:
    frames = first_format("news", b'{"a":1}', "application/json", A, 12)
    assert wire.decode_publish(frames) == wire.Publish(
        "news", "application/json", b'{"a":1}', A, 12
    )


def fields(*values: object) -> bytes:
    packed: bytes = msgpack.packb(list(values), use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("frames", "problem"),
    [
        ([header(c="news", t=None, s=0), b""], "without a publisher id"),
        ([header(c="news", t=None, p=b"", s=0), b""], "without a publisher id"),
        ([header(c="news", t=None, p="text", s=0), b""], "without a publisher id"),
        ([header(c="news", t=None, p=A), b""], "sequence number None"),
        ([header(c="news", t=None, p=A, s=-1), b""], "sequence number -1"),
        ([header(c="news", t=None, p=A, s=True), b""], "sequence number True"),
        ([header(c="news", t=None, p=A, s=1.5), b""], "sequence number 1.5"),
        ([header(c="news", t=None, p=A, s="1"), b""], "sequence number '1'"),
        ([header(c="", t=None, p=A, s=0), b""], "channel id is empty"),
        ([header(c=7, t=None, p=A, s=0), b""], "channel id is int"),
        ([header(c="news", t=3, p=A, s=0), b""], "content type is int"),
        ([header(c="news", t=None, p=A, s=0), b"", b""], "3 frames, expected 1"),
        ([], "0 frames, expected 1"),
        ([b"\xc1garbage", b""], "not msgpack"),
        ([b"\xc1garbage"], "not msgpack"),
        ([header(c="news", t=None, p=A, s=0)], "not an array of 6 or 7 fields"),
        ([fields(wire.VERSION, A, 0, "news", None)], "not an array of 6 or 7 fields"),
        ([fields(wire.VERSION, A, 0, "news", None, b"", 1, 2)], "not an array of 6 or 7"),
        ([fields(wire.VERSION, A, 3, "news", None, b"", 4)], "base 4 is not"),
        ([fields(wire.VERSION, A, 3, "news", None, b"", -1)], "base -1 is not"),
        ([fields(wire.VERSION, A, 3, "news", None, b"", "2")], "base '2' is not"),
        ([fields(wire.VERSION + 1, A, 0, "news", None, b"")], "wire version 2"),
        ([fields(wire.VERSION, b"", 0, "news", None, b"")], "without a publisher id"),
        ([fields(wire.VERSION, "text", 0, "news", None, b"")], "without a publisher id"),
        ([fields(wire.VERSION, A, -1, "news", None, b"")], "sequence number -1"),
        ([fields(wire.VERSION, A, True, "news", None, b"")], "sequence number True"),
        ([fields(wire.VERSION, A, 0, "", None, b"")], "channel id is empty"),
        ([fields(wire.VERSION, A, 0, "a\0b", None, b"")], "channel id contains NUL"),
        ([fields(wire.VERSION, A, 0, b"news", None, b"")], "channel id is bytes"),
        ([fields(wire.VERSION, A, 0, "news", None, "text")], "body is str"),
    ],
)
def test_a_bad_publish_is_a_wire_error(frames: list[bytes], problem: str) -> None:
    with pytest.raises(wire.WireError, match=problem):
        wire.decode_publish(frames)


@pytest.mark.parametrize("gap", [False, True])
def test_an_ack_round_trips_in_one_frame(gap: bool) -> None:
    frames = wire.encode_ack(wire.Ack(A, 41, gap))
    assert len(frames) == 1
    assert wire.decode_ack(frames) == wire.Ack(A, 41, gap)


def test_an_ack_is_not_a_gap_unless_it_says_so() -> None:
    assert wire.Ack(A, 0).gap is False
    assert wire.decode_ack([header(k="ack", p=A, s=3)]) == wire.Ack(A, 3, False)


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [header(k="ack", p=A, s=1), b"extra"],
        [header(k="m", p=A, s=1)],
        [header(p=A, s=1)],
        [header(k="ack", s=1)],
        [header(k="ack", p="text", s=1)],
        [header(k="ack", p=A, s="1")],
        [wire.encode_publish("news", b"", None, A, 0)[0]],
        [b"not msgpack \xc1"],
        [msgpack.packb({"k": "ack", "p": A, "s": 1, "v": wire.VERSION + 1})],
    ],
)
def test_anything_but_an_ack_is_a_wire_error(frames: list[bytes]) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_ack(frames)


# -- the broker applying them ------------------------------------------------


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class RawPublisher:
    """A DEALER speaking the ingress wire by hand, numbers chosen by the test."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, channel: str, seq: int, publisher: bytes = A, base: int | None = None) -> None:
        body = f"{publisher.decode()}:{seq}".encode()
        self.socket.send_multipart(wire.encode_publish(channel, body, None, publisher, seq, base))

    def ack(self, timeout: float = 5.0) -> wire.Ack:
        assert self.socket.poll(round(timeout * 1000)), f"no ack within {timeout} s"
        return wire.decode_ack(self.socket.recv_multipart())

    def ack_for(self, seq: int) -> wire.Ack:
        """The first ack that covers `seq`: acks are coalesced, so some are skipped."""
        while True:
            ack = self.ack()
            if ack.seq >= seq:
                return ack


@pytest.fixture
def connect(context: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[[str], RawPublisher]]:
    made: list[RawPublisher] = []

    def make(endpoint: str) -> RawPublisher:
        made.append(RawPublisher(context, endpoint))
        return made[-1]

    yield make
    for raw in made:
        raw.socket.close(linger=0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ThreadBroker]:
    started = ThreadBroker(tmp_path / "history")
    started.start()
    yield started
    started.stop()


def bodies(
    context: zmq.Context[zmq.Socket[bytes]], broker: ThreadBroker, channel: str
) -> list[bytes]:
    return [m.body for m in snapshot(context, broker.endpoints["control"], channel)]


def test_the_broker_drops_repeats_refuses_gaps_and_acknowledges_what_it_holds(
    context: zmq.Context[zmq.Socket[bytes]],
    broker: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    raw = connect(broker.ingress)
    raw.send("rules", 0)
    assert raw.ack() == wire.Ack(A, 0)
    raw.send("rules", 1)
    assert raw.ack() == wire.Ack(A, 1)
    raw.send("rules", 1)  # a repeat: dropped, acknowledged
    assert raw.ack() == wire.Ack(A, 1)
    raw.send("rules", 3)  # 2 never came: refused, and the ack says where to resume
    assert raw.ack() == wire.Ack(A, 1, gap=True)
    raw.send("rules", 2)
    raw.send("rules", 3)
    assert raw.ack_for(3) == wire.Ack(A, 3)
    raw.send("rules", 0, publisher=B)  # another publisher, counted apart
    assert raw.ack() == wire.Ack(B, 0)
    assert bodies(context, broker, "rules") == [
        b"publisher-a:0",
        b"publisher-a:1",
        b"publisher-a:2",
        b"publisher-a:3",
        b"publisher-b:0",
    ]
    assert broker.broker is not None
    counters = broker.broker.counters
    assert (counters["ingress_repeats"], counters["ingress_gaps"]) == (1, 1)


def test_a_broker_restarted_from_its_history_still_drops_what_it_held(
    context: zmq.Context[zmq.Socket[bytes]],
    broker: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    raw = connect(broker.ingress)
    for seq in range(3):
        raw.send("kept", seq)
    assert raw.ack_for(2) == wire.Ack(A, 2)
    broker.stop()
    broker.start()
    # As a publisher does after a reconnection whose acks it missed: all again.
    for seq in range(5):
        raw.send("kept", seq)
    assert raw.ack_for(4) == wire.Ack(A, 4)
    assert bodies(context, broker, "kept") == [f"publisher-a:{n}".encode() for n in range(5)]
    assert broker.broker is not None
    assert broker.broker.counters["ingress_repeats"] == 3


@pytest.fixture
def forgetful() -> Iterator[ThreadBroker]:
    """A broker without a history file: restarted, it knows no publisher."""
    started = ThreadBroker()
    started.start()
    yield started
    started.stop()


def test_a_broker_without_history_starts_a_publisher_wherever_it_resumes(
    context: zmq.Context[zmq.Socket[bytes]],
    forgetful: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    raw = connect(forgetful.ingress)
    raw.send("fresh", 0)
    assert raw.ack() == wire.Ack(A, 0)
    forgetful.stop()
    forgetful.start()
    raw.send("fresh", 1)
    eventually(lambda: bodies(context, forgetful, "fresh") == [b"publisher-a:1"])
    assert raw.ack_for(1) == wire.Ack(A, 1)


def test_a_broker_without_history_refuses_a_publisher_resuming_ahead_of_its_oldest(
    context: zmq.Context[zmq.Socket[bytes]],
    forgetful: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    """Messages 3 and 4 died with the old broker; 5 must not be sequenced before them."""
    raw = connect(forgetful.ingress)
    raw.send("resumed", 5, base=3)
    assert raw.ack() == wire.Ack(A, wire.UNKNOWN, gap=True)
    for seq in (3, 4, 5):
        raw.send("resumed", seq, base=3)
    assert raw.ack_for(5) == wire.Ack(A, 5)
    assert bodies(context, forgetful, "resumed") == [f"publisher-a:{n}".encode() for n in (3, 4, 5)]


def test_the_broker_still_takes_publishes_in_the_first_format(
    context: zmq.Context[zmq.Socket[bytes]],
    broker: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    raw = connect(broker.ingress)
    raw.socket.send_multipart(first_format("old", b"first format", None, A, 0))
    assert raw.ack() == wire.Ack(A, 0)
    raw.send("old", 1)
    raw.socket.send_multipart(first_format("old", b"first format again", None, A, 1))
    assert raw.ack_for(1) == wire.Ack(A, 1)
    assert bodies(context, broker, "old") == [b"first format", b"publisher-a:1"]
