"""A subscriber on the broker's events port that never reads holds a bounded share of the
broker's memory, and edges that do read still deliver every message.

libzmq bounds each subscriber's queue by a count of messages; the broker
also bounds the bytes of large bodies its events socket holds
(`events_queue_bytes`, 64 MiB by default), sending no more live while it
is over, so edges that read get those from snapshots.
"""

from __future__ import annotations

import httpx
import zmq
from django.test.utils import override_settings

from broker import wire
from broker.config import BrokerConfig
from pushserver import sender
from pushserver.utils import updates
from tests.client import fresh, in_background, walk
from tests.processes import Launcher, eventually, memory_kib

MESSAGES = 300
SIZE = 1024 * 1024
HELD = 20
# The walker may fall this far behind before the next publish waits for it,
# so every message is still held when it asks.
LAG = 10
BOUND = BrokerConfig().events_queue_bytes
# The history (HELD messages), the copy of each message as it arrives, the
# queue of the edge that reads: room for what is not a slow subscriber's queue.
ROOM = HELD * SIZE + 64 * 1024 * 1024


def test_a_subscriber_that_never_reads_holds_a_bounded_queue_and_readers_get_everything(
    launcher: Launcher, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker, endpoints = launcher.broker(
        store={"type": "memory", "max_messages": HELD, "message_timeout": 300}
    )
    _, url = launcher.edge(endpoints, long_poll_timeout=20)
    channel = fresh("large")
    bodies = [f'"{n:04d}{"x" * (SIZE - 6)}"'.encode() for n in range(MESSAGES)]

    # Reads nothing past what one message and a small socket buffer take.
    stuck = context.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 64 * 1024)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.subscribe(wire.topic(channel))
    stuck.connect(endpoints["events"])
    # The broker answers a subscription with a sync: then it is in effect.
    assert stuck.poll(10_000), "the subscription was never answered"

    received: list[bytes] = []
    walking = in_background(walk, url, channel, MESSAGES, into=received)
    eventually(lambda: httpx.get(f"{url}/send-update/{channel}").status_code == 200, 10, "channel")

    pid = broker.popen.pid
    before = memory_kib(pid, "VmRSS")
    with override_settings(PUSH_SERVER={"broker": endpoints, "send_timeout": 10}):
        sender.close()
        try:
            for n, body in enumerate(bodies):
                eventually(lambda n=n: len(received) >= n - LAG or walking.done(), 30, "the walk")
                updates.send_update(channel, body, already_serialized=True)
            eventually(lambda: sender.pending() == 0, 30, "acknowledgements")
        finally:
            sender.close()
    walking.result(60)
    stuck.close(linger=0)
    grown = (memory_kib(pid, "VmHWM") - before) * 1024
    print(
        f"\nbroker RSS {before / 1024:.1f} MiB before {MESSAGES} publishes of {SIZE} bytes, "
        f"grew by {grown / 2**20:.1f} MiB at most (bound {BOUND / 2**20:.0f} MiB "
        f"+ {ROOM / 2**20:.0f} MiB of history, arrivals and the reading edge's queue)"
    )
    assert received == bodies
    assert grown < BOUND + ROOM
