"""Who is listening: the broker's sum of the subscribers every edge reports.

The rules first, with the clock under the test's control; then a real
broker reporting them in channel info to edges that are only DEALER
sockets here, so nothing but the test reports presence.
"""

from __future__ import annotations

import itertools
import sys
import tracemalloc

import pytest
import zmq

from broker import wire
from broker.presence import Presence
from tests.clock import Clock
from tests.processes import Launcher, eventually

# The broker's channels, as `Sequencer.held_id` gives them.
KNOWN = {"c": "c", "d": "d"}.get


@pytest.fixture
def presence(clock: Clock) -> Presence:
    return Presence(clock)


def test_subscribers_reported_by_several_edges_are_summed_per_channel(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"c": (3, clock.now), "d": (1, clock.now)}, False, KNOWN)
    presence.report(b"edge-2", {"c": (2, clock.now)}, False, KNOWN)
    assert (presence.subscribers("c"), presence.subscribers("d")) == (5, 1)


def test_an_edges_report_replaces_what_it_reported_before(presence: Presence, clock: Clock) -> None:
    presence.report(b"edge-1", {"c": (3, clock.now)}, False, KNOWN)
    presence.report(b"edge-2", {"c": (2, clock.now)}, False, KNOWN)
    presence.report(b"edge-1", {"c": (1, clock.now)}, False, KNOWN)
    assert presence.subscribers("c") == 3
    presence.report(b"edge-1", {"c": (0, clock.now)}, False, KNOWN)
    assert presence.subscribers("c") == 2


def test_a_partial_report_leaves_the_channels_it_does_not_name(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"c": (3, clock.now), "d": (4, clock.now)}, False, KNOWN)
    presence.report(b"edge-1", {"c": (1, clock.now)}, False, KNOWN)
    assert (presence.subscribers("c"), presence.subscribers("d")) == (1, 4)


def test_a_full_report_counts_the_channels_it_does_not_name_as_empty_on_that_edge(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"c": (3, clock.now), "d": (4, clock.now)}, False, KNOWN)
    presence.report(b"edge-2", {"d": (2, clock.now)}, False, KNOWN)
    presence.report(b"edge-1", {"c": (1, clock.now)}, True, KNOWN)
    assert (presence.subscribers("c"), presence.subscribers("d")) == (1, 2)


def test_a_negative_count_counts_as_none(presence: Presence, clock: Clock) -> None:
    presence.report(b"edge-1", {"c": (2, clock.now)}, False, KNOWN)
    presence.report(b"edge-2", {"c": (-7, clock.now)}, False, KNOWN)
    assert presence.subscribers("c") == 2


def test_reports_of_channels_the_broker_does_not_hold_are_ignored(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"unknown": (3, clock.now)}, False, KNOWN)
    assert presence.subscribers("unknown") == 0
    assert presence.requested("unknown") is None
    # Once the channel exists, the same edge's counts start from nothing.
    presence.report(b"edge-1", {"unknown": (1, clock.now)}, False, {"unknown": "unknown"}.get)
    assert presence.subscribers("unknown") == 1


def test_requested_is_the_latest_request_any_edge_reported(
    presence: Presence, clock: Clock
) -> None:
    assert presence.requested("c") is None
    # An edge whose channel was never asked for reports 0: still never requested.
    presence.report(b"edge-1", {"c": (0, 0.0)}, False, KNOWN)
    assert presence.requested("c") is None
    presence.report(b"edge-1", {"c": (1, 900.0)}, False, KNOWN)
    presence.report(b"edge-2", {"c": (1, 950.0)}, False, KNOWN)
    presence.report(b"edge-1", {"c": (1, 920.0)}, False, KNOWN)
    assert presence.requested("c") == 950.0


def test_edges_silent_for_the_timeout_are_forgotten_with_their_subscribers(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"c": (3, clock.now)}, False, KNOWN)
    presence.report(b"edge-2", {"c": (2, clock.now)}, False, KNOWN)
    presence.report(b"edge-3", {"c": (4, clock.now)}, False, KNOWN)
    clock.now += 4
    presence.report(b"edge-2", {}, False, KNOWN)  # still there, nothing changed
    assert presence.forget_silent_edges(5) == []
    clock.now += 2
    assert presence.forget_silent_edges(5) == [b"edge-1", b"edge-3"]
    assert presence.subscribers("c") == 2
    # When the last request was is history, not presence: it stays.
    assert presence.requested("c") == 1_000.5
    clock.now += 10
    assert presence.forget_silent_edges(5) == [b"edge-2"]
    assert presence.subscribers("c") == 0


def test_an_edge_reporting_again_after_it_was_forgotten_counts_from_nothing(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"c": (3, clock.now)}, False, KNOWN)
    clock.now += 10
    assert presence.forget_silent_edges(5) == [b"edge-1"]
    presence.report(b"edge-1", {"c": (1, clock.now)}, False, KNOWN)
    assert presence.subscribers("c") == 1


def test_a_forgotten_channel_has_no_subscribers_and_was_never_requested(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"c": (3, clock.now), "d": (1, clock.now)}, False, KNOWN)
    presence.report(b"edge-2", {"c": (2, clock.now)}, False, KNOWN)
    presence.forget_channel("c")
    assert presence.subscribers("c") == 0
    assert presence.requested("c") is None
    assert presence.subscribers("d") == 1
    # Made again, the channel counts only what edges report from now on:
    # an edge's old count is not taken back from the new figure.
    presence.report(b"edge-2", {"c": (1, clock.now)}, False, KNOWN)
    presence.report(b"edge-1", {"c": (0, clock.now)}, False, KNOWN)
    assert presence.subscribers("c") == 1


def test_the_request_table_is_rebuilt_smaller_once_most_of_its_channels_were_forgotten(
    presence: Presence, clock: Clock
) -> None:
    crowd = {f"crowd-{n}": f"crowd-{n}" for n in range(1_000)}
    presence.report(b"edge-1", dict.fromkeys(crowd, (0, clock.now)), False, crowd.get)
    for channel_id in list(crowd)[:500]:
        presence.forget_channel(channel_id)
    assert presence.rebuilds == 0
    for channel_id in list(crowd)[500:]:
        presence.forget_channel(channel_id)
    assert presence.rebuilds >= 1
    assert presence.requested("crowd-0") is None
    presence.report(b"edge-1", {"crowd-1": (1, clock.now)}, False, crowd.get)
    assert presence.requested("crowd-1") == clock.now
    assert presence.subscribers("crowd-1") == 1


def test_a_crowd_of_held_polls_that_left_gives_back_the_memory_of_its_counts(
    presence: Presence, clock: Clock
) -> None:
    crowd = {f"crowd-{n}": f"crowd-{n}" for n in range(20_000)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for edge in (b"edge-1", b"edge-2"):
            presence.report(edge, dict.fromkeys(crowd, (1, 0.0)), True, crowd.get)
        assert presence.subscribers("crowd-7") == 2
        held = tracemalloc.get_traced_memory()[0] - before
        # Every poll ends on one edge; the other edge goes silent and is forgotten.
        presence.report(b"edge-1", {}, True, crowd.get)
        clock.now += 60
        presence.report(b"edge-1", {"crowd-7": (1, 0.0)}, False, crowd.get)
        assert presence.forget_silent_edges(30) == [b"edge-2"]
        left = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert presence.subscribers("crowd-7") == 1 and presence.subscribers("crowd-8") == 0
    # The tables of the edge's counts and of the sums were rebuilt at their size.
    assert presence.rebuilds >= 2
    assert left < held / 20, (held, left)


def test_a_channel_is_in_use_while_held_or_within_the_linger_of_a_request_heard(
    presence: Presence, clock: Clock
) -> None:
    assert not presence.in_use("c", 60)
    presence.report(b"edge-1", {"c": (1, 1.0)}, False, KNOWN)
    clock.now += 1_000
    assert presence.in_use("c", 60)  # held, however long ago it was asked for
    presence.report(b"edge-1", {"c": (0, 1.0)}, False, KNOWN)
    assert not presence.in_use("c", 60)
    # The edge's time of the request is old, but the broker heard of it now.
    presence.report(b"edge-1", {"c": (0, 2.0)}, False, KNOWN)
    clock.now += 59
    assert presence.in_use("c", 60)
    clock.now += 2
    assert not presence.in_use("c", 60)


def test_a_clock_set_back_restarts_the_linger_of_a_request(
    presence: Presence, clock: Clock
) -> None:
    presence.report(b"edge-1", {"c": (0, clock.now)}, False, KNOWN)
    clock.now -= 3_600
    assert presence.in_use("c", 60)
    clock.now += 61
    assert not presence.in_use("c", 60)


def test_counts_are_kept_under_the_brokers_channel_ids_not_the_reports_strings(
    presence: Presence, clock: Clock
) -> None:
    """msgpack interns a report's keys; keeping them would grow the interned table for good."""
    held = "".join(["ro", "om"])
    reported = "".join(["ro", "om"])
    assert held is not reported
    references = sys.getrefcount(reported)
    presence.report(b"edge-1", {reported: (2, clock.now)}, False, {held: held}.get)
    assert presence.subscribers("room") == 2 and presence.requested("room") == clock.now
    assert sys.getrefcount(reported) == references


# -- a real broker reporting presence in channel info --------------------------


class Control:
    """What an edge says on the broker's control socket, from one DEALER of its own."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, 10_000)
        self.socket.connect(endpoint)
        self._ids = itertools.count(1)

    def ask(self, kind: str, channel_id: str) -> wire.Reply:
        request = wire.Request(kind, next(self._ids), channel_id)
        self.socket.send_multipart(wire.encode_request(request))
        reply = wire.decode_reply(self.socket.recv_multipart())
        assert reply.request_id == request.request_id
        return reply

    def info(self, channel_id: str) -> wire.ChannelInfo:
        reply = self.ask(wire.INFO, channel_id)
        assert reply.found and reply.info is not None, reply
        return reply.info

    def report(self, counts: dict[str, tuple[int, float]], full: bool = False) -> None:
        self.socket.send_multipart(wire.encode_presence(wire.Presence(counts, full)))


@pytest.fixture
def edges(launcher: Launcher, context: zmq.Context[zmq.Socket[bytes]]) -> tuple[Control, Control]:
    _, endpoints = launcher.broker()
    return Control(context, endpoints["control"]), Control(context, endpoints["control"])


def test_channel_info_reports_the_subscribers_of_every_edge_and_the_latest_request(
    edges: tuple[Control, Control],
) -> None:
    first, second = edges
    assert first.ask(wire.CREATE, "room").found
    first.report({"room": (3, 1_700_000_000.0)})
    second.report({"room": (2, 1_700_000_100.0)})
    # A broker answers one socket's requests in order, but two sockets in any.
    eventually(lambda: second.info("room").subscribers == 5, 10, "both edges counted")
    assert first.info("room").requested == 1_700_000_100.0
    # A publish says whether anyone was waiting anywhere (the publisher's 201).
    assert first.ask(wire.PUBLISH, "room").info.subscribers == 5  # type: ignore[union-attr]


def test_a_deleted_channel_made_again_has_no_subscribers_and_no_requests(
    edges: tuple[Control, Control],
) -> None:
    first, _ = edges
    assert first.ask(wire.CREATE, "room").found
    first.report({"room": (3, 1_700_000_000.0)})
    deleted = first.ask(wire.DELETE, "room")
    # Deleting reports the channel as it was, its subscribers included.
    assert deleted.found and deleted.info is not None
    assert (deleted.info.subscribers, deleted.info.requested) == (3, 1_700_000_000.0)
    assert not first.ask(wire.INFO, "room").found
    assert first.ask(wire.CREATE, "room").found
    made_again = first.info("room")
    assert (made_again.subscribers, made_again.requested) == (0, None)


def test_the_broker_forgets_the_subscribers_of_an_edge_that_stopped_reporting(
    edges: tuple[Control, Control],
) -> None:
    first, second = edges
    assert first.ask(wire.CREATE, "room").found
    first.report({"room": (3, 1_700_000_000.0)})
    second.report({"room": (2, 1_700_000_000.0)})
    eventually(lambda: first.info("room").subscribers == 5, 10, "both edges counted")

    def only_the_reporting_edge_counted() -> bool:
        # A live edge reports everything it holds once a second.
        first.report({"room": (3, 1_700_000_000.0)}, full=True)
        return first.info("room").subscribers == 3

    # The broker's presence timeout is 5 s.
    eventually(only_the_reporting_edge_counted, 15, "the silent edge forgotten")
