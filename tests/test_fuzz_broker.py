"""A seeded fuzz of the ZeroMQ wire format and of every port that reads it.

Three levels. The decoders alone, on many frames: each raises `WireError`
or returns values of the types its result declares, since the broker and
the edge drop only `WireError` and anything else ends the task reading the
socket. The broker's ingress, events and control ports, fed mistyped
msgpack, misshapen frames and bytes that are not msgpack by real sockets:
every malformed frame is dropped and counted, and a valid publish
afterwards is sequenced and delivered. An edge between the real broker and
a relay that slips fuzzed events and replies in: it drops them, counts
them, and serves on.

Frames come from `tests.fuzzing` with fixed seeds (``PUSHSERVER_FUZZ_SEED``,
``PUSHSERVER_FUZZ_SCALE``); a failure names the seed and the frame.
"""

from __future__ import annotations

import email.utils
import math
import random
import reprlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import zmq

from broker import wire
from broker.throttled_log import LOG_LINES
from broker.wire import MessageId, PublishPacker
from edge.protocol import IF_MODIFIED_SINCE, IF_NONE_MATCH, http_date
from tests.brokers import broker_figures
from tests.client import fresh, info, path, publish, walk
from tests.fuzzing import (
    Response,
    control_frames,
    count,
    event_frames,
    ingress_frames,
    pack,
    read_responses,
    reply_frames,
    seed,
    subscription_frames,
)
from tests.processes import Launcher, Process, eventually
from tests.raw_http import figures

TRACEBACK = "Traceback (most recent call last)"
CHANNELS = [f"bz-{n}" for n in range(6)]

# -- the decoders alone --------------------------------------------------------------


def _is_id(value: object) -> bool:
    return (
        isinstance(value, MessageId)
        and type(value.time) is int
        and type(value.tag) is int
        and -(2**63) <= value.time < 2**64
    )


def _is_optional_id(value: object) -> bool:
    return value is None or _is_id(value)


def _is_optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_channel_id(value: object) -> bool:
    return isinstance(value, str) and wire.channel_id_problem(value) is None


def _typed_message(message: wire.Message) -> bool:
    return (
        isinstance(message.channel_id, str)
        and _is_id(message.id)
        and _is_optional_id(message.prev)
        and _is_optional_id(message.floor)
        and _is_optional_str(message.content_type)
        and isinstance(message.body, bytes)
        and _is_event_name(message.event)
    )


def _is_event_name(value: object) -> bool:
    return value is None or (isinstance(value, str) and wire.event_name_problem(value) is None)


def typed(value: object) -> bool:
    """Whether a decoder's result holds the types its class declares."""
    if isinstance(value, wire.Publish):
        return (
            _is_channel_id(value.channel_id)
            and _is_optional_str(value.content_type)
            and isinstance(value.body, bytes)
            and isinstance(value.publisher, bytes)
            and type(value.seq) is int
            and type(value.base) is int
            and 0 <= value.base <= value.seq
            and _is_event_name(value.event)
        )
    if isinstance(value, wire.Ack):
        return isinstance(value.publisher, bytes) and isinstance(value.seq, int)
    if isinstance(value, wire.Message):
        return _typed_message(value)
    if isinstance(value, wire.Sync):
        return isinstance(value.exists, bool) and _is_optional_id(value.last)
    if isinstance(value, wire.Deleted):
        return isinstance(value.channel_id, str)
    if isinstance(value, wire.Heartbeat):
        return isinstance(value.epoch, str) and isinstance(value.time, float)
    if isinstance(value, wire.Request):
        return (
            value.kind in wire.REQUEST_KINDS
            and isinstance(value.request_id, int)
            and _is_channel_id(value.channel_id)
            and _is_optional_str(value.content_type)
            and isinstance(value.body, bytes)
            and isinstance(value.create, bool)
        )
    if isinstance(value, wire.Presence):
        return isinstance(value.full, bool) and all(
            _is_channel_id(channel_id)
            and isinstance(held, int)
            and isinstance(requested, float)
            and math.isfinite(requested)
            for channel_id, (held, requested) in value.counts.items()
        )
    if isinstance(value, wire.Reply):
        info_ok = value.info is None or (
            type(value.info.messages) is int
            and type(value.info.subscribers) is int
            and (value.info.requested is None or math.isfinite(value.info.requested))
            and _is_optional_id(value.info.last)
        )
        snapshot = value.snapshot
        snapshot_ok = snapshot is None or (
            isinstance(snapshot.channel_id, str)
            and isinstance(snapshot.exists, bool)
            and _is_optional_id(snapshot.last)
            and _is_optional_id(snapshot.floor)
            and type(snapshot.limits.max_messages) is int
            and type(snapshot.limits.min_messages) is int
            and isinstance(snapshot.limits.message_timeout, float)
            and all(_typed_message(message) for message in snapshot.messages)
        )
        return (
            isinstance(value.request_id, int)
            and isinstance(value.found, bool)
            and info_ok
            and snapshot_ok
            and _is_optional_id(value.message_id)
        )
    return False


def _ack_frames(rng: random.Random, channels: list[str]) -> list[bytes]:
    header: dict[str, Any] = {"v": wire.VERSION, "k": "ack", "p": b"me", "s": 3, "gap": False}
    header[rng.choice(list(header))] = rng.choice([None, -1, "x", 2**64 - 1, [], {}, 1.5])
    return [pack(header)]


Decoder = Callable[[Sequence[bytes]], object]
Generator = Callable[[random.Random, list[str]], list[bytes]]
DECODERS: list[tuple[str, Decoder, Generator]] = [
    ("decode_publish", wire.decode_publish, ingress_frames),
    ("decode_request", wire.decode_request, control_frames),
    ("decode_event", wire.decode_event, event_frames),
    ("decode_reply", wire.decode_reply, reply_frames),
    ("decode_ack", wire.decode_ack, _ack_frames),
]


@pytest.mark.parametrize(("name", "decode", "generate"), DECODERS, ids=[d[0] for d in DECODERS])
def test_a_decoder_raises_only_wire_error_and_returns_what_its_types_say(
    name: str, decode: Decoder, generate: Generator
) -> None:
    rng = random.Random(seed(77) + DECODERS.index((name, decode, generate)))
    rejected = 0
    for number in range(count(10_000)):
        frames = generate(rng, CHANNELS)
        try:
            decoded = decode(frames)
        except wire.WireError:
            rejected += 1
            continue
        except Exception as error:
            raise AssertionError(f"{name} raised {error!r} on frame {number}: {frames!r}") from None
        assert typed(decoded), (
            f"{name} returned {reprlib.repr(decoded)} on frame {number}: {frames!r}"
        )
    # Some frames of each kind are right: the fuzz reaches past the first check.
    assert 0 < rejected < count(10_000), rejected


# -- the broker's ports ------------------------------------------------------------------

STORE = {"type": "memory", "min_messages": 0, "max_messages": 50, "message_timeout": 600}
FRAMES = count(1500)


@pytest.fixture(scope="module")
def cluster(module_launcher: Launcher) -> tuple[Process, dict[str, str], Process, str]:
    """A broker and an edge that follows every channel of `CHANNELS`."""
    broker, endpoints = module_launcher.broker(store=STORE)
    edge, base = module_launcher.edge(endpoints, store=STORE, long_poll_timeout=1)
    for channel in CHANNELS:
        publish(base, channel, f"first of {channel}")
        assert walk(base, channel, 1) == [f"first of {channel}".encode()]
    return broker, endpoints, edge, base


def dropped(process: Process) -> Counter[str]:
    """The broker's count of malformed frames per port, as its metrics show them (its log
    tells of a few a minute)."""
    figures = broker_figures(Launcher.metrics_url(process))
    return Counter(
        {port: figures[f"{port}_malformed"] for port in ("ingress", "events", "control")}
    )


def rejects(decode: Decoder, frames: list[bytes]) -> bool:
    """Whether the broker should drop `frames` (an exception other than WireError is
    the decoder's bug, which the decoder test names; here it is a frame to drop)."""
    try:
        decode(frames)
    except Exception:
        return True
    return False


def bad_subscriptions(frames: list[bytes]) -> int:
    """How many malformed subscriptions the broker should count in a message from a SUB:
    subscriptions to a topic that is not a channel's. XPUB hands the frames after a
    (un)subscription on as messages of their own; other messages of several frames
    are no subscription at all."""
    if len(frames) > 1 and frames[0][:1] not in (b"\x00", b"\x01"):
        return 0
    bad = 0
    for frame in frames:
        if frame[:1] != b"\x01" or frame[1:] == wire.HEARTBEAT_TOPIC:
            continue
        try:
            wire.channel_of(frame[1:])
        except wire.WireError:
            bad += 1
    return bad


def drain(sock: zmq.Socket[bytes]) -> list[list[bytes]]:
    received = []
    while sock.poll(0):
        received.append(sock.recv_multipart())
    return received


def assert_no_traceback(*processes: Process) -> None:
    for process in processes:
        assert process.popen.poll() is None, f"{process.name} exited:\n{process.output[-5000:]}"
        lines = process.lines
        found = [n for n, line in enumerate(lines) if TRACEBACK in line]
        assert not found, f"{process.name}:\n" + "\n".join(lines[found[0] - 3 : found[0] + 30])


def assert_told_a_few_times(process: Process, *kinds: str) -> None:
    """Each kind of malformed frame is logged, but a few times a minute, not once per frame."""
    for kind in kinds:
        told = [line for line in process.lines if kind in line]
        # Twice the lines: the run may straddle the end of one minute's window.
        assert 1 <= len(told) <= 2 * LOG_LINES, f"{process.name}, {kind!r}: {len(told)} lines"


def publish_by_dealer(context: zmq.Context[zmq.Socket[bytes]], ingress: str, channel: str) -> None:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.connect(ingress)
    dealer.send(PublishPacker()(channel, b"by ingress", "text/plain", fresh("p").encode(), 0, 0))
    eventually(lambda: dealer.poll(100), 10, "the broker's ack")
    ack = wire.decode_ack(dealer.recv_multipart())
    assert (ack.seq, ack.gap) == (0, False)
    dealer.close()


def strict_get(base: str, target: str, headers: dict[str, str]) -> Response:
    """One GET on a connection of its own, its answer read strictly (`tests.fuzzing`)."""
    address = urlsplit(base)
    lines = [f"GET {target} HTTP/1.1", "Host: edge", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((address.hostname, address.port), timeout=10) as raw:
        raw.sendall(("\r\n".join([*lines, "", ""])).encode())
        answer = b"".join(iter(lambda: raw.recv(65536), b""))
    responses = read_responses(answer, head_possible=False, complete=True)
    assert len(responses) == 1, answer
    return responses[0]


def assert_messages_well_formed(base: str, channel: str) -> None:
    """Walk every message the edge holds of `channel`, each answer well-formed HTTP."""
    newest = info(base, channel)
    assert newest is not None
    cursor: dict[str, str] = {}
    for _ in range(int(STORE["max_messages"]) + 1):
        response = strict_get(base, path("updates", channel), cursor)
        assert response.status == 200, response
        headers = dict(response.headers)
        seconds = email.utils.parsedate_to_datetime(headers[b"last-modified"].decode()).timestamp()
        tag = headers[b"etag"].decode()
        if f"{int(seconds)}:{tag}" == newest["last_message_id"]:
            return
        cursor = {IF_MODIFIED_SINCE: headers[b"last-modified"].decode(), IF_NONE_MATCH: tag}
    raise AssertionError(f"{channel}: the walk never reached {newest['last_message_id']}")


def assert_still_serving(
    context: zmq.Context[zmq.Socket[bytes]], endpoints: dict[str, str], base: str
) -> None:
    """Publishes by either way reach a poll, and the fuzzed channels take publishes."""
    channel = fresh("after-fuzz")
    publish(base, channel, "by HTTP")
    publish_by_dealer(context, endpoints["ingress"], channel)
    assert walk(base, channel, 2) == [b"by HTTP", b"by ingress"]
    for fuzzed in CHANNELS:
        publish(base, fuzzed, "after the fuzz")
        assert_messages_well_formed(base, fuzzed)


def test_the_broker_drops_and_counts_fuzzed_frames_on_every_port_and_serves_on(
    cluster: tuple[Process, dict[str, str], Process, str],
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    broker, endpoints, edge, base = cluster
    rng = random.Random(seed(4242))
    before = dropped(broker)
    expected: Counter[str] = Counter()
    sockets = {
        "ingress": context.socket(zmq.DEALER),
        "control": context.socket(zmq.DEALER),
        "events": context.socket(zmq.XSUB),
    }
    try:
        for name, sock in sockets.items():
            sock.setsockopt(zmq.LINGER, 0)
            # XSUB drops what is over its high-water mark, as the edge's SUB would.
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(endpoints[name])
        for _ in range(FRAMES):
            frames = ingress_frames(rng, CHANNELS)
            expected["ingress"] += rejects(wire.decode_publish, frames)
            sockets["ingress"].send_multipart(frames)
            frames = control_frames(rng, CHANNELS)
            expected["control"] += rejects(wire.decode_request, frames)
            sockets["control"].send_multipart(frames)
            frames = subscription_frames(rng, CHANNELS)
            expected["events"] += bad_subscriptions(frames)
            sockets["events"].send_multipart(frames)
        for name in expected:

            def counted(port: str = name) -> bool:
                return dropped(broker)[port] - before[port] >= expected[port]

            eventually(counted, 20, f"{expected[name]} malformed frames counted on {name}")
        assert dropped(broker) - before == expected
        # What the broker sent back decodes: replies to the control requests it took.
        for frames in drain(sockets["control"]):
            wire.decode_reply(frames)
        for frames in drain(sockets["ingress"]):
            wire.decode_answer(frames)
    finally:
        for sock in sockets.values():
            sock.close()
    assert_still_serving(context, endpoints, base)
    assert_no_traceback(broker, edge)
    assert_told_a_few_times(broker, *(f"malformed frame on {port}" for port in expected))


# -- an edge fed fuzzed events and replies -----------------------------------------------


class Relay:
    """Stands between the real broker and one edge, and slips frames in on the way down.

    Point the edge's ``broker['events']`` and ``broker['control']`` at
    `events` and `control`. Subscriptions and requests go up as sent, events
    and replies come down; `inject_event` and `inject_reply` add frames of
    the test's own. Use as a context manager: the sockets belong to the
    relay's thread until it has stopped.
    """

    def __init__(self, endpoints: dict[str, str]) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sockets: list[zmq.Socket[bytes]] = []
        self._events_up = self._socket(zmq.XSUB, connect=endpoints["events"])
        self._events_down = self._socket(zmq.XPUB)
        self._events_down.setsockopt(zmq.XPUB_VERBOSER, 1)
        self._control_up = self._socket(zmq.DEALER, connect=endpoints["control"])
        self._control_down = self._socket(zmq.ROUTER)
        self.events = self._bind(self._events_down)
        self.control = self._bind(self._control_down)
        # The test's frames reach the relay's thread over a pair of inproc sockets.
        self._commands = self._socket(zmq.PAIR)
        self._commands.bind("inproc://relay")
        self._orders = self._socket(zmq.PAIR)
        self._orders.connect("inproc://relay")
        self._edge: bytes | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="relay", daemon=True)

    def _socket(self, kind: int, connect: str | None = None) -> zmq.Socket[bytes]:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if connect is not None:
            sock.connect(connect)
        self._sockets.append(sock)
        return sock

    @staticmethod
    def _bind(sock: zmq.Socket[bytes]) -> str:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{port}"

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(5)
        if self._thread.is_alive():
            raise AssertionError("the relay did not stop")
        for sock in self._sockets:
            sock.close()
        self._context.term()

    @property
    def edge_known(self) -> bool:
        return self._edge is not None

    def inject_event(self, frames: list[bytes]) -> None:
        self._orders.send_multipart([b"event", *frames])

    def inject_reply(self, frames: list[bytes]) -> None:
        self._orders.send_multipart([b"reply", *frames])

    def _relay(self) -> None:
        poller = zmq.Poller()
        for sock in (self._events_up, self._events_down, self._control_up):
            poller.register(sock, zmq.POLLIN)
        poller.register(self._control_down, zmq.POLLIN)
        poller.register(self._commands, zmq.POLLIN)
        while not self._stopping.is_set():
            for sock, _ in poller.poll(50):
                frames = sock.recv_multipart()
                if sock is self._events_down:
                    self._events_up.send_multipart(frames)
                elif sock is self._events_up:
                    self._events_down.send_multipart(frames)
                elif sock is self._control_down:
                    self._edge = frames[0]
                    self._control_up.send_multipart(frames[1:])
                elif sock is self._control_up:
                    if self._edge is not None:
                        self._control_down.send_multipart([self._edge, *frames])
                elif frames[0] == b"event":
                    self._events_down.send_multipart(frames[1:])
                elif self._edge is not None:
                    self._control_down.send_multipart([self._edge, *frames[1:]])


def feed_events(base: str) -> Counter[str]:
    """The edge's counts of events on its link to the broker (malformed frames among them)."""
    return Counter(
        {
            dict(labels)["event"]: int(value)
            for (name, labels), value in figures(base).items()
            if name == "pushserver_edge_feed_events_total"
        }
    )


def subscribed(topics: list[bytes], frames: list[bytes]) -> bool:
    """Whether a SUB subscribed to `topics` takes this message (by prefix, as ZeroMQ does)."""
    return any(frames[0].startswith(topic) for topic in topics)


EVENTS = count(1500)


def test_an_edge_drops_and_counts_fuzzed_events_and_replies_and_serves_on(
    module_launcher: Launcher,
    cluster: tuple[Process, dict[str, str], Process, str],
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    _, endpoints, _, _ = cluster
    rng = random.Random(seed(5150))
    with Relay(endpoints) as relay:
        edge, base = module_launcher.edge(
            {**endpoints, "events": relay.events, "control": relay.control},
            store=STORE,
            long_poll_timeout=1,
        )
        # The edge follows every channel (the broker fuzz may have published to them).
        for channel in CHANNELS:
            assert len(walk(base, channel, 1)) == 1
        eventually(lambda: relay.edge_known, 10, "the edge's first control request")
        before = feed_events(base)
        topics = [wire.HEARTBEAT_TOPIC, *(wire.topic(channel) for channel in CHANNELS)]
        expected: Counter[str] = Counter()
        for _ in range(EVENTS):
            frames = event_frames(rng, CHANNELS)
            if subscribed(topics, frames):
                expected["events_malformed"] += rejects(wire.decode_event, frames)
            relay.inject_event(frames)
            frames = reply_frames(rng, CHANNELS)
            expected["control_malformed"] += rejects(wire.decode_reply, frames)
            relay.inject_reply(frames)

        assert min(expected["events_malformed"], expected["control_malformed"]) > EVENTS // 10

        def counted() -> bool:
            now = feed_events(base)
            return all(now[name] - before[name] >= expected[name] for name in expected)

        eventually(counted, 20, f"the edge to count {dict(expected)}")
        now = feed_events(base)
        assert {name: now[name] - before[name] for name in expected} == expected
        # Channels the fuzz touched are served again, and new ones too.
        for channel in CHANNELS:
            publish(base, channel, "after the fuzz")
            assert info(base, channel) is not None
        channel = fresh("after-fuzz")
        publish(base, channel, "by HTTP")
        publish_by_dealer(context, endpoints["ingress"], channel)
        assert walk(base, channel, 2) == [b"by HTTP", b"by ingress"]
        assert_no_traceback(edge)
        assert_told_a_few_times(edge, "dropped a malformed event", "dropped a malformed control")
        edge.stop()


# -- regressions: what the fuzz found ------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


REPLY = {"v": wire.VERSION, "r": 1, "found": True, "id": None}
INFO = {"n": 1, "req": None, "s": 0, "last": None}
SNAPSHOT = {
    "c": "a",
    "exists": True,
    "last": [1, 0],
    "floor": None,
    "limits": [10, 0, 60.0],
    "ids": [([1, 0], None, "text/plain")],
}
ESCAPED: list[tuple[str, Decoder, list[bytes]]] = [
    (
        "a publish whose version is nested past the recursion limit",
        wire.decode_publish,
        [pack([nested(1000), b"p", 0, "a", None, b"", 0])],
    ),
    ("a request whose kind is a map", wire.decode_request, [pack({"v": 1, "k": {}})]),
    ("a request whose kind is an array", wire.decode_request, [pack({"v": 1, "k": [1]})]),
    (
        "a presence report requested at infinity",
        wire.decode_request,
        [pack({"v": 1, "k": "presence", "counts": {"a": [1, math.inf]}})],
    ),
    (
        "a presence report requested at NaN",
        wire.decode_request,
        [pack({"v": 1, "k": "presence", "counts": {"a": [1, math.nan]}})],
    ),
    (
        "an event whose kind is nested deep",
        wire.decode_event,
        [b"a\0", pack({"v": 1, "k": nested(1000)})],
    ),
    (
        "a reply counting infinite messages",
        wire.decode_reply,
        [pack({**REPLY, "info": {**INFO, "n": math.inf}})],
    ),
    (
        "a reply requested at infinity",
        wire.decode_reply,
        [pack({**REPLY, "info": {**INFO, "req": math.inf}})],
    ),
    (
        "a snapshot with infinite limits",
        wire.decode_reply,
        [pack({**REPLY, "snap": {**SNAPSHOT, "limits": [math.inf, 0, 60.0]}}), b"x"],
    ),
    (
        "a snapshot whose content type is an int",
        wire.decode_reply,
        [pack({**REPLY, "snap": {**SNAPSHOT, "ids": [([1, 0], None, 5)]}}), b"x"],
    ),
    (
        "a snapshot of a channel named by an int",
        wire.decode_reply,
        [pack({**REPLY, "snap": {**SNAPSHOT, "c": 5}}), b"x"],
    ),
]


@pytest.mark.parametrize(("what", "decode", "frames"), ESCAPED, ids=[e[0] for e in ESCAPED])
def test_frames_that_once_escaped_a_decoder_raise_wire_error(
    what: str, decode: Decoder, frames: list[bytes]
) -> None:
    with pytest.raises(wire.WireError):
        decode(frames)


PORT_CASES = [
    ("ingress", [pack([nested(1000), b"p", 0, CHANNELS[0], None, b"", 0])]),
    ("control", [pack({"v": 1, "k": {}, "r": 1, "c": CHANNELS[0]})]),
    ("control", [pack({"v": 1, "k": "presence", "counts": {CHANNELS[0]: [1, math.inf]}})]),
]


@pytest.mark.parametrize(
    ("port", "frames"),
    PORT_CASES,
    ids=["ingress-deep-version", "control-map-kind", "control-infinite-presence"],
)
def test_a_frame_that_once_stopped_a_broker_port_is_dropped_and_the_port_serves_on(
    cluster: tuple[Process, dict[str, str], Process, str],
    context: zmq.Context[zmq.Socket[bytes]],
    port: str,
    frames: list[bytes],
) -> None:
    broker, endpoints, edge, base = cluster
    before = dropped(broker)[port]
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.connect(endpoints[port])
    dealer.send_multipart(frames)
    dealer.close()
    eventually(lambda: dropped(broker)[port] > before, 10, f"the frame counted on {port}")
    # Before the fix: ingress sequenced nothing more, control answered nothing more (503),
    # and every publish to the reported channel answered 500.
    assert_still_serving(context, endpoints, base)
    assert_no_traceback(broker, edge)


def delivered(base: str, channel: str, body: bytes, within: float = 3.0) -> bool:
    """Whether a long-poll from the channel's newest id receives `body` within `within` s."""
    newest = info(base, channel)
    assert newest is not None
    time_part, tag = str(newest["last_message_id"]).split(":")
    cursor = {IF_MODIFIED_SINCE: http_date(int(time_part)), IF_NONE_MATCH: tag}
    publish(base, channel, body)
    deadline = time.monotonic() + within
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            response = client.get(base + path("updates", channel), headers=cursor)
            if response.status_code == 200:
                return response.content == body
    return False


def test_a_publish_whose_content_type_is_not_latin1_does_not_stop_the_edges_feed(
    module_launcher: Launcher,
    cluster: tuple[Process, dict[str, str], Process, str],
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # An edge of its own: only an edge following the channel is harmed.
    _, endpoints, _, _ = cluster
    edge, base = module_launcher.edge(endpoints, store=STORE, long_poll_timeout=1)
    euro, other = fresh("euro"), fresh("other")
    for channel in (euro, other):
        publish(base, channel, "first")
        assert walk(base, channel, 1) == [b"first"]
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.connect(endpoints["ingress"])
    # Refused at the broker's ingress: a content type a header cannot carry.
    dealer.send(PublishPacker()(euro, b"x", "text/\u20ac", b"raw-publisher", 0, 0))
    dealer.close()
    try:
        assert delivered(base, other, b"after the euro")
    finally:
        edge.stop()


def test_a_publish_whose_content_type_holds_a_control_is_refused_and_the_channel_serves_on(
    cluster: tuple[Process, dict[str, str], Process, str],
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    broker, endpoints, _, base = cluster
    channel = fresh("control-char")
    before = dropped(broker)["ingress"]
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.connect(endpoints["ingress"])
    dealer.send(PublishPacker()(channel, b"x", "text/plain\x00", b"raw-publisher", 0, 0))
    eventually(lambda: dropped(broker)["ingress"] > before, 10, "the frame dropped and counted")
    dealer.close()
    publish(base, channel, "after")
    # A strict reader takes the head: nothing unfit for a header went into it.
    answer = strict_get(base, path("updates", channel), {})
    assert answer.status == 200
    assert answer.body == b"after"


def test_a_live_message_dated_past_year_9999_does_not_stop_the_edges_feed(
    module_launcher: Launcher, cluster: tuple[Process, dict[str, str], Process, str]
) -> None:
    _, endpoints, _, _ = cluster
    with Relay(endpoints) as relay:
        edge, base = module_launcher.edge(
            {**endpoints, "events": relay.events, "control": relay.control},
            store=STORE,
            long_poll_timeout=1,
        )
        channel, other = fresh("far-future"), fresh("other")
        for followed in (channel, other):
            publish(base, followed, "first")
            assert walk(base, followed, 1) == [b"first"]
        newest = info(base, channel)
        assert newest is not None
        time_part, tag = str(newest["last_message_id"]).split(":")
        message = wire.Message(
            channel, MessageId(2**40, 0), MessageId(int(time_part), int(tag)), None, None, b"x"
        )
        relay.inject_event(wire.encode_message(message))
        try:
            assert delivered(base, other, b"after the far future")
        finally:
            edge.stop()
