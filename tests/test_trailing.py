"""Which channels get a trailing sync marker at each of the broker's ticks: decided
without sockets (the lossy-link tests in test_cluster.py see it refill an edge)."""

from __future__ import annotations

from broker.trailing import TrailingSyncs


def test_a_channel_gets_its_marker_once_a_whole_tick_passed_without_a_publish() -> None:
    syncs = TrailingSyncs()
    syncs.published("news")
    assert syncs.tick() == set()  # published during this tick: maybe not its last
    assert syncs.tick() == {"news"}
    assert syncs.tick() == set()  # one marker for a burst, not one per tick


def test_a_channel_published_on_every_tick_gets_no_marker_until_it_goes_quiet() -> None:
    syncs = TrailingSyncs()
    for _ in range(5):
        syncs.published("busy")
        syncs.published("busy")
        assert syncs.tick() == set()
    assert syncs.tick() == {"busy"}


def test_channels_go_quiet_each_on_its_own() -> None:
    syncs = TrailingSyncs()
    syncs.published("a")
    syncs.published("b")
    assert syncs.tick() == set()
    syncs.published("b")
    assert syncs.tick() == {"a"}
    assert syncs.tick() == {"b"}
    syncs.published("a")
    assert syncs.tick() == set()
    assert syncs.tick() == {"a"}
