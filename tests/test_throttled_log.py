"""ThrottledLog: a few lines per kind and interval, the rest counted and told later."""

from __future__ import annotations

import logging

import pytest

from broker.throttled_log import ThrottledLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttled(clock: Clock) -> ThrottledLog:
    logger = logging.getLogger("tests.throttled_log")
    logger.setLevel(logging.INFO)
    return ThrottledLog(logger, lines=3, interval=10.0, clock=clock)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_only_the_first_lines_of_a_kind_in_an_interval_are_logged(
    throttled: ThrottledLog, caplog: pytest.LogCaptureFixture
) -> None:
    told = [throttled.warning("malformed", "bad request %d", number) for number in range(5)]
    assert told == [True, True, True, False, False]
    assert messages(caplog) == ["bad request 0", "bad request 1", "bad request 2"]
    assert {record.levelno for record in caplog.records} == {logging.WARNING}


def test_each_kind_has_its_own_allowance(
    throttled: ThrottledLog, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(4):
        throttled.warning("malformed", "bad")
    assert throttled.info("late", "slow")
    assert messages(caplog) == ["bad", "bad", "bad", "slow"]


def test_the_next_interval_logs_again_and_tells_how_many_lines_were_left_out(
    throttled: ThrottledLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(7):
        throttled.warning("malformed", "bad")
    clock.now += 9.9
    assert not throttled.warning("malformed", "bad")
    clock.now += 0.1
    assert throttled.warning("malformed", "bad again")
    left_out = "(5 more of these were not logged since the one before)"
    assert messages(caplog)[-1] == f"bad again {left_out}"
    assert throttled.warning("malformed", "and again")
    assert messages(caplog)[-1] == "and again"


def test_a_line_below_the_loggers_level_is_neither_logged_nor_counted(
    throttled: ThrottledLog, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(5):
        assert not throttled.log(logging.DEBUG, "malformed", "unseen")
    assert [throttled.warning("malformed", "seen") for _ in range(3)] == [True] * 3
    assert messages(caplog) == ["seen"] * 3


def test_a_traceback_goes_with_the_line_it_was_given_to(
    throttled: ThrottledLog, caplog: pytest.LogCaptureFixture
) -> None:
    error = ValueError("broken")
    throttled.log(logging.ERROR, "failed", "failed on %s", "GET /", exc_info=error)
    assert caplog.records[0].exc_info is not None
    assert caplog.records[0].exc_info[1] is error


@pytest.mark.parametrize(("lines", "interval"), [(0, 10.0), (3, 0.0)])
def test_an_allowance_that_logs_nothing_is_refused(lines: int, interval: float) -> None:
    with pytest.raises(ValueError, match="at least one line per positive interval"):
        ThrottledLog(logging.getLogger("tests.throttled_log"), lines, interval)
