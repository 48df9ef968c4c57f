"""Sizes bounded on every port: the limit is the same by HTTP, by send_update and by ZeroMQ.

A frame larger than the site allows (`max_message_size` plus the framing
slack of `broker.sockets.max_frame_size`) costs its sender the connection,
refused by libzmq itself before the broker holds it in memory; the broker
then serves a normal publish and poll. `send_update` refuses an over-size
body before anything is queued.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq
from django.test.utils import override_settings

from broker import wire
from broker.sockets import max_frame_size
from broker.wire import PublishPacker
from tests.brokers import Events, ThreadBroker
from tests.client import fresh, info, publish, walk
from tests.processes import Launcher, Process, eventually, memory_kib

MAX_MESSAGE_SIZE = 10_000
STORE = {"type": "memory", "min_messages": 0, "max_messages": 20, "message_timeout": 600}
# Far over the limit, large enough that holding it would show in the broker's memory.
HUGE = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def bounded(module_launcher: Launcher) -> tuple[Process, dict[str, str], str]:
    broker, endpoints = module_launcher.broker(store=STORE, max_message_size=MAX_MESSAGE_SIZE)
    _, edge = module_launcher.edge(endpoints, store=STORE, max_message_size=MAX_MESSAGE_SIZE)
    return broker, endpoints, edge


def over_the_limit(port: str, channel: str, size: int) -> list[bytes]:
    """A message for `port` whose largest frame is `size` bytes or a little more."""
    if port == "ingress":
        return [PublishPacker()(channel, b"x" * size, "text/plain", b"big", 0, 0)]
    if port == "control":
        return wire.encode_request(
            wire.Request(wire.PUBLISH, 1, channel, "text/plain", b"x" * size)
        )
    # A message, not a subscription: XSUB keeps the topics it subscribed to in a
    # trie it walks by recursion, one level per byte, which a huge one overflows.
    return [b"\x02" + b"x" * size]


def disconnected(monitor: zmq.Socket[bytes], timeout: float = 10.0) -> bool:
    while monitor.poll(round(timeout * 1000)):
        if zmq.utils.monitor.recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
            return True
    return False


@pytest.fixture
def sender_socket(
    context: zmq.Context[zmq.Socket[bytes]], request: pytest.FixtureRequest
) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    kind = zmq.XSUB if request.param == "events" else zmq.DEALER
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    yield sock, monitor
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)


@pytest.mark.parametrize(
    ("port", "sender_socket"),
    [("ingress", "ingress"), ("control", "control"), ("events", "events")],
    indirect=["sender_socket"],
)
def test_a_frame_over_the_limit_costs_its_sender_the_connection_and_the_broker_serves_on(
    bounded: tuple[Process, dict[str, str], str],
    port: str,
    sender_socket: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    broker, endpoints, edge = bounded
    sock, monitor = sender_socket
    channel = fresh(f"huge-{port}")
    peak_before = memory_kib(broker.popen.pid, "VmHWM")
    sock.connect(endpoints[port])
    sock.send_multipart(over_the_limit(port, channel, HUGE))
    assert disconnected(monitor), f"the broker kept the connection of a {HUGE}-byte frame"
    # Refused as its size arrived: never held, so the broker's peak memory stayed put.
    assert memory_kib(broker.popen.pid, "VmHWM") - peak_before < HUGE // 1024 // 4
    assert not sock.poll(200), "the broker answered a refused frame"
    assert info(edge, channel) is None
    publish(edge, channel, "after the huge frame")
    assert walk(edge, channel, 1) == [b"after the huge frame"]


@pytest.mark.parametrize("port", ["ingress", "control"])
def test_a_frame_just_over_the_limit_is_refused_and_one_of_the_largest_message_is_taken(
    bounded: tuple[Process, dict[str, str], str],
    context: zmq.Context[zmq.Socket[bytes]],
    port: str,
) -> None:
    _, endpoints, edge = bounded
    limit = max_frame_size(MAX_MESSAGE_SIZE)
    channel = fresh(f"edge-of-{port}")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        dealer.connect(endpoints[port])
        dealer.send_multipart(over_the_limit(port, channel, limit + 1))
        assert disconnected(monitor)
        largest = b"y" * MAX_MESSAGE_SIZE
        if port == "ingress":
            dealer.send(PublishPacker()(channel, largest, "text/plain", b"largest", 0, 0))
        else:
            request = wire.Request(wire.PUBLISH, 2, channel, "text/plain", largest)
            dealer.send_multipart(wire.encode_request(request))
        assert dealer.poll(10_000), "the largest message a site allows was not answered"
    finally:
        dealer.disable_monitor()
        monitor.close(linger=0)
        dealer.close(linger=0)
    assert walk(edge, channel, 1) == [largest]


@pytest.fixture
def limited_sender(broker: ThreadBroker) -> Iterator[ThreadBroker]:
    from pushserver import sender

    settings = {"broker": {"ingress": broker.ingress}, "max_message_size": MAX_MESSAGE_SIZE}
    with override_settings(PUSH_SERVER=settings):
        sender.close()
        yield broker
        sender.close()


@pytest.mark.parametrize("ignore_errors", [False, True])
def test_send_update_refuses_a_body_over_max_message_size_before_sending(
    limited_sender: ThreadBroker,
    context: zmq.Context[zmq.Socket[bytes]],
    ignore_errors: bool,
) -> None:
    from pushserver import sender, signals
    from pushserver.utils import updates

    events = Events(context, limited_sender.endpoints["events"])
    events.subscribe("sizes")
    fired: list[str] = []

    def seen(**kwargs: object) -> None:
        fired.append(str(kwargs["channel_id"]))

    signals.pre_send_update.connect(seen)
    try:
        with pytest.raises(ValueError, match=rf"is {MAX_MESSAGE_SIZE + 1} bytes, more than"):
            updates.send_update(
                "sizes", "z" * (MAX_MESSAGE_SIZE + 1), True, ignore_errors=ignore_errors
            )
    finally:
        signals.pre_send_update.disconnect(seen)
    assert fired == [] and sender.pending() == 0
    updates.send_update("sizes", "z" * MAX_MESSAGE_SIZE, already_serialized=True)
    assert events.receive().body == b"z" * MAX_MESSAGE_SIZE
    eventually(lambda: sender.pending() == 0, what="the largest message acknowledged")
    events.socket.close(linger=0)
