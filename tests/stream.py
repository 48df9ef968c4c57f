"""A stream of messages to many subscribers while the cluster suffers faults.

The publisher calls `send_update` from a thread at a steady rate over
several channels; each body names its channel and sequence number, so the
check is exact: every subscriber must hold every message of its channel,
once, in order, byte for byte. Faults run on a schedule beside the stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.test.utils import override_settings

from ops.cluster import Cluster
from pushserver import sender
from pushserver.utils import updates
from tests.client import fresh
from tests.followers import Follower
from tests.pollers import Subscriber

Fault = tuple[float, str, Callable[[], Any]]


@dataclass
class StreamResult:
    sent: dict[str, list[bytes]]
    subscribers: Sequence[Subscriber | Follower]
    faults: list[str] = field(default_factory=list)

    @property
    def deliveries(self) -> int:
        return sum(len(s.received) for s in self.subscribers)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.subscribers)

    def check(self) -> None:
        for subscriber in self.subscribers:
            expected = self.sent[subscriber.channel_id]
            got = subscriber.received
            assert got == expected, (
                f"{subscriber.channel_id}: {len(got)} received of {len(expected)} sent, "
                f"first difference at {first_difference(got, expected)}"
            )
            ids = subscriber.ids
            assert all(a < b for a, b in zip(ids, ids[1:], strict=False)), (
                f"{subscriber.channel_id}: ids not strictly increasing: {ids}"
            )

    def report(self, title: str, extra: dict[str, Any] | None = None) -> None:
        figures = {
            "messages": sum(map(len, self.sent.values())),
            "subscribers": len(self.subscribers),
            "deliveries": self.deliveries,
            "polls": sum(s.polls for s in self.subscribers),
            "failed polls retried": self.errors,
            **(extra or {}),
        }
        print(f"\n{title}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        for fault in self.faults:
            print(f"  {fault}")


def first_difference(got: list[bytes], expected: list[bytes]) -> int | str:
    for index, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return index
    return "the end"


def publish_stream(
    cluster: Cluster, channels: list[str], rate: float, duration: float
) -> dict[str, list[bytes]]:
    """Send `rate` messages a second for `duration` seconds, round robin over `channels`."""
    sent: dict[str, list[bytes]] = {channel: [] for channel in channels}
    total = int(rate * duration)
    start = time.monotonic()
    with override_settings(PUSH_SERVER=cluster.push_server):
        sender.close()
        try:
            for n in range(total):
                channel = channels[n % len(channels)]
                body = f'{{"type":"stream","channel":"{channel}","seq":{n},"pad":"{"x" * 64}"}}'
                updates.send_update(channel, body, already_serialized=True)
                sent[channel].append(body.encode())
                time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
        finally:
            sender.close()
    return sent


class Schedule:
    """Faults run at their second from the schedule's start, in a thread beside the stream;
    what ran is kept (when, and a line saying what), so a run can tell that each did."""

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults
        self.started = time.monotonic()
        self.times: list[float] = []
        self.labels: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for at, label, action in self.faults:
            time.sleep(max(0.0, self.started + at - time.monotonic()))
            self.times.append(time.monotonic())
            action()
            self.labels.append(f"{time.monotonic() - self.started:5.1f} s  {label}")

    def start(self) -> None:
        self._thread.start()

    async def join(self) -> None:
        await asyncio.to_thread(self._thread.join)

    def check(self) -> None:
        # A fault that failed ended the thread early: the stream did not suffer what it says.
        assert len(self.labels) == len(self.faults), self.labels


async def finish(walks: list[asyncio.Task[Any]], settle: float) -> None:
    """Give the subscribers' walks `settle` seconds to end; one that failed fails the run."""
    done, pending = await asyncio.wait(walks, timeout=settle)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()


def run_stream(
    cluster: Cluster,
    *,
    channels: int = 10,
    per_channel: int = 30,
    rate: float = 20,
    duration: float = 20,
    faults: list[Fault] | None = None,
    settle: float = 90,
    subscriber: type[Subscriber] | type[Follower] = Subscriber,
) -> StreamResult:
    names = [fresh(f"stream{n}") for n in range(channels)]
    for name in names:
        # Created first, so a subscriber's first poll (no validators) waits for message 0.
        assert httpx.put(f"{cluster.edge_urls[0]}/send-update/{name}").status_code == 200
    subscribers = [
        subscriber([cluster.url], name, tolerate_errors=True)
        for name in names
        for _ in range(per_channel)
    ]
    schedule = Schedule(faults or [])

    async def main() -> dict[str, list[bytes]]:
        expected = int(rate * duration) // channels
        walks = [asyncio.create_task(s.walk(expected)) for s in subscribers]
        schedule.start()
        sent = await asyncio.to_thread(publish_stream, cluster, names, rate, duration)
        await schedule.join()
        await finish(walks, settle)
        return sent

    sent = asyncio.run(main())
    schedule.check()
    return StreamResult(sent, subscribers, schedule.labels)
