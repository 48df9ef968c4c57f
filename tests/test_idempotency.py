"""The broker's window of idempotency keys, without sockets and on the test's clock."""

from __future__ import annotations

from broker.idempotency import Keys, Recorded
from broker.wire import ChannelInfo, MessageId
from tests.clock import Clock

WINDOW = 60.0
FIRST = ChannelInfo(1, None, 2, MessageId(1_000, 0))
SECOND = ChannelInfo(2, None, 0, MessageId(1_000, 1))


def keys(clock: Clock, limit: int = 100) -> Keys:
    return Keys(WINDOW, limit, clock)


def test_a_recorded_key_gives_back_the_first_answer_on_its_channel_only(clock: Clock) -> None:
    window = keys(clock)
    assert window.get("news", "k1") is None
    window.record("news", "k1", FIRST)
    assert window.get("news", "k1") == Recorded(clock.now, FIRST)
    assert window.get("sport", "k1") is None
    assert window.get("news", "k2") is None


def test_a_key_is_forgotten_once_its_window_has_passed(clock: Clock) -> None:
    window = keys(clock)
    window.record("news", "k1", FIRST)
    clock.now += WINDOW - 0.5
    window.record("news", "k2", SECOND)
    assert window.get("news", "k1") is not None
    clock.now += 0.5
    assert window.get("news", "k1") is None
    assert window.get("news", "k2") is not None
    assert len(window) == 1


def test_beyond_the_limit_the_oldest_keys_are_forgotten_early(clock: Clock) -> None:
    window = keys(clock, limit=3)
    for n in range(5):
        window.record("news", f"k{n}", FIRST)
        clock.now += 1
    assert [key for _, key, _ in window.items()] == ["k2", "k3", "k4"]
    assert window.get("news", "k0") is None


def test_recording_a_key_again_starts_its_window_over(clock: Clock) -> None:
    window = keys(clock)
    window.record("news", "k1", FIRST)
    clock.now += 10
    window.record("news", "k2", FIRST)
    clock.now += 5
    window.record("news", "k1", SECOND)
    assert [key for _, key, _ in window.items()] == ["k2", "k1"]
    clock.now += WINDOW - 5
    assert window.get("news", "k2") is None
    assert window.get("news", "k1") == Recorded(clock.now - WINDOW + 5, SECOND)


def test_a_restored_key_has_no_answer_and_keeps_its_own_time(clock: Clock) -> None:
    """Read back from the history file after a restart: only the key and when."""
    window = keys(clock)
    window.restore("news", "old", clock.now - WINDOW - 1)
    window.restore("news", "recent", clock.now - 30)
    assert window.get("news", "old") is None
    assert window.get("news", "recent") == Recorded(clock.now - 30, None)
    assert list(window.items()) == [("news", "recent", clock.now - 30)]
    clock.now += 30
    assert window.get("news", "recent") is None
