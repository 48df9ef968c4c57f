"""The guarantee on streams and sockets: 300 EventSource or WebSocket clients behind real
nginx, with an edge killed, another stopped and every edge restarted in turn, each client
resuming from its last id on whichever edge the balancer picks, get every message of their
channel once, in order, byte for byte."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.cluster import Cluster
from tests.followers import Follower, SocketSubscriber, StreamSubscriber
from tests.processes import Launcher
from tests.stream import StreamResult, run_stream
from tests.test_faults import STORE, edge_figures


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path, edges=3, balancer="nginx", launcher=Launcher(tmp_path), store=STORE)
    try:
        yield started.start()
    finally:
        started.stop()


def resumed(result: StreamResult) -> int:
    """Subscribers that opened their stream again at least once (their edge went away)."""
    return sum(1 for subscriber in result.subscribers if subscriber.polls > 1)


@pytest.mark.parametrize(
    ("transport", "subscriber"),
    [("EventSource", StreamSubscriber), ("WebSocket", SocketSubscriber)],
)
def test_three_hundred_clients_lose_nothing_when_edges_are_killed_stopped_and_restarted(
    cluster: Cluster, transport: str, subscriber: type[Follower]
) -> None:
    def restart(index: int) -> None:
        cluster.stop_edge(index)
        cluster.start_edge(index)

    result = run_stream(
        cluster,
        channels=10,
        per_channel=30,
        rate=20,
        duration=30,
        subscriber=subscriber,
        faults=[
            (4, "kill -9 edge 1", lambda: cluster.stop_edge(0, signal.SIGKILL)),
            (7, "start edge 1 again", lambda: cluster.start_edge(0)),
            (11, "SIGTERM edge 2", lambda: cluster.stop_edge(1)),
            (14, "start edge 2 again", lambda: cluster.start_edge(1)),
            *(
                (18 + 4 * n, f"rolling restart: edge {n + 1}", lambda n=n: restart(n))
                for n in range(3)
            ),
        ],
    )
    result.report(
        f"300 {transport} clients, edges killed, stopped and restarted (nginx)",
        {"streams resumed": resumed(result), **edge_figures(cluster)},
    )
    result.check()
    assert len(result.subscribers) == 300
    # Every edge stopped at least once while streams were open on it: round robin put
    # about a third of the streams on each, and each of those had to resume elsewhere.
    assert resumed(result) >= 200
