"""One timer for every held poll's timeout (`edge.timeouts`), on a real loop with
short delays; only the order and number of what fires is asserted, never a time."""

from __future__ import annotations

import asyncio
import functools
import logging

import pytest

from edge.timeouts import SLACK, Timeouts

DELAY = 0.02


def test_timeouts_fire_once_each_in_the_order_they_started_and_a_cancelled_one_never() -> None:
    fired: list[int] = []

    async def main() -> None:
        timeouts = Timeouts(DELAY)
        started = [timeouts.start(functools.partial(fired.append, n)) for n in range(5)]
        timeouts.cancel(started[0])
        timeouts.cancel(started[3])
        timeouts.cancel(started[3])  # twice is once
        assert len(timeouts) == 3
        await asyncio.sleep(DELAY * 5)
        assert len(timeouts) == 0
        timeouts.cancel(started[1])  # after it fired: nothing happens
        await asyncio.sleep(DELAY * 2)

    asyncio.run(main())
    assert fired == [1, 2, 4]


def test_a_timeout_started_after_the_others_fired_or_by_a_callback_still_fires() -> None:
    fired: list[str] = []

    async def main() -> None:
        timeouts = Timeouts(DELAY)

        def first() -> None:
            fired.append("first")
            timeouts.start(lambda: fired.append("x"))

        timeouts.start(first)
        await asyncio.sleep(DELAY * 4)
        assert fired == ["first", "x"]
        timeouts.start(lambda: fired.append("later"))
        await asyncio.sleep(DELAY * 4)

    asyncio.run(main())
    assert fired == ["first", "x", "later"]


def test_timeouts_cancelled_long_before_their_time_do_not_pile_up_in_the_queue() -> None:
    async def main() -> None:
        timeouts = Timeouts(60.0)
        kept = []
        for n in range(20 * SLACK):
            timeout = timeouts.start(lambda: None)
            if n % 100 == 0:
                kept.append(timeout)
            else:
                timeouts.cancel(timeout)
        assert len(timeouts) == len(kept)
        assert timeouts.queued <= 2 * len(kept) + SLACK
        timeouts.close()
        assert timeouts.queued == len(timeouts) == 0

    asyncio.run(main())


def test_a_failing_callback_is_reported_and_the_timeouts_behind_it_still_fire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fired: list[int] = []

    def fail() -> None:
        raise RuntimeError("broken answer")

    async def main() -> None:
        timeouts = Timeouts(DELAY)
        timeouts.start(lambda: fired.append(1))
        timeouts.start(fail)
        timeouts.start(lambda: fired.append(3))
        await asyncio.sleep(DELAY * 5)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(main())
    assert fired == [1, 3]
    assert "broken answer" in caplog.text
