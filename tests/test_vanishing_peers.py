"""A peer that vanishes while a process is behind on its sockets costs that process nothing.

libzmq 4.3 aborts the whole process (``Assertion failed: !_io_error``,
libzmq #4364 and #4767) when a connection with ZMTP heartbeats fails while
its reading is paused because its receive queue is full: the next heartbeat
writes to a connection already marked broken. So a Django worker killed in
the middle of a burst the broker had not caught up with took the broker
down with it, and a broker killed while an edge was behind on its events
took the edge. These tests starve a real process's event loop (its I/O
threads run on), fill what one of its sockets receives from a peer, kill
that peer, and ask the process to go on serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import httpx
import zmq
from django.test.utils import override_settings

from broker import wire
from pushserver import sender
from pushserver.utils import updates
from tests.brokers import snapshot
from tests.client import Cursor, fresh, hold
from tests.processes import ROOT, Launcher, Process, eventually, starved_main_thread

# Far past a receive queue of 1,000 messages and the socket buffers behind it.
BURST = 20_000
# Heartbeats go every second: the broken build aborted within two.
HEARTBEATS = 3.5
# The edge's events queue in the last test: a starved loop takes seconds to empty it.
EVENTS_HWM = 1_000

PEER = textwrap.dedent(
    """
    import sys
    import django
    django.setup()
    import zmq
    from django.conf import settings
    from broker import wire
    from broker.sockets import configure_keepalive
    from pushserver.utils import updates
    role, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "publisher":
        settings.PUSH_SERVER = {"broker": {"ingress": endpoint}, "send_queue_size": count + 1}
        for number in range(count):
            updates.send_update("vanishing", [number, "padding" * 100])
    else:
        # Configured as an edge configures its sockets to the broker.
        sock = zmq.Context.instance().socket(zmq.SUB if role == "subscriber" else zmq.DEALER)
        configure_keepalive(sock)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(endpoint)
        for number in range(count):
            if role == "subscriber":
                sock.subscribe(wire.topic(f"vanishing-{number}"))
            else:
                request = wire.Request(wire.SNAPSHOT, number, f"vanishing-{number}")
                sock.send_multipart(wire.encode_request(request))
    print("sent", flush=True)
    sys.stdin.readline()
    """
)


def burst_then_vanish(
    processes: list[subprocess.Popen[str]], broker: Process, role: str, endpoint: str
) -> None:
    """A peer sends `BURST` messages to `endpoint` and is killed while the broker is behind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "tests.django_settings"}
    with starved_main_thread(broker.popen.pid):
        peer = subprocess.Popen(
            [sys.executable, "-c", PEER, role, endpoint, str(BURST)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(peer)
        assert peer.stdout is not None
        assert peer.stdout.readline() == "sent\n"
        peer.kill()
        peer.wait()
        time.sleep(HEARTBEATS)
        assert broker.popen.poll() is None, f"the broker exited:\n{broker.output[-2000:]}"


def still_sequences(endpoints: dict[str, str], context: zmq.Context[zmq.Socket[bytes]]) -> None:
    channel = fresh("after")
    # The broker may still be working through the burst: wait for its ack as long as it takes.
    settings = {"broker": {"ingress": endpoints["ingress"]}, "exit_timeout": 30}
    with override_settings(PUSH_SERVER=settings):
        try:
            updates.send_update(channel, "after")
        finally:
            sender.close()

    def held() -> list[wire.Message] | None:
        # Slow to answer is not gone: a loop left at SCHED_IDLE (no privilege to undo it) crawls.
        try:
            return snapshot(context, endpoints["control"], channel)
        except AssertionError:
            return None

    assert [m.body for m in eventually(held, 60, "the message")] == [b'"after"']


def test_a_publisher_killed_in_a_burst_the_broker_is_behind_on_leaves_the_broker_serving(
    launcher: Launcher,
    context: zmq.Context[zmq.Socket[bytes]],
    processes: list[subprocess.Popen[str]],
) -> None:
    broker, endpoints = launcher.broker()
    burst_then_vanish(processes, broker, "publisher", endpoints["ingress"])
    still_sequences(endpoints, context)
    # What the publisher's socket had delivered before it died is sequenced, in order.
    held = snapshot(context, endpoints["control"], "vanishing")
    assert held, "nothing of the burst reached the broker"
    numbers = [int(m.body[1 : m.body.index(b",")]) for m in held]
    assert numbers == sorted(numbers)


def test_an_edge_killed_while_subscribing_to_many_channels_leaves_the_broker_serving(
    launcher: Launcher,
    context: zmq.Context[zmq.Socket[bytes]],
    processes: list[subprocess.Popen[str]],
) -> None:
    broker, endpoints = launcher.broker()
    burst_then_vanish(processes, broker, "subscriber", endpoints["events"])
    still_sequences(endpoints, context)


def test_an_edge_killed_with_many_requests_unanswered_leaves_the_broker_serving(
    launcher: Launcher,
    context: zmq.Context[zmq.Socket[bytes]],
    processes: list[subprocess.Popen[str]],
) -> None:
    broker, endpoints = launcher.broker()
    burst_then_vanish(processes, broker, "requester", endpoints["control"])
    still_sequences(endpoints, context)


def test_a_broker_killed_while_an_edge_is_behind_on_its_events_leaves_the_edge_serving(
    launcher: Launcher,
) -> None:
    broker, endpoints = launcher.broker()
    # An events queue at the edge, which pauses reading the link when full.
    edge, url = launcher.edge(endpoints, events_hwm=EVENTS_HWM)
    channel = fresh("behind")
    with httpx.Client(timeout=30) as client:
        held = hold(client, url, channel, Cursor())  # the edge follows the channel
        settings = {"broker": {"ingress": endpoints["ingress"]}, "send_queue_size": BURST}
        with starved_main_thread(edge.popen.pid):
            with override_settings(PUSH_SERVER=settings):
                try:
                    # Far more than the starved loop can take in the time the test waits.
                    for number in range(5 * EVENTS_HWM):
                        updates.send_update(channel, [number, "padding" * 200])
                finally:
                    sender.close()
            broker.popen.kill()
            broker.popen.wait()
            time.sleep(HEARTBEATS)
            assert edge.popen.poll() is None, f"the edge exited:\n{edge.output[-2000:]}"
        assert held.result(timeout=30).status_code == 200
        assert client.get(f"{url}/pushserver/metrics").status_code == 200
