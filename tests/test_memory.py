"""Memory follows the live set: a broker and an edge forget a crowd of channels once it is
idle, rebuild their tables smaller and hand the freed memory back.

Each channel is published to once with send_update and polled once, as a
site with a channel per user or per object sees them. The figures printed
(resident size before, at the peak and after the crowd) are the ones to
compare with the size before; what is asserted is what does not depend on
the machine's speed or its allocator's luck: every channel was forgotten,
the edge rebuilt its tables, and both handed memory back. The count is
`PUSHSERVER_MEMORY_CHANNELS` (10,000 unless set; 1,000,000 by hand, with
`PUSHSERVER_MEMORY_HOLD` raised so the crowd held at the peak is larger);
the benchmark's W8 measures the same at full size (ops/bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import sys
import time
import weakref
from collections.abc import Iterator
from urllib.parse import urlsplit

import zmq
from django.test.utils import override_settings

from broker import wire
from broker.local import LocalLink
from broker.memory import TRIM_AFTER, Trimmer
from edge import paths
from edge.config import EdgeConfig
from edge.connection import Request
from edge.server import Edge
from pushserver import sender
from pushserver.utils import updates
from tests.client import edge_channels, figures
from tests.clock import Clock
from tests.processes import Launcher, eventually, memory_kib

CHANNELS = int(os.environ.get("PUSHSERVER_MEMORY_CHANNELS", "10000"))
# Seconds each message and each edge's topic is kept: the crowd held at the
# peak is about this many seconds of the run.
HOLD = float(os.environ.get("PUSHSERVER_MEMORY_HOLD", "5"))
CHANNEL_LINGER = 1.0
# Published, then polled, a chunk at a time, so every message is still held
# when its poll arrives.
CHUNK = 1_000
CONNECTIONS = 32
WARM_UP = 2_000
# A 304 is a poll that came after its message expired (a loaded machine):
# the channel was still polled once, which is what the test is about.
ANSWERED = {200, 304}


def test_freed_memory_is_trimmed_once_many_channels_were_forgotten_and_the_forgetting_paused() -> (
    None
):
    trimmer = Trimmer(after=1_000, interval=5, clock=Clock(100.0))
    assert not trimmer.forgot(600)
    assert not trimmer.forgot(0)  # paused, but too few to be worth a walk of the heap
    assert trimmer.forgot(600)
    assert not trimmer.forgot(1_000)  # enough again, but trimmed a moment ago
    assert trimmer.forgot(0)  # the forgetting paused
    assert not trimmer.forgot(0)


def test_a_crowd_is_trimmed_once_more_an_interval_after_its_last_trim_and_then_no_more() -> None:
    clock = Clock(100.0)
    trimmer = Trimmer(after=1_000, interval=5, clock=clock)
    assert trimmer.forgot(1_000)
    trims = []
    for _ in range(12):
        clock.now += 1
        trims.append(trimmer.forgot(0))
    assert trims == [False] * 4 + [True] + [False] * 7


def test_a_long_forgetting_is_trimmed_at_most_once_an_interval() -> None:
    clock = Clock(100.0)
    trimmer = Trimmer(after=1_000, interval=5, clock=clock)
    trims = []
    for _ in range(20):
        trims.append(trimmer.forgot(5_000))
        clock.now += 1
    assert trims == [True, False, False, False, False] * 4


class Node:
    def __init__(self) -> None:
        self.itself = self


def test_a_trim_lets_go_of_the_attribute_names_the_type_cache_kept() -> None:
    # A name made at run time, as pyzmq makes one for each socket option it reads.
    name = "".join(["attribute", "_made_at_run_time"])
    with contextlib.suppress(AttributeError):
        getattr(Node, name)
    held_by_the_cache = sys.getrefcount(name)
    assert Trimmer(after=1).forgot(1)
    assert sys.getrefcount(name) < held_by_the_cache


def test_a_trim_collects_garbage_while_few_channels_are_held_and_not_while_many_are() -> None:
    collecting = gc.isenabled()
    gc.disable()
    try:
        trimmer = Trimmer(after=1, interval=0, collect_below=100)
        garbage = weakref.ref(Node())  # a cycle: only a collection frees it
        assert trimmer.forgot(1, held=100)
        assert garbage() is not None
        assert trimmer.forgot(1, held=99)
        assert garbage() is None
    finally:
        if collecting:
            gc.enable()


def test_a_trim_empties_the_caches_given_to_it_and_a_turn_that_does_not_trim_keeps_them() -> None:
    trimmer = Trimmer(after=2, interval=0)
    cache = {"path": "route"}
    trimmer.caches.append(cache.clear)
    assert not trimmer.forgot(1)
    assert cache == {"path": "route"}
    assert trimmer.forgot(1)
    assert cache == {}


def test_an_edge_that_trims_forgets_the_routes_channel_ids_and_cursors_it_remembered() -> None:
    # Each entry made while a crowd came would keep a page of the crowd's memory.
    edge = Edge(EdgeConfig(), local=LocalLink())  # a local link: no ingress socket to close
    router = edge.router

    def parsed() -> list[object]:
        request = Request("GET", "/updates/crowd%201", "HTTP/1.1", [], True, "127.0.0.1")
        return [
            router(None, request).raw_channel_id,  # type: ignore[arg-type, attr-defined]
            router.subscribers.one_channel("crowd-2"),
            router.subscribers.cursor("Thu, 01 Jan 2026 00:00:00 GMT", "3"),
            router.publishers.channel_id("crowd-3"),
        ]

    first = parsed()
    assert [again is kept for again, kept in zip(parsed(), first, strict=True)] == [True] * 4
    assert paths.judged() > 0
    assert edge.feed.trimmer.forgot(TRIM_AFTER)
    assert paths.judged() == 0
    assert [again is kept for again, kept in zip(parsed(), first, strict=True)] == [False] * 4
    assert parsed() == first
    edge.feed.stop()
    asyncio.run(edge.feed.run())  # stopped at once: closes the feed's sockets


# How many polls were answered with each status.
Statuses = dict[int, int]


async def poll_each(url: str, channel_ids: list[str]) -> Statuses:
    """Poll each channel once on a few keep-alive connections; counts the statuses."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pending: Iterator[str] = iter(channel_ids)
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for channel_id in pending:
                writer.write(f"GET /poll/{channel_id} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line[15:])
                await reader.readexactly(length)
                statuses[status] = statuses.get(status, 0) + 1
                if b"\r\nconnection: close\r\n" in head:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return statuses


def publish_and_poll(endpoints: dict[str, str], url: str, channel_ids: list[str]) -> Statuses:
    statuses: Statuses = {}
    with override_settings(PUSH_SERVER={"broker": endpoints, "send_timeout": 5}):
        sender.close()
        try:
            for start in range(0, len(channel_ids), CHUNK):
                chunk = channel_ids[start : start + CHUNK]
                for channel_id in chunk:
                    updates.send_update(channel_id, 1)
                # Polled once the broker holds every message of the chunk.
                eventually(lambda: sender.pending() == 0, 30, "acknowledgements")
                for status, count in asyncio.run(poll_each(url, chunk)).items():
                    statuses[status] = statuses.get(status, 0) + count
        finally:
            sender.close()
    return statuses


def broker_holds(control: zmq.Socket[bytes], channel_ids: list[str]) -> bool:
    request_ids = itertools.count(1)
    for channel_id in channel_ids:
        control.send_multipart(
            wire.encode_request(wire.Request(wire.INFO, next(request_ids), channel_id))
        )
        if wire.decode_reply(control.recv_multipart()).found:
            return True
    return False


def edge_memory_events(url: str) -> dict[str, float]:
    pattern = r'^pushserver_edge_feed_events_total\{event="(tables_rebuilt|memory_trims)"\} (\S+)$'
    found = figures(f"{url}/pushserver/metrics", pattern)
    return {event: found.get(event, 0.0) for event in ("tables_rebuilt", "memory_trims")}


def broker_trims(metrics_url: str) -> float:
    found = figures(metrics_url, r"^pushserver_broker_memory_(trims)_total (\S+)$")
    assert found, "no pushserver_broker_memory_trims_total counter"
    return found["trims"]


def test_broker_and_edge_forget_a_crowd_of_channels_and_hand_its_memory_back(
    launcher: Launcher, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    broker, endpoints = launcher.broker(
        store={"type": "memory", "message_timeout": HOLD}, channel_linger=CHANNEL_LINGER
    )
    edge, url = launcher.edge(
        endpoints,
        topic_linger=HOLD,
        locations=({"type": "subscriber", "url": r"/poll/([^/]+)", "polling": "interval"},),
    )
    control = context.socket(zmq.DEALER)
    control.setsockopt(zmq.RCVTIMEO, 10_000)
    control.connect(endpoints["control"])
    try:
        pids = {"broker": broker.popen.pid, "edge": edge.popen.pid}
        measure(pids, endpoints, url, launcher.metrics_url(broker), control)
    finally:
        control.close(linger=0)


def measure(
    pids: dict[str, int],
    endpoints: dict[str, str],
    url: str,
    broker_metrics: str,
    control: zmq.Socket[bytes],
) -> None:
    run = f"m{time.monotonic_ns():x}"

    def settle(channel_ids: list[str]) -> None:
        sample = channel_ids[:: max(1, len(channel_ids) // 200)] + channel_ids[-1:]
        eventually(lambda: not broker_holds(control, sample), 120, "the broker forgetting")
        eventually(lambda: edge_channels(url) == 0, 60, "the edge dropping its channels")

    # `before` is a process at work, not one just started: one that has seen
    # a first, small crowd of channels come and go.
    warm_up = [f"{run}-warm-{n}" for n in range(WARM_UP)]
    assert set(publish_and_poll(endpoints, url, warm_up)) <= ANSWERED
    settle(warm_up)
    # The warm-up's own trims done, so those counted next are the crowd's.
    eventually(lambda: edge_memory_events(url)["memory_trims"] > 0, 30, "the edge's first trim")
    eventually(lambda: broker_trims(broker_metrics) > 0, 30, "the broker's first trim")
    before = {name: memory_kib(pid, "VmRSS") for name, pid in pids.items()}
    edge_before, broker_before = edge_memory_events(url), broker_trims(broker_metrics)

    started = time.monotonic()
    channel_ids = [f"{run}-crowd-{n}" for n in range(CHANNELS)]
    statuses = publish_and_poll(endpoints, url, channel_ids)
    took = time.monotonic() - started
    settle(channel_ids)
    # Rebuilt and trimmed once the forgetting paused: a sweep or two later.
    eventually(
        lambda: all(edge_memory_events(url)[event] > edge_before[event] for event in edge_before),
        30,
        "the edge rebuilding its tables and trimming",
    )
    eventually(lambda: broker_trims(broker_metrics) > broker_before, 30, "the broker trimming")
    settled = time.monotonic() - started
    after = {name: memory_kib(pid, "VmRSS") for name, pid in pids.items()}
    # The high-water mark, read last: its highest, whenever that was.
    peak = {name: memory_kib(pid, "VmHWM") for name, pid in pids.items()}
    print(
        f"\n{CHANNELS:,} channels published once and polled once in {took:.1f} s, forgotten "
        f"and trimmed {settled - took:.1f} s later; statuses {statuses}"
    )
    for name in pids:
        print(
            f"{name}: RSS before {before[name] / 1024:.1f} MiB, peak {peak[name] / 1024:.1f} MiB, "
            f"after {after[name] / 1024:.1f} MiB ({after[name] / before[name]:.2f} of before)"
        )
    assert set(statuses) <= ANSWERED and sum(statuses.values()) == CHANNELS
