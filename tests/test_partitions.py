"""Hosts and links cut off the network, with real processes: every packet dropped, none
refused (`tests.partition`), so only timeouts can tell. A broker's host that vanishes is
failed over and steps down when it returns, and a lone broker is reached again at once; a
link between the two brokers that breaks alone never makes a second active broker, and
once it heals the backup is a replica again; an edge whose connections to the broker a
network silently drops replaces them. Through all of it every client gets every message
once, in order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.cluster import Cluster
from tests.client import fresh
from tests.partition import Partition, port_of
from tests.processes import Launcher, tcp_connections
from tests.stream import run_stream
from tests.test_failover import (
    FAILOVER_TIMEOUT,
    STORE,
    active_epoch,
    figure,
    kill_once_whole,
    pause_after,
    run,
    started_pair,
    synced,
    wait_for,
)
from tests.test_faults import edge_figures

ACTIVE = "pushserver_broker_pair_active"
DEGRADED = "pushserver_broker_pair_degraded"
FAILOVERS = "pushserver_broker_failovers_total"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Cluster]:
    with started_pair(tmp_path) as cluster:
        yield cluster


def primary_host(cluster: Cluster) -> Partition:
    """Every port of the primary's, and the backup's end of the link the primary connects to."""
    standby = cluster.push_server["standby"]
    ports = [port_of(address) for address in cluster.endpoints.values()]
    ports += [port_of(cluster.metrics_url)] + [port_of(address) for address in standby["peer"]]
    return Partition(ports)


def test_an_active_broker_whose_host_drops_off_the_network_is_failed_over_and_steps_down_on_return(
    pair: Cluster,
) -> None:
    wait_for(lambda: synced(pair, pair.backup_metrics_url), 20, "the backup's replica")
    with primary_host(pair) as partition:
        result, fault_times, deliveries = run(
            pair,
            faults=[
                (4, "cut the primary's host off the network", partition.cut),
                (4 + 4 * FAILOVER_TIMEOUT, "the network heals", partition.heal),
            ],
            duration=18,
        )
    result.report(
        "pair: active host cut off", {"pause (s)": f"{pause_after(fault_times[0], deliveries):.2f}"}
    )
    result.check()
    wait_for(lambda: synced(pair, pair.metrics_url), 30, "the old active's copy")
    assert figure(pair.metrics_url, ACTIVE) == 0.0
    assert figure(pair.backup_metrics_url, ACTIVE) == 1.0
    primary_epoch, backup_epoch = active_epoch(pair)
    assert backup_epoch > primary_epoch
    channel = fresh("after")
    posted = httpx.post(f"{pair.edge_urls[0]}/send-update/{channel}", content=b'"x"', timeout=10)
    assert posted.status_code in (200, 201, 202), posted.text


def test_a_broken_link_between_the_brokers_alone_keeps_one_active_and_once_healed_a_replica_again(
    pair: Cluster,
) -> None:
    """The active broker goes on alone (degraded) while its clients still reach it; the
    backup, which cannot know, must not be voted in beside it, and must not count its
    replica from before the break as whole once the link is back. Then the active broker
    is killed: the backup takes over with everything."""
    wait_for(lambda: synced(pair, pair.backup_metrics_url), 20, "the backup's replica")
    link = Partition(port_of(address) for address in pair.push_server["standby"]["peer"])
    seen: dict[str, float] = {}

    def heal() -> None:
        seen["degraded while cut"] = figure(pair.metrics_url, DEGRADED)
        seen["backup active while cut"] = figure(pair.backup_metrics_url, ACTIVE)
        seen["failovers while cut"] = figure(pair.backup_metrics_url, FAILOVERS)
        link.heal()

    with link:
        result, fault_times, deliveries = run(
            pair,
            faults=[
                (3, "cut the link between the brokers", link.cut),
                (3 + 3 * FAILOVER_TIMEOUT, "the link heals", heal),
                (15, "kill -9 the primary once the backup copied again", kill_once_whole(pair)),
            ],
            duration=22,
        )
    result.report(
        "pair: link cut, healed, then the active killed",
        {"pause after the kill (s)": f"{pause_after(fault_times[2], deliveries):.2f}"},
    )
    assert seen == {
        "degraded while cut": 1.0,
        "backup active while cut": 0.0,
        "failovers while cut": 0.0,
    }
    result.check()
    assert figure(pair.backup_metrics_url, ACTIVE) == 1.0


def test_a_lone_broker_cut_off_the_network_is_reached_again_within_seconds_of_its_return(
    tmp_path: Path,
) -> None:
    """Publishers and edges give up their connections within seconds of the cut and try
    again. The kernel retries an unanswered SYN 1, 2, 4, 8 and 16 s apart, so an attempt
    begun 3 or 4 s after the cut would send nothing between about 18 and 34 s after it;
    each attempt is bounded instead. The network heals 26 s after the cut, publishing ends
    4 s later, and the publisher then waits only `exit_timeout` (1 s) for its acks."""
    cluster = Cluster(
        tmp_path,
        edges=1,
        balancer=None,
        launcher=Launcher(tmp_path),
        store=STORE,
        history_file=str(tmp_path / "history"),
        broker_unreachable_timeout=60,
    ).start()
    try:
        ports = [port_of(address) for address in cluster.endpoints.values()]
        with Partition([*ports, port_of(cluster.metrics_url)]) as partition:
            result = run_stream(
                cluster,
                channels=5,
                per_channel=10,
                duration=32,
                faults=[
                    (2, "cut the broker's host off the network", partition.cut),
                    (28, "the network heals", partition.heal),
                ],
                settle=8,
            )
        result.report("lone broker cut off for 26 s", edge_figures(cluster))
        result.check()
    finally:
        cluster.stop()


def test_an_edge_whose_links_to_the_broker_are_silently_dropped_replaces_them_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """A middlebox that forgets the connections (or a cable pulled and put back): no FIN,
    no RST. The edge mostly listens, and keepalive probes no connection with a
    subscription or a request unacknowledged on it: the broker's missing heartbeats tell."""
    cluster = Cluster(
        tmp_path, edges=1, balancer=None, launcher=Launcher(tmp_path), store=STORE
    ).start()
    partitions: list[Partition] = []
    try:
        broker_ports = {port_of(address) for address in cluster.endpoints.values()}
        edge = cluster.edges[0]
        assert edge is not None

        def cut() -> None:
            ports = [
                local for local, remote in tcp_connections(edge.popen.pid) if remote in broker_ports
            ]
            assert len(ports) >= 2, ports  # the events and control links at least
            partitions.append(Partition(ports))
            partitions[-1].cut()

        result = run_stream(
            cluster,
            channels=5,
            per_channel=10,
            duration=12,
            faults=[(3, "drop the edge's connections to the broker", cut)],
            # Within `broker_timeout` (5 s) of the cut, not TCP's 30 s.
            settle=10,
        )
        result.report("edge's links silently dropped", edge_figures(cluster))
        result.check()
    finally:
        for partition in partitions:
            partition.heal()
        cluster.stop()
