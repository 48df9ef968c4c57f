"""Timeouts that all have the same length, served by one timer of the loop.

Every held long-poll of an edge times out after the same
`long_poll_timeout`, so their deadlines come in the order the polls were
held: a queue in that order and one timer at its head serve them all.
A timer per poll costs a handle, a timer of the loop and its cancel,
which on a busy edge was more than holding the poll itself.

The trap: a cancelled timeout is only marked, not taken out of the
queue (the queue is in order, a search would cost what the timer did).
With polls answered far sooner than they time out, marked entries would
pile up for a whole timeout, so the queue is rebuilt from its live
entries once they are less than half of it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

# Entries a queue may hold beyond twice its live ones before it is rebuilt:
# small queues are never worth rebuilding.
SLACK = 1024


class Timeout:
    __slots__ = ("at", "callback")

    def __init__(self, at: float, callback: Callable[[], None] | None) -> None:
        self.at = at
        # None once cancelled or fired.
        self.callback = callback


class Timeouts:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._queue: deque[Timeout] = deque()
        self._live = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Timeouts started and neither cancelled nor fired."""
        return self._live

    @property
    def queued(self) -> int:
        """Entries the queue holds, cancelled ones included: what it costs in memory."""
        return len(self._queue)

    def start(self, callback: Callable[[], None]) -> Timeout:
        """Call `callback` `delay` seconds from now, unless `cancel` comes first."""
        loop = asyncio.get_running_loop()
        timeout = Timeout(loop.time() + self.delay, callback)
        self._queue.append(timeout)
        self._live += 1
        if self._timer is None:
            self._timer = loop.call_at(timeout.at, self._fire)
        return timeout

    def cancel(self, timeout: Timeout) -> None:
        if timeout.callback is None:
            return
        timeout.callback = None
        self._live -= 1
        queue = self._queue
        if len(queue) > 2 * self._live + SLACK:
            self._queue = deque(entry for entry in queue if entry.callback is not None)

    def close(self) -> None:
        """Forget every timeout; none fires."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for timeout in self._queue:
            timeout.callback = None
        self._queue.clear()
        self._live = 0

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        while queue and (queue[0].at <= now or queue[0].callback is None):
            timeout = queue.popleft()
            callback = timeout.callback
            if callback is None:
                continue
            timeout.callback = None
            self._live -= 1
            try:
                callback()
            except Exception as error:
                # As the loop reports a timer's failure: the timeouts behind it still fire.
                loop.call_exception_handler(
                    {"message": "a timeout's callback failed", "exception": error}
                )
            # A callback may have started or cancelled timeouts, and rebuilt the queue.
            queue = self._queue
        if queue and self._timer is None:
            self._timer = loop.call_at(queue[0].at, self._fire)
