"""The real broker inside the test process, and what tests use to look at it as an edge does.

A `ThreadBroker` runs the broker on its own asyncio loop in a thread, on
fixed ports, so stopping and starting it again is how a broker restart
looks to a publisher. The trap: a restarted broker issues no id before the
second after it started (`broker.sequencer`), so each restart costs up to a
second of waiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import zmq
from prometheus_client.parser import text_string_to_metric_families

from broker import wire
from broker.config import BrokerConfig
from broker.server import Broker
from tests.processes import free_port

# Holds every message a test sends, for as long as any test runs.
MAX_MESSAGES = 50_000
MESSAGE_TIMEOUT = 600.0


def fixed_endpoints() -> dict[str, str]:
    return {name: f"tcp://127.0.0.1:{free_port()}" for name in ("ingress", "events", "control")}


class ThreadBroker:
    """The real broker on its own asyncio loop in a thread; stop() and start() restart it
    on the same ports, keeping its history when it has a file."""

    def __init__(self, history_file: Path | None = None) -> None:
        self.endpoints = fixed_endpoints()
        self.history_file = history_file
        self.broker: Broker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        # Until the first start, no client knows the endpoints, so a port taken
        # meanwhile (another socket's ephemeral port) is traded for fresh ones.
        self.started_once = False

    @property
    def ingress(self) -> str:
        return self.endpoints["ingress"]

    @property
    def counters(self) -> Counter[str]:
        """The running broker's counters (a fresh set after each restart)."""
        assert self.broker is not None, "the broker was never started"
        return self.broker.counters

    def start(self) -> None:
        ready = threading.Event()
        failures: list[BaseException] = []

        async def serve() -> None:
            deadline = time.monotonic() + 10
            while True:
                config = BrokerConfig(
                    ingress=self.endpoints["ingress"],
                    events=self.endpoints["events"],
                    control=self.endpoints["control"],
                    max_messages=MAX_MESSAGES,
                    message_timeout=MESSAGE_TIMEOUT,
                    history_file=self.history_file,
                )
                broker = Broker(config)
                try:
                    broker.bind()
                    break
                except zmq.ZMQError as exc:
                    # The last run's listeners close in ZeroMQ's I/O thread; soon free.
                    if time.monotonic() > deadline:
                        failures.append(exc)
                        ready.set()
                        return
                    if not self.started_once:
                        self.endpoints = fixed_endpoints()
                    await asyncio.sleep(0.02)
            self.started_once = True
            self.broker, self.loop = broker, asyncio.get_running_loop()
            ready.set()
            await broker.run()

        self.thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self.thread.start()
        assert ready.wait(20), "the broker did not start"
        if failures:
            raise failures[0]

    def stop(self) -> None:
        if self.thread is None:
            return
        assert self.loop is not None and self.broker is not None
        self.loop.call_soon_threadsafe(self.broker.stop)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the broker did not stop"
        self.thread = None


class Events:
    """A SUB socket on a broker's events, as an edge has: what the broker sequenced, live."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def subscribe(self, *channels: str) -> None:
        """Subscribe, and wait for the broker's answers: then it sends these channels here."""
        for channel in channels:
            self.socket.subscribe(wire.topic(channel))
        waiting = set(channels)
        deadline = time.monotonic() + 10
        while waiting:
            assert self.socket.poll(max(1, round((deadline - time.monotonic()) * 1000)))
            event = wire.decode_event(self.socket.recv_multipart())
            if isinstance(event, wire.Sync):
                waiting.discard(event.channel_id)

    def receive(self, timeout: float = 5.0) -> wire.Message:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(max(1, round(remaining * 1000))):
                raise AssertionError(f"no message arrived within {timeout} s")
            event = wire.decode_event(self.socket.recv_multipart())
            if isinstance(event, wire.Message):
                return event

    def nothing_more(self, wait: float = 0.3) -> None:
        """Fail if another message arrives within `wait` seconds."""
        try:
            message = self.receive(wait)
        except AssertionError:
            return
        raise AssertionError(f"unexpected message {message}")


def snapshot(
    context: zmq.Context[zmq.Socket[bytes]], control: str, channel: str
) -> list[wire.Message]:
    """Every message the broker holds for `channel`, oldest first, asked as an edge asks."""
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(control)
    try:
        dealer.send_multipart(wire.encode_request(wire.Request(wire.SNAPSHOT, 1, channel)))
        assert dealer.poll(10_000), "the broker did not answer a snapshot request"
        reply = wire.decode_reply(dealer.recv_multipart())
    finally:
        dealer.close()
    return [] if reply.snapshot is None else list(reply.snapshot.messages)


def held(
    context: zmq.Context[zmq.Socket[bytes]], broker: ThreadBroker, channel: str
) -> list[bytes]:
    """The bodies the broker holds for `channel`, oldest first."""
    return [message.body for message in snapshot(context, broker.endpoints["control"], channel)]


# The broker's metric families, by the counter each shows per port.
BROKER_FIGURES = {
    "pushserver_broker_curve_refused": "refused",
    "pushserver_broker_malformed_frames": "malformed",
}


def broker_figures(metrics_url: str) -> Counter[str]:
    """The broker's counts as its metrics endpoint shows them: ``ingress_refused``,
    ``control_malformed`` and so on."""
    figures: Counter[str] = Counter()
    text = httpx.get(metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        suffix = BROKER_FIGURES.get(family.name)
        if suffix is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                figures[f"{sample.labels['port']}_{suffix}"] = int(sample.value)
    return figures
