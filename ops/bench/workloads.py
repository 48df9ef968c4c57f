"""The workloads W1–W7 and W3h, each run against one started target (W8: forgetting.py).

Every workload checks every delivery (ops/bench/ledger.py) and reports
the server's and the load generator's CPU seconds beside its figures.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ops.bench import streams
from ops.bench.eventsource import EventSourceProtocol
from ops.bench.ledger import Catalog, Faults, StreamLedger, message_body, percentile
from ops.bench.loadgen import PollProtocol, Subscriber, close_all, connect_all, wait_all
from ops.bench.publishers import publish_over_http
from ops.bench.targets import Target, cpu_seconds, rss_bytes, write_calls
from ops.bench.wsclient import WebSocketProtocol
from ops.launch import eventually


@dataclass(frozen=True)
class Sizes:
    w1_subscribers: int = 500
    w1_interval: float = 0.05
    w1_duration: float = 10
    w2_subscribers: int = 500
    w2_messages: int = 2000
    w3_channels: int = 2000
    w3_rounds: int = 20
    w3h_channels: int = 2000
    w3h_rounds: int = 20
    w3h_publishers: int = 4
    w4_connections: int = 5000
    w4_hold: float = 10
    w5_calls: int = 20_000
    w6_streams: int = 500
    w6_messages: int = 20_000
    w6_idle_streams: int = 5000
    w6_hold: float = 10.0
    w7_sockets: int = 500
    w7_messages: int = 20_000
    w7_idle_sockets: int = 5000
    w7_hold: float = 10.0
    w8_channels: int = 1_000_000
    w8_connections: int = 50
    # Channels published at a time; the publisher stays at most two batches ahead of the polls.
    w8_batch: int = 500
    w8_message_timeout: int = 10
    w8_linger: int = 5
    # Seconds after the last poll within which the servers must have forgotten.
    w8_forget_wait: float = 60.0


QUICK = Sizes(
    w1_subscribers=50,
    w1_duration=2,
    w2_subscribers=50,
    w2_messages=200,
    w3_channels=200,
    w3_rounds=5,
    w3h_channels=200,
    w3h_rounds=5,
    w4_connections=500,
    w4_hold=2,
    w5_calls=2000,
    w6_streams=50,
    w6_messages=2000,
    w6_idle_streams=500,
    w6_hold=2.0,
    w7_sockets=50,
    w7_messages=2000,
    w7_idle_sockets=500,
    w7_hold=2.0,
    w8_channels=20_000,
    w8_message_timeout=5,
    w8_linger=2,
    w8_forget_wait=20.0,
)
# After the last HTTP publish was answered, how long deliveries may still take
# before the missing ones are counted as lost.
DELIVERY_GRACE = 60.0


@dataclass
class Result:
    workload: str
    target: str
    figures: dict[str, float]
    faults: Faults = field(default_factory=Faults)
    server_cpu: float = 0.0
    client_cpu: float = 0.0


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU seconds of the server's processes and of this load generator over a workload."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.server = cpu_seconds(target.pids())
        self.client = client_cpu()

    def finish(self, result: Result) -> Result:
        result.server_cpu = cpu_seconds(self.target.pids()) - self.server
        result.client_cpu = client_cpu() - self.client
        return result


def channel(workload: str) -> str:
    return f"{workload}-{uuid.uuid4().hex[:8]}"


def subscribers_for(target: Target, channel_id: str, count: int, expected: int) -> list[Subscriber]:
    return [
        Subscriber(channel_id, target.subscriber_path(channel_id), expected) for _ in range(count)
    ]


def wait_held(target: Target, channel_id: str, count: int) -> None:
    eventually(lambda: target.subscribers(channel_id) >= count, 60, f"{count} held polls")


def publish_in_thread(publish: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread


def faults_of(subscribers: list[Subscriber]) -> Faults:
    total = Faults()
    for subscriber in subscribers:
        total = total + subscriber.ledger.faults(subscriber.expected)
    return total


async def w1_latency(target: Target, sizes: Sizes) -> Result:
    meter = Meter(target)
    channel_id = channel("w1")
    messages = int(sizes.w1_duration / sizes.w1_interval)
    subscribers = subscribers_for(target, channel_id, sizes.w1_subscribers, messages)
    target.publish(channel_id, message_body(0, time.time()))
    protocols = await connect_all(target.host, target.port, subscribers)
    await asyncio.to_thread(wait_held, target, channel_id, len(subscribers))

    def publish() -> None:
        start = time.monotonic()
        for seq in range(1, messages):
            time.sleep(max(0.0, start + seq * sizes.w1_interval - time.monotonic()))
            target.publish(channel_id, message_body(seq, time.time()))

    await asyncio.to_thread(publish)
    await wait_all(subscribers, 120)
    close_all(protocols)
    # Message 0 was waiting before anyone subscribed: its latency is not delivery latency.
    latencies = [lag for s in subscribers for lag in s.ledger.latencies[1:]]
    figures = {
        "p50 latency ms": percentile(latencies, 0.5) * 1000,
        "p99 latency ms": percentile(latencies, 0.99) * 1000,
        "max latency ms": max(latencies) * 1000,
    }
    return meter.finish(Result("W1 latency", target.name, figures, faults_of(subscribers)))


async def w2_throughput(target: Target, sizes: Sizes) -> Result:
    meter = Meter(target)
    channel_id = channel("w2")
    subscribers = subscribers_for(target, channel_id, sizes.w2_subscribers, sizes.w2_messages)
    target.publish(channel_id, message_body(0, time.time()))
    protocols = await connect_all(target.host, target.port, subscribers)
    await asyncio.to_thread(wait_held, target, channel_id, len(subscribers))
    started = time.time()

    def publish() -> None:
        for seq in range(1, sizes.w2_messages):
            target.publish(channel_id, message_body(seq, time.time()))

    thread = publish_in_thread(publish)
    finished = await wait_all(subscribers, 600)
    thread.join()
    close_all(protocols)
    deliveries = sizes.w2_subscribers * (sizes.w2_messages - 1)
    figures = {"deliveries/s": deliveries / (finished - started)}
    return meter.finish(Result("W2 throughput", target.name, figures, faults_of(subscribers)))


async def one_subscriber_each(
    target: Target, workload: str, channels: int, rounds: int
) -> tuple[list[str], list[Subscriber], list[PollProtocol]]:
    """`channels` channels, each with one long-poll subscriber held and expecting `rounds`."""
    prefix = channel(workload)
    names = [f"{prefix}-{n}" for n in range(channels)]
    subscribers = [s for name in names for s in subscribers_for(target, name, 1, rounds)]
    protocols = await connect_all(target.host, target.port, subscribers)
    # Every poll sent and held: the channel of the last one counts it.
    await asyncio.to_thread(wait_held, target, names[-1], 1)
    await asyncio.sleep(0.5)
    return names, subscribers, protocols


async def w3_channels(target: Target, sizes: Sizes) -> Result:
    meter = Meter(target)
    names, subscribers, protocols = await one_subscriber_each(
        target, "w3", sizes.w3_channels, sizes.w3_rounds
    )
    started = time.time()

    def publish() -> None:
        for seq in range(sizes.w3_rounds):
            for name in names:
                target.publish(name, message_body(seq, time.time()))

    thread = publish_in_thread(publish)
    finished = await wait_all(subscribers, 600)
    thread.join()
    close_all(protocols)
    latencies = [lag for s in subscribers for lag in s.ledger.latencies]
    figures = {
        "deliveries/s": len(names) * sizes.w3_rounds / (finished - started),
        "p99 latency ms": percentile(latencies, 0.99) * 1000,
    }
    return meter.finish(Result("W3 many channels", target.name, figures, faults_of(subscribers)))


async def w3h_http_publishers(target: Target, sizes: Sizes) -> Result:
    """W3's shape, published by HTTP POST to the target's publisher location."""
    meter = Meter(target)
    names, subscribers, protocols = await one_subscriber_each(
        target, "w3h", sizes.w3h_channels, sizes.w3h_rounds
    )
    publishes = len(names) * sizes.w3h_rounds
    cpu_before = cpu_seconds(target.pids())
    started = time.time()
    paths = [target.publisher_path(name) for name in names]
    publishing = await publish_over_http(
        target.host, target.port, paths, sizes.w3h_rounds, sizes.w3h_publishers
    )
    try:
        finished = await wait_all(subscribers, DELIVERY_GRACE)
    except TimeoutError:
        finished = time.time()  # the ledger counts what never arrived
    # The publishing phase ends when the last publish is answered and delivered,
    # so work a server defers past its answer is counted too.
    server_cpu = cpu_seconds(target.pids()) - cpu_before
    close_all(protocols)
    latencies = [lag for s in subscribers for lag in s.ledger.latencies]
    figures = {
        "HTTP publishes/s": publishes / (publishing.last_answer - started),
        "deliveries/s": publishes / (finished - started),
        "p99 latency ms": percentile(latencies, 0.99) * 1000,
        "server CPU µs per publish": server_cpu / publishes * 1e6,
    }
    return meter.finish(Result("W3h HTTP publishers", target.name, figures, faults_of(subscribers)))


async def w4_idle_and_burst(target: Target, sizes: Sizes) -> Result:
    meter = Meter(target)
    channel_id = channel("w4")
    subscribers = subscribers_for(target, channel_id, sizes.w4_connections, 1)
    # The channel exists before the polls arrive, so each poll is held.
    target.publish(f"{channel_id}-warm", message_body(0, time.time()))
    before = rss_bytes(target.pids())
    protocols = await connect_all(target.host, target.port, subscribers)
    await asyncio.to_thread(wait_held, target, channel_id, len(subscribers))
    await asyncio.sleep(sizes.w4_hold)
    held = rss_bytes(target.pids())
    published = time.time()
    target.publish(channel_id, message_body(0, published))
    finished = await wait_all(subscribers, 120)
    close_all(protocols)
    figures = {
        "KiB per held poll": (held - before) / len(subscribers) / 1024,
        "burst to last ms": (finished - published) * 1000,
    }
    return meter.finish(Result("W4 idle and burst", target.name, figures, faults_of(subscribers)))


def w5_publish(target: Target, sizes: Sizes) -> Result:
    meter = Meter(target)
    channel_id = channel("w5")
    body = message_body(0, time.time())
    figures = {}
    for threads in (1, 8):
        per_thread = sizes.w5_calls // threads
        called: list[float] = []
        settled: list[float] = []

        def send(
            per_thread: int = per_thread,
            called: list[float] = called,
            settled: list[float] = settled,
        ) -> None:
            for _ in range(per_thread):
                target.publish(channel_id, body)
            called.append(time.perf_counter())
            target.settle()
            settled.append(time.perf_counter())

        started = time.perf_counter()
        workers = [threading.Thread(target=send) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        calls = per_thread * threads
        plural = "s" if threads > 1 else ""
        # What publishing code waits for: its calls returning.
        figures[f"publishes/s, {threads} thread{plural}"] = calls / (max(called) - started)
        if threads == 1:
            # What the server took: until the last message was acknowledged.
            figures["acknowledged/s, 1 thread"] = calls / (max(settled) - started)
    return meter.finish(Result("W5 publish cost", target.name, figures))


def streams_for(
    kind: type[streams.StreamConnection],
    path_of: Callable[[str], str],
    channel_id: str,
    count: int,
    expected: int,
) -> list[streams.Stream]:
    catalog = Catalog()
    path = path_of(channel_id)
    return [
        streams.Stream(channel_id, path, StreamLedger(catalog, expected), expected, kind)
        for _ in range(count)
    ]


def stream_faults(opened: list[streams.Stream]) -> Faults:
    total = Faults()
    for stream in opened:
        total = total + stream.ledger.faults()
    return total


@dataclass(frozen=True)
class StreamRun:
    """W6's shape, for one kind of stream."""

    workload: str
    # What the figures call one stream: "stream", "socket".
    noun: str
    kind: type[streams.StreamConnection]
    path_of: Callable[[str], str]
    streams: int
    messages: int
    idle: int
    hold: float


async def flood_then_idle(target: Target, run: StreamRun) -> Result:
    """W2's flood over streams, then W4's idle crowd and burst."""
    meter = Meter(target)
    prefix = run.workload.split()[0].lower()
    # The flood: every stream starts at message 0, then the rest as fast as published.
    channel_id = channel(prefix)
    flood = streams_for(run.kind, run.path_of, channel_id, run.streams, run.messages)
    target.publish(channel_id, message_body(0, time.time()))
    await streams.open_all(target.host, target.port, flood)
    await streams.wait_until(flood, "received", 60)
    cpu_before = cpu_seconds(target.pids())
    client_before = client_cpu()
    writes_before = write_calls(target.pids())
    started = time.time()

    def publish() -> None:
        for seq in range(1, run.messages):
            target.publish(channel_id, message_body(seq, time.time()))

    thread = publish_in_thread(publish)
    finished = await streams.wait_all(flood, 900)
    flood_cpu = cpu_seconds(target.pids()) - cpu_before
    flood_client_cpu = client_cpu() - client_before
    flood_writes = write_calls(target.pids()) - writes_before
    thread.join()
    streams.close_all(flood)
    deliveries = run.streams * (run.messages - 1)
    # The idle crowd: memory per open stream, then one message to all of them.
    idle_channel = channel(f"{prefix}i")
    idle = streams_for(run.kind, run.path_of, idle_channel, run.idle, 1)
    target.publish(f"{idle_channel}-warm", message_body(0, time.time()))
    await asyncio.sleep(0.5)  # the flood's connections closed and freed
    before = rss_bytes(target.pids())
    await streams.open_all(target.host, target.port, idle)
    await streams.wait_until(idle, "opened", 60)
    await asyncio.to_thread(wait_held, target, idle_channel, len(idle))
    await asyncio.sleep(run.hold)
    held = rss_bytes(target.pids())
    published = time.time()
    target.publish(idle_channel, message_body(0, published))
    last = await streams.wait_all(idle, 120)
    streams.close_all(idle)
    everyone = flood + idle
    figures = {
        "deliveries/s": deliveries / (finished - started),
        # Publishing included: the broker's work on this project, the POSTs' on Nchan.
        "server CPU µs per delivery": flood_cpu / deliveries * 1e6,
        # Below 1 when a server writes several deliveries to a socket at once.
        "server writes per delivery": flood_writes / deliveries,
        # The load generator's, publishing included: near a core, it set the pace.
        "load generator CPU µs per delivery": flood_client_cpu / deliveries * 1e6,
        f"KiB per idle {run.noun}": (held - before) / len(idle) / 1024,
        "burst to last ms": (last - published) * 1000,
        f"{run.noun}s reopened": float(sum(s.reopened for s in everyone)),
    }
    return meter.finish(Result(run.workload, target.name, figures, stream_faults(everyone)))


async def w6_eventsource(target: Target, sizes: Sizes) -> Result:
    """EventSource streams: W2's flood over streams, then W4's idle crowd and burst."""
    shape = StreamRun(
        "W6 EventSource",
        "stream",
        EventSourceProtocol,
        target.stream_path,
        sizes.w6_streams,
        sizes.w6_messages,
        sizes.w6_idle_streams,
        sizes.w6_hold,
    )
    return await flood_then_idle(target, shape)


async def w7_websocket(target: Target, sizes: Sizes) -> Result:
    """W6's two workloads over WebSockets with the ws+meta.nchan subprotocol."""
    shape = StreamRun(
        "W7 WebSocket",
        "socket",
        WebSocketProtocol,
        target.websocket_path,
        sizes.w7_sockets,
        sizes.w7_messages,
        sizes.w7_idle_sockets,
        sizes.w7_hold,
    )
    return await flood_then_idle(target, shape)
