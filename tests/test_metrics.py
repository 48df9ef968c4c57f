"""The edge's metrics location: Prometheus text, shown to allowed addresses only."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.client import Cursor, fresh, poll, publish
from tests.processes import Launcher


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_responses_by_status_and_name_the_process(launcher: Launcher) -> None:
    process, base = launcher.embedded(long_poll_timeout=1)
    channel = fresh("metrics")
    publish(base, channel, "x")
    address = urlsplit(base)
    idle = [socket.create_connection((address.hostname, address.port)) for _ in range(2)]
    with httpx.Client(timeout=10) as client:
        first = poll(client, base, channel)
        assert first.status_code == 200
        timed_out = poll(client, base, channel, Cursor().advanced(first))
        assert timed_out.status_code == 304
        response = client.get(base + "/pushserver/metrics")
    for sock in idle:
        sock.close()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    figures = samples(response.text)
    assert figures[("pushserver_edge_responses_total", (("status", "200"),))] == 1
    assert figures[("pushserver_edge_responses_total", (("status", "304"),))] == 1
    assert figures[("pushserver_edge_broker_up", ())] == 1
    assert figures[("pushserver_edge_channels", ())] >= 1
    # The two idle connections and the client's own.
    assert figures[("pushserver_edge_connections", ())] >= 3
    pids = [labels for name, labels in figures if name == "pushserver_edge_process"]
    assert pids == [(("pid", str(process.popen.pid)),)]


def test_metrics_are_refused_to_addresses_not_allowed(launcher: Launcher) -> None:
    _, base = launcher.embedded(metrics_allow_from=["192.0.2.0/24"])
    response = httpx.get(base + "/pushserver/metrics")
    assert response.status_code == 403
    assert "metrics" in response.text
