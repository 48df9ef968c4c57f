"""The guarantee under faults: behind a real load balancer, with edges killed, stopped and
restarted and the broker killed, every client gets every message of its channel once, in
order, byte for byte. The edge kills, the broker kill and the refill run twice: on open
ZeroMQ links and with CURVE on every link (the `links` fixture)."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test.utils import override_settings

from ops.cluster import Cluster
from pushserver import sender
from pushserver.utils import updates
from tests.client import fresh, wait_for_subscribers
from tests.pollers import Subscriber
from tests.processes import Launcher
from tests.stream import StreamResult, run_stream

# Holds every message of a stream for longer than any test runs.
STORE = {"type": "memory", "min_messages": 0, "max_messages": 1000, "message_timeout": 300}


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[list[Cluster]]:
    started: list[Cluster] = []
    yield started
    for cluster in started:
        cluster.stop()


def start(
    started: list[Cluster],
    folder: Path,
    balancer: str | None = "nginx",
    edges: int = 3,
    **push: object,
) -> Cluster:
    cluster = Cluster(
        folder, edges=edges, balancer=balancer, launcher=Launcher(folder), store=STORE, **push
    )
    started.append(cluster)
    return cluster.start()


def edge_figures(cluster: Cluster) -> dict[str, int]:
    """Refills and broker restarts counted by the edges still running."""
    figures = {"refills": 0, "broker restarts seen": 0}
    for url, edge in zip(cluster.edge_urls, cluster.edges, strict=True):
        if edge is None:
            continue
        text = httpx.get(f"{url}/pushserver/metrics").text
        for event, label in (("refills", "refills"), ("broker_restarts", "broker restarts seen")):
            found = re.search(
                rf'pushserver_edge_feed_events_total\{{event="{event}"\}} (\S+)', text
            )
            figures[label] += int(float(found.group(1))) if found else 0
    return figures


def test_killed_restarted_and_stopped_edges_behind_nginx_lose_nothing(
    cluster_factory: list[Cluster], tmp_path: Path, links: dict[str, Any]
) -> None:
    cluster = start(cluster_factory, tmp_path, **links)
    result = run_stream(
        cluster,
        faults=[
            (5, "kill -9 edge 1", lambda: cluster.stop_edge(0, signal.SIGKILL)),
            (9, "start edge 1 again", lambda: cluster.start_edge(0)),
            (13, "SIGTERM edge 2", lambda: cluster.stop_edge(1)),
        ],
    )
    result.report("edges killed, restarted and stopped (nginx)", edge_figures(cluster))
    result.check()
    assert result.faults and len(result.faults) == 3


def test_a_killed_and_restarted_broker_loses_and_repeats_nothing(
    cluster_factory: list[Cluster], tmp_path: Path, links: dict[str, Any]
) -> None:
    cluster = start(
        cluster_factory,
        tmp_path,
        **links,
        history_file=str(tmp_path / "history"),
        # Publishers queue through the outage instead of giving up.
        broker_unreachable_timeout=20,
    )
    result = run_stream(
        cluster,
        faults=[
            (6, "kill -9 the broker", lambda: cluster.stop_broker(signal.SIGKILL)),
            (9, "start the broker again", cluster.start_broker),
        ],
    )
    result.report("broker killed and restarted", edge_figures(cluster))
    result.check()
    assert edge_figures(cluster)["broker restarts seen"] >= 1


def test_a_rolling_restart_of_every_edge_loses_nothing(
    cluster_factory: list[Cluster], tmp_path: Path
) -> None:
    cluster = start(cluster_factory, tmp_path)

    def restart(index: int) -> None:
        cluster.stop_edge(index)
        cluster.start_edge(index)

    result = run_stream(
        cluster,
        faults=[(3 + 5 * n, f"restart edge {n + 1}", lambda n=n: restart(n)) for n in range(3)],
    )
    result.report("rolling restart (nginx)", edge_figures(cluster))
    result.check()


def test_delivery_through_haproxy_survives_a_killed_edge(
    cluster_factory: list[Cluster], tmp_path: Path
) -> None:
    cluster = start(cluster_factory, tmp_path, balancer="haproxy")
    result = run_stream(
        cluster,
        duration=12,
        faults=[
            (4, "kill -9 edge 3", lambda: cluster.stop_edge(2, signal.SIGKILL)),
            (8, "start edge 3 again", lambda: cluster.start_edge(2)),
        ],
    )
    result.report("edge killed and restarted (HAProxy)", edge_figures(cluster))
    result.check()


def test_an_edge_dropping_live_messages_at_its_queue_limit_refills_every_gap(
    cluster_factory: list[Cluster], tmp_path: Path, links: dict[str, Any]
) -> None:
    # A tiny events queue at both ends: under a burst of large messages the
    # broker drops what this edge cannot take in time.
    cluster = start(cluster_factory, tmp_path, balancer=None, edges=1, events_hwm=2, **links)
    channel = fresh("burst")
    assert httpx.put(f"{cluster.edge_urls[0]}/send-update/{channel}").status_code == 200
    bodies = [f'{{"type":"burst","seq":{n},"pad":"{"y" * 60000}"}}' for n in range(200)]
    subscribers = [Subscriber(cluster.edge_urls, channel) for _ in range(20)]

    async def run() -> None:
        walks = [asyncio.create_task(s.walk(len(bodies))) for s in subscribers]
        # The channel is empty: every first poll is held until the burst.
        await asyncio.to_thread(wait_for_subscribers, cluster.edge_urls[0], channel, 20)
        await asyncio.to_thread(burst)
        await asyncio.wait_for(asyncio.gather(*walks), 120)

    def burst() -> None:
        with override_settings(PUSH_SERVER=cluster.push_server):
            sender.close()
            for body in bodies:
                updates.send_update(channel, body, already_serialized=True)
            sender.close()

    asyncio.run(run())
    result = StreamResult({channel: [b.encode() for b in bodies]}, subscribers)
    figures = edge_figures(cluster)
    result.report("burst through a tiny events queue", figures)
    result.check()
    assert figures["refills"] > 0
