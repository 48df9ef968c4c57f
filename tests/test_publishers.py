"""Exactly-once ingress: the broker's rules per publisher, the Publish, Ack and Published frames,
and the broker applying them on its ROUTER, across a restart with a history file."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgpack
import pytest
import zmq

from broker import wire
from broker.publishers import FORGET_AFTER, Publishers, Verdict
from tests.brokers import ThreadBroker, held
from tests.clock import Clock
from tests.processes import eventually

A = b"publisher-a"
B = b"publisher-b"


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


def test_the_next_number_is_new_a_number_held_is_a_repeat_a_skip_is_a_gap() -> None:
    publishers = Publishers()
    for seq in range(3):
        assert publishers.admit(A, seq, base=0) is Verdict.NEW
    assert publishers.admit(A, 2, base=0) is Verdict.REPEAT
    assert publishers.admit(A, 0, base=0) is Verdict.REPEAT
    assert publishers.admit(A, 5, base=0) is Verdict.GAP
    assert publishers.last(A) == 2  # neither a repeat nor a gap moves it
    assert publishers.admit(A, 3, base=0) is Verdict.NEW
    assert publishers.last(A) == 3


def test_a_known_publisher_is_judged_by_its_last_number_whatever_base_it_names() -> None:
    publishers = Publishers()
    assert publishers.admit(A, 0, base=0) is Verdict.NEW
    assert publishers.admit(A, 1, base=1) is Verdict.NEW
    assert publishers.admit(A, 2, base=0) is Verdict.NEW
    assert publishers.admit(A, 4, base=4) is Verdict.GAP


def test_each_publisher_is_numbered_on_its_own() -> None:
    publishers = Publishers()
    assert publishers.admit(A, 0, base=0) is Verdict.NEW
    assert publishers.admit(B, 0, base=0) is Verdict.NEW
    assert publishers.admit(A, 1, base=0) is Verdict.NEW
    assert publishers.admit(B, 0, base=0) is Verdict.REPEAT
    assert dict(publishers.items()) == {A: 1, B: 0}


def test_a_restored_number_replayed_after_a_newer_one_changes_nothing() -> None:
    publishers = Publishers()
    publishers.restore(A, 7)
    publishers.restore(A, 3)  # an older record of the history file, replayed later
    assert publishers.last(A) == 7
    assert publishers.admit(A, 7, base=0) is Verdict.REPEAT
    assert publishers.admit(A, 9, base=0) is Verdict.GAP
    assert publishers.admit(A, 8, base=0) is Verdict.NEW


def test_a_publisher_silent_for_an_hour_is_forgotten_and_any_message_refreshes_it() -> None:
    clock = Clock(10_000.0)
    publishers = Publishers(clock)
    publishers.admit(A, 0, base=0)
    publishers.restore(B, 5)
    clock.now += FORGET_AFTER - 1
    publishers.admit(A, 0, base=0)  # a repeat still counts as a sign of life
    clock.now += 2
    publishers.forget_silent()
    assert publishers.last(A) == 0
    assert publishers.last(B) is None
    assert dict(publishers.items()) == {A: 0}
    # Forgotten, B is unknown again: it starts only at the message it marks as its oldest.
    assert publishers.admit(B, 7, base=6) is Verdict.GAP
    assert publishers.admit(B, 6, base=6) is Verdict.NEW


# -- the frames --------------------------------------------------------------


def test_a_publish_carries_its_publisher_number_and_oldest_in_one_frame() -> None:
    pack = wire.PublishPacker()
    frame = pack("news", b'{"a":1}', "application/json", A, 12, 10)
    assert wire.decode_publish([frame]) == wire.Publish(
        "news", "application/json", b'{"a":1}', A, 12, 10, None, False
    )
    no_type = wire.decode_publish([pack("news", b"", None, B, 0, 0)])
    assert no_type == wire.Publish("news", None, b"", B, 0, 0)


def test_a_publish_carries_its_idempotency_key_and_whether_it_wants_an_answer() -> None:
    frame = wire.PublishPacker()("news", b"x", None, A, 3, 3, "retry-7", True)
    published = wire.decode_publish([frame])
    assert (published.key, published.reply) == ("retry-7", True)
    # send_update's messages: every field is there, saying no key and no answer.
    assert msgpack.unpackb(wire.PublishPacker()("news", b"x", None, A, 0, 0))[-2:] == [None, False]


def test_frames_from_one_packer_stay_what_they_were_when_it_packs_more() -> None:
    """The packer reuses one buffer: each frame it returns must own its bytes."""
    pack = wire.PublishPacker()
    bodies = [b"x" * 70_000, b"", b'{"a":1}']
    frames = [pack("news", body, "application/json", A, seq, 0) for seq, body in enumerate(bodies)]
    assert [wire.decode_publish([frame]) for frame in frames] == [
        wire.Publish("news", "application/json", body, A, seq, 0) for seq, body in enumerate(bodies)
    ]


def test_publish_frames_also_decode_from_pyzmq_frame_objects() -> None:
    frames = [zmq.Frame(wire.PublishPacker()("c", b"body", None, A, 3, 2))]
    assert wire.decode_publish(frames) == wire.Publish("c", None, b"body", A, 3, 2)  # type: ignore[arg-type]


def header(**fields: object) -> bytes:
    packed: bytes = msgpack.packb({"v": wire.VERSION, **fields}, use_bin_type=True)
    return packed


def fields(*values: object) -> bytes:
    packed: bytes = msgpack.packb(list(values), use_bin_type=True)
    return packed


NO_EVENT = object()


def publish(
    publisher: object = A,
    seq: object = 0,
    channel_id: object = "news",
    content_type: object = None,
    body: object = b"",
    base: object = 0,
    version: object = wire.VERSION,
    key: object = None,
    reply: object = False,
    event: object = NO_EVENT,
) -> bytes:
    """A publish frame with any field as the test wants it, however wrong; a tenth
    field (the event name) when `event` is given."""
    named = () if event is NO_EVENT else (event,)
    return fields(version, publisher, seq, channel_id, content_type, body, base, key, reply, *named)


@pytest.mark.parametrize(
    ("frames", "problem"),
    [
        ([publish(publisher=None)], "without a publisher id"),
        ([publish(publisher=b"")], "without a publisher id"),
        ([publish(publisher="text")], "without a publisher id"),
        ([publish(seq=None)], "sequence number None"),
        ([publish(seq=-1)], "sequence number -1"),
        ([publish(seq=True)], "sequence number True"),
        ([publish(seq=1.5)], "sequence number 1.5"),
        ([publish(seq="1")], "sequence number '1'"),
        ([publish(channel_id="")], "channel id is empty"),
        ([publish(channel_id=7)], "channel id is int"),
        ([publish(channel_id="a\0b")], "channel id contains NUL"),
        ([publish(channel_id=b"news")], "channel id is bytes"),
        ([publish(content_type=3)], "content type is int"),
        ([publish(body="text")], "body is str"),
        ([publish(seq=3, base=4)], "base 4 is not"),
        ([publish(seq=3, base=-1)], "base -1 is not"),
        ([publish(seq=3, base="2")], "base '2' is not"),
        ([publish(seq=3, base=None)], "base None is not"),
        ([publish(seq=3, base=False)], "base False is not"),
        ([publish(version=wire.VERSION + 1)], "wire version 2"),
        ([publish(key=7)], "idempotency key is int"),
        ([publish(key=b"k")], "idempotency key is bytes"),
        ([publish(key="")], "idempotency key is empty"),
        ([publish(key="k" * (wire.MAX_KEY_BYTES + 1))], "longer than 255 bytes"),
        ([publish(reply=1)], "reply flag 1 is not"),
        ([publish(reply=None)], "reply flag None is not"),
        # A header and a body, or seven fields without a key and a reply flag:
        # formats that never shipped, or that this one replaced.
        ([header(c="news", t=None, p=A, s=0), b""], "2 frames, expected 1"),
        ([header(c="news", t=None, p=A, s=0)], "not an array of 9 or 10 fields"),
        ([fields(wire.VERSION, A, 0, "news", None, b"", 0)], "not an array of 9 or 10 fields"),
        ([fields(wire.VERSION, A, 0, "news", None, b"", 0, None, False, "e", 0)], "9 or 10"),
        # The tenth field is the event name, there only when the publisher named one.
        ([publish(event=None)], "the event name, that is nil"),
        ([publish(event=7)], "event name is int"),
        ([publish(event="")], "is not 1 to 64"),
        ([publish(event="a b")], "is not 1 to 64"),
        ([publish(event="x" * 65)], "is not 1 to 64"),
        ([publish(event="tick\r\ndata: forged")], "is not 1 to 64"),
        ([publish(event=wire.MISSED_EVENT)], "is reserved"),
        ([publish(event="message")], "is reserved"),
        ([publish(), publish()], "2 frames, expected 1"),
        ([], "0 frames, expected 1"),
        ([b"\xc1garbage"], "not msgpack"),
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


def test_a_publish_answer_round_trips_with_the_channel_info() -> None:
    info = wire.ChannelInfo(3, 1_700_000_000.5, 2, wire.MessageId(1_700_000_001, 4))
    frames = wire.encode_published(wire.Published(A, 9, info))
    assert len(frames) == 1
    assert wire.decode_answer(frames) == wire.Published(A, 9, info)
    assert wire.decode_answer(wire.encode_ack(wire.Ack(A, 9))) == wire.Ack(A, 9)


@pytest.mark.parametrize(
    "answer",
    [
        wire.Published(A, 9, wire.ChannelInfo(3, None, 0, None)),
        wire.Ack(A, 9, True, 2),
        wire.NotActive(4),
    ],
)
def test_every_kind_of_ingress_answer_encodes_to_what_decodes_back_to_it(
    answer: wire.Answer,
) -> None:
    # The local edge is handed these values without their frames: the same values.
    assert wire.decode_answer(wire.encode_answer(answer)) == answer


@pytest.mark.parametrize(
    "event",
    [
        wire.Message(
            "news", wire.MessageId(5, 1), wire.MessageId(5, 0), None, "text/plain", b"x", "quote"
        ),
        wire.Sync("news", True, wire.MessageId(5, 1)),
        wire.Sync("gone", False, None),
        wire.Deleted("news"),
        wire.Heartbeat("epoch", 1.5, True, 0),
        wire.Heartbeat("epoch", 1.5, False, 3),
    ],
)
def test_every_kind_of_event_encodes_on_its_topic_to_what_decodes_back_to_it(
    event: wire.Event,
) -> None:
    # The local edge is handed these values; other edges get the frames.
    frames = wire.encode_event(event)
    assert frames[0] == wire.event_topic(event)
    assert wire.decode_event(frames) == event


@pytest.mark.parametrize(
    "publish",
    [
        wire.Publish("news", None, b"x", A, 0, 0),
        wire.Publish("news", "text/plain", b"\x00body", A, 7, 3, "key-7", True, "quote"),
    ],
)
def test_a_publish_the_outbox_keeps_encodes_to_the_frame_that_decodes_back_to_it(
    publish: wire.Publish,
) -> None:
    # Sockets get the frame; the edge in the broker's process hands the value itself.
    assert wire.decode_publish([wire.PublishPacker().encode(publish)]) == publish


@pytest.mark.parametrize(
    "frames",
    [
        [fields(wire.VERSION, A, 1, 0, None, 0)],
        [fields(wire.VERSION + 1, A, 1, 0, None, 0, None)],
        [fields(wire.VERSION, "text", 1, 0, None, 0, None)],
        [fields(wire.VERSION, A, True, 0, None, 0, None)],
        [fields(wire.VERSION, A, 1, "0", None, 0, None)],
        [fields(wire.VERSION, A, 1, 0, "yesterday", 0, None)],
        [fields(wire.VERSION, A, 1, 0, None, 0, [1, "x"])],
        [header(k="pub", p=A, s=1)],
        [header(k="ack", p=A, s=1.5)],
        [fields(wire.VERSION, A, 1, 0, None, 0, None), b"extra"],
        [b"\xc1"],
    ],
    ids=[
        "six-fields",
        "other-version",
        "text-publisher",
        "bool-number",
        "text-count",
        "text-time",
        "bad-id",
        "map-not-ack",
        "fractional-ack",
        "two-frames",
        "not-msgpack",
    ],
)
def test_a_bad_ingress_answer_is_a_wire_error(frames: list[bytes]) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_answer(frames)


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
        [publish()],
        wire.encode_published(wire.Published(A, 1, wire.ChannelInfo(0, None, 0, None))),
        [b"not msgpack \xc1"],
        [msgpack.packb({"k": "ack", "p": A, "s": 1, "v": wire.VERSION + 1})],
    ],
)
def test_anything_but_an_ack_is_a_wire_error(frames: list[bytes]) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_ack(frames)


# -- the broker applying them ------------------------------------------------


class RawPublisher:
    """A DEALER speaking the ingress wire by hand, numbers chosen by the test."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.pack = wire.PublishPacker()

    def send(
        self,
        channel: str,
        seq: int,
        publisher: bytes = A,
        base: int = 0,
        key: str | None = None,
        reply: bool = False,
    ) -> None:
        body = f"{publisher.decode()}:{seq}".encode()
        self.socket.send(self.pack(channel, body, None, publisher, seq, base, key, reply))

    def answer(self, timeout: float = 5.0) -> wire.Ack | wire.Published:
        assert self.socket.poll(round(timeout * 1000)), f"nothing within {timeout} s"
        return wire.decode_answer(self.socket.recv_multipart())

    def ack(self, timeout: float = 5.0) -> wire.Ack:
        assert self.socket.poll(round(timeout * 1000)), f"no ack within {timeout} s"
        return wire.decode_ack(self.socket.recv_multipart())

    def published(self, seq: int) -> wire.ChannelInfo:
        """The answer to publish `seq`; it comes before any ack that covers `seq`."""
        while True:
            answer = self.answer()
            assert not (isinstance(answer, wire.Ack) and answer.seq >= seq), answer
            if isinstance(answer, wire.Published) and answer.seq == seq:
                return answer.info

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
    assert held(context, broker, "rules") == [
        b"publisher-a:0",
        b"publisher-a:1",
        b"publisher-a:2",
        b"publisher-a:3",
        b"publisher-b:0",
    ]
    assert (broker.counters["ingress_repeats"], broker.counters["ingress_gaps"]) == (1, 1)


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
    assert held(context, broker, "kept") == [f"publisher-a:{n}".encode() for n in range(5)]
    assert broker.counters["ingress_repeats"] == 3


def test_a_broker_without_history_starts_a_publisher_at_the_oldest_message_it_names(
    context: zmq.Context[zmq.Socket[bytes]],
    forgetful: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    raw = connect(forgetful.ingress)
    raw.send("fresh", 0)
    assert raw.ack() == wire.Ack(A, 0)
    forgetful.stop()
    forgetful.start()
    raw.send("fresh", 1, base=1)  # 0 was acknowledged: 1 is the oldest it waits on
    eventually(lambda: held(context, forgetful, "fresh") == [b"publisher-a:1"])
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
    assert held(context, forgetful, "resumed") == [f"publisher-a:{n}".encode() for n in (3, 4, 5)]


# -- answers and idempotency keys ---------------------------------------------


def test_a_publish_that_asks_is_answered_with_the_channel_info_which_acknowledges_it(
    broker: ThreadBroker, connect: Callable[[str], RawPublisher]
) -> None:
    raw = connect(broker.ingress)
    raw.send("answered", 0, reply=True)
    first = raw.published(0)
    assert (first.messages, first.subscribers) == (1, 0)
    raw.send("answered", 1, reply=True)
    second = raw.published(1)
    assert second.messages == 2
    assert first.last is not None and second.last is not None and second.last > first.last
    # The answers were the acks: send_update's next message, which asks for
    # nothing, gets the first ack on this socket.
    raw.send("answered", 2)
    assert raw.answer() == wire.Ack(A, 2)
    # An answer that does not reach the publisher's newest number comes with an ack.
    raw.send("answered", 3)
    assert raw.answer() == wire.Ack(A, 3)
    raw.send("answered", 2, reply=True)  # a repeat: answered, and acknowledged up to 3
    assert raw.published(2).messages == 4
    assert raw.answer() == wire.Ack(A, 3)


def test_a_repeat_that_asks_is_answered_again_and_not_published_again(
    context: zmq.Context[zmq.Socket[bytes]],
    broker: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    """The first answer died with a connection; the outbox writes the message again."""
    raw = connect(broker.ingress)
    raw.send("answered-twice", 0, reply=True)
    assert raw.published(0).messages == 1
    raw.send("answered-twice", 0, reply=True)
    assert raw.published(0).messages == 1
    assert held(context, broker, "answered-twice") == [b"publisher-a:0"]
    assert broker.counters["ingress_repeats"] == 1


def test_a_key_seen_on_the_channel_is_answered_as_the_first_and_not_published_again(
    context: zmq.Context[zmq.Socket[bytes]],
    broker: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    """Two edges (two publishers) carrying one HTTP client's retry."""
    first_edge, second_edge = connect(broker.ingress), connect(broker.ingress)
    first_edge.send("keyed", 0, key="order-1", reply=True)
    first = first_edge.published(0)
    second_edge.send("keyed", 0, publisher=B, key="order-1", reply=True)
    assert second_edge.published(0) == first
    first_edge.send("keyed", 1, key="order-2", reply=True)
    assert first_edge.published(1).messages == 2
    # The same key on another channel names another publish.
    first_edge.send("keyed-elsewhere", 2, key="order-1", reply=True)
    assert first_edge.published(2).messages == 1
    assert held(context, broker, "keyed") == [b"publisher-a:0", b"publisher-a:1"]
    assert held(context, broker, "keyed-elsewhere") == [b"publisher-a:2"]
    assert broker.counters["ingress_key_retries"] == 1


def test_keys_survive_broker_restarts_with_a_history_file(
    context: zmq.Context[zmq.Socket[bytes]],
    broker: ThreadBroker,
    connect: Callable[[str], RawPublisher],
) -> None:
    """Each start replays the file and compacts it: keys must outlive both."""
    raw = connect(broker.ingress)
    raw.send("kept-keys", 0, key="before", reply=True)
    raw.published(0)
    for _ in range(2):
        broker.stop()
        broker.start()
    retry = connect(broker.ingress)
    retry.send("kept-keys", 0, publisher=B, key="before", reply=True)
    assert retry.published(0).messages == 1
    assert held(context, broker, "kept-keys") == [b"publisher-a:0"]
    # The number the retry took is the broker's after another restart too.
    broker.stop()
    broker.start()
    retry.send("kept-keys", 1, publisher=B, key="after", reply=True)
    assert retry.published(1).messages == 2
