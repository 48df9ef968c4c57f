"""The events socket's high-water mark from a byte budget, with the clock under the test's
control: what a subscriber's queue may hold is about the budget, whatever the messages weigh."""

from __future__ import annotations

from broker.hwm import UNBOUNDED, QueueMark
from tests.clock import Clock

MIB = 1024 * 1024


def test_small_messages_leave_the_configured_mark() -> None:
    mark = QueueMark(64 * MIB, 100_000, clock=Clock(0.0))
    assert mark.mark == 100_000
    assert mark.largest_fitting == 64 * MIB // 100_000
    assert mark.sending(mark.largest_fitting // 2) is None


def test_a_large_message_lowers_the_mark_so_the_queue_holds_about_the_budget() -> None:
    mark = QueueMark(64 * MIB, 100_000, clock=Clock(0.0))
    assert mark.sending(MIB) == 64
    assert mark.largest_fitting == MIB
    assert mark.sending(4 * MIB) == 16
    # A smaller one fits the lower mark: no change.
    assert mark.sending(2 * MIB) is None
    assert mark.mark == 16


def test_a_message_larger_than_the_budget_leaves_room_for_one() -> None:
    mark = QueueMark(MIB, 1_000, clock=Clock(0.0))
    assert mark.sending(10 * MIB) == 1


def test_the_mark_goes_back_up_once_no_large_message_was_sent_for_a_while() -> None:
    clock = Clock(0.0)
    mark = QueueMark(64 * MIB, 100_000, raise_after=10, clock=clock)
    mark.sending(MIB)
    clock.now = 9
    assert mark.relax() is None
    mark.sending(MIB)  # still large ones: the wait starts again
    clock.now = 18
    assert mark.relax() is None
    clock.now = 20
    assert mark.relax() == 100_000
    assert mark.relax() is None


def test_no_budget_or_no_count_cap_turns_the_byte_bound_off() -> None:
    for budget, most in ((0, 100_000), (64 * MIB, 0)):
        mark = QueueMark(budget, most, clock=Clock(0.0))
        assert mark.mark == most
        assert mark.largest_fitting == UNBOUNDED
