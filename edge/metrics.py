"""The edge's figures in Prometheus' text format, at the metrics location.

Counts live where they happen (the feed, the passthrough, the subscriber
location); this module only reads them when scraped, so counting costs a
dict increment and nothing is kept twice.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from edge.access import TrustedCallers
from edge.feed import Feed
from edge.handlers import PushHandler
from edge.passthrough import Passthrough
from edge.subscriber import Subscribers


class EdgeCollector(Collector):
    def __init__(
        self,
        requests: Counter[str],
        feed: Feed,
        passthrough: Passthrough,
        connections: Callable[[], int],
        connection_events: Counter[str],
        subscribers: Subscribers,
    ) -> None:
        self.requests = requests
        self.subscribers = subscribers
        self.feed = feed
        self.passthrough = passthrough
        self.connections = connections
        self.connection_events = connection_events

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        responses = CounterMetricFamily(
            "pushserver_edge_responses",
            "Subscriber location responses and requests refused before any location, by status.",
            labels=["status"],
        )
        for status, count in sorted(self.requests.items()):
            responses.add_metric([status], count)
        yield responses
        events = CounterMetricFamily(
            "pushserver_edge_connection_events",
            "Connections closed at a deadline (head_late, body_late, idle, output_stalled) "
            "or refused at max_connections (over_capacity), requests refused (malformed, "
            "head_too_large, body_too_large) and the edge's own failures, by event.",
            labels=["event"],
        )
        for event, count in sorted(self.connection_events.items()):
            events.add_metric([event], count)
        yield events
        feed = CounterMetricFamily(
            "pushserver_edge_feed_events",
            "Events on the link to the broker: refills after gaps, broker restarts, "
            "malformed frames, injected drops.",
            labels=["event"],
        )
        for event, count in sorted(self.feed.counters.items()):
            feed.add_metric([event], count)
        yield feed
        calls = CounterMetricFamily(
            "pushserver_edge_passthrough_calls",
            "Calls to Django's passthrough view, by outcome.",
            labels=["outcome"],
        )
        for outcome, count in sorted(self.passthrough.counters.items()):
            calls.add_metric([outcome.removeprefix("passthrough_")], count)
        yield calls
        buffers = self.feed.buffers.values()
        subscribers = self.subscribers
        yield GaugeMetricFamily(
            "pushserver_edge_held_polls", "Long-polls held now.", value=subscribers.held_polls
        )
        streams = subscribers.streams
        yield GaugeMetricFamily(
            "pushserver_edge_streams", "EventSource streams open now.", value=len(streams.open)
        )
        closed = CounterMetricFamily(
            "pushserver_edge_streams_closed",
            "EventSource streams ended, by reason: the client left (client), its channel was "
            "deleted (deleted), its reader fell stream_buffer behind (slow), the edge stopped "
            "(stopping).",
            labels=["reason"],
        )
        for reason, count in sorted(streams.closed.items()):
            closed.add_metric([reason], count)
        yield closed
        yield GaugeMetricFamily(
            "pushserver_edge_channels", "Channels this edge follows.", value=len(buffers)
        )
        yield GaugeMetricFamily(
            "pushserver_edge_connections",
            "HTTP connections open now (held polls, idle keep-alives and the rest).",
            value=self.connections(),
        )
        yield GaugeMetricFamily(
            "pushserver_edge_broker_up",
            "1 while heartbeats arrive from the broker.",
            value=0 if self.feed.broker_away else 1,
        )
        info = GaugeMetricFamily("pushserver_edge_process", "This edge process.", labels=["pid"])
        info.add_metric([str(os.getpid())], 1)
        yield info


def registry_for(
    requests: Counter[str],
    feed: Feed,
    passthrough: Passthrough,
    connections: Callable[[], int],
    connection_events: Counter[str],
    subscribers: Subscribers,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        EdgeCollector(requests, feed, passthrough, connections, connection_events, subscribers)
    )
    return registry


class MetricsHandler(PushHandler):
    ALLOWED = ("GET",)

    def initialize(self, registry: CollectorRegistry, callers: TrustedCallers) -> None:
        self.registry = registry
        self.callers = callers

    def get(self) -> None:
        if not self.callers.admit(self.request):
            self.refuse(403, "metrics are not shown to this address")
        self.set_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
        self.finish(prometheus_client.generate_latest(self.registry))
