"""The broker's figures for an operator: a small Prometheus endpoint, off unless configured.

It shows what outsiders did to the broker's ports, which its log tells of
only a few times a minute (`broker.throttled_log`): connections CURVE
refused and malformed frames dropped, by port; and how often the memory of
forgotten channels was handed back (`broker.memory`). The trap: the endpoint
serves from prometheus_client's own thread while the broker's loop counts,
so a scrape copies the counters (one C-level dict copy, atomic under the
GIL) instead of iterating them as they change.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from broker.curve import PEER, PORTS

REFUSED = "_refused"
MALFORMED = "_malformed"
MEMORY_TRIMS = "memory_trims"
CURVE_RELOADS = "curve_reloads"
CURVE_RELOADS_KEPT = "curve_reloads_kept"


# A standby pair's figures (`broker.standby`): name to (help, value), replaced whole
# by the broker's loop on each tick, so a scrape reads one consistent dict.
Gauges = Callable[[], dict[str, tuple[str, float]]]


class BrokerCollector(Collector):
    def __init__(self, counters: Counter[str], gauges: Gauges | None = None) -> None:
        self.counters = counters
        self.gauges = gauges

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if self.gauges is not None:
            for name, (description, value) in self.gauges().items():
                if name.endswith("_total"):
                    yield CounterMetricFamily(name[: -len("_total")], description, value=value)
                else:
                    yield GaugeMetricFamily(name, description, value=value)
        counts = dict(self.counters)
        refused = CounterMetricFamily(
            "pushserver_broker_curve_refused",
            "Connections CURVE refused (a key not in the port's allow-list, or no key), by port.",
            labels=["port"],
        )
        malformed = CounterMetricFamily(
            "pushserver_broker_malformed_frames",
            "Frames dropped because they do not follow the wire format, by port.",
            labels=["port"],
        )
        # The standby link's port shows only where a pair counted something on it.
        ports = (*PORTS, PEER) if PEER + REFUSED in counts or PEER + MALFORMED in counts else PORTS
        for port in ports:
            refused.add_metric([port], counts.get(port + REFUSED, 0))
            malformed.add_metric([port], counts.get(port + MALFORMED, 0))
        yield refused
        yield malformed
        yield CounterMetricFamily(
            "pushserver_broker_memory_trims",
            "Times free memory was handed back to the operating system after many channels "
            "were forgotten.",
            value=counts.get(MEMORY_TRIMS, 0),
        )
        reloads = CounterMetricFamily(
            "pushserver_broker_curve_reloads",
            "Times the CURVE allow-lists were read again (SIGHUP): read, or kept as they were "
            "because one could not serve.",
            labels=["result"],
        )
        reloads.add_metric(["read"], counts.get(CURVE_RELOADS, 0))
        reloads.add_metric(["kept"], counts.get(CURVE_RELOADS_KEPT, 0))
        yield reloads


class MetricsServer:
    """prometheus_client's HTTP server for these counters, on `address` (``host:port``)."""

    def __init__(self, address: str, counters: Counter[str], gauges: Gauges | None = None) -> None:
        host, _, port = address.rpartition(":")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BrokerCollector(counters, gauges))
        server: Any
        thread: threading.Thread
        server, thread = prometheus_client.start_http_server(
            int(port), host.strip("[]"), registry=registry
        )
        self._server, self._thread = server, thread
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
