"""A log for what outsiders send: at most a few lines per kind per interval.

Bad input arrives as fast as a peer can send it, and a line per request or
frame would make logging the bottleneck and bury everything else. So each
kind of event (a malformed request, a late request head, a malformed
frame) is told of at most `lines` times per `interval`; the lines left out
are counted and their number told with the next line of that kind. The
trap: a burst followed by silence leaves its count untold until that kind
comes again, so the full figures belong in the metrics, not here. Not
thread-safe: each event loop keeps its own.

    log = ThrottledLog(logging.getLogger("pushserver.edge"))
    log.warning("malformed", "refused a request from %s: %s", address, reason)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

# Lines told per kind and interval (seconds), wherever the project logs bad input.
LOG_LINES = 5
LOG_INTERVAL = 60.0


@dataclass(slots=True)
class _Window:
    started: float
    told: int = 0
    left_out: int = 0


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        lines: int = LOG_LINES,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lines < 1 or interval <= 0:
            raise ValueError(
                f"expected at least one line per positive interval, got {lines} per {interval} s"
            )
        self.logger = logger
        self.lines = lines
        self.interval = interval
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def warning(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, message, *args)

    def log(
        self,
        level: int,
        kind: str,
        message: str,
        *args: object,
        exc_info: BaseException | bool | None = None,
    ) -> bool:
        """Log `message % args` unless `kind` has had its lines this interval; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        window = self._windows.get(kind)
        left_out = 0
        if window is None or now - window.started >= self.interval:
            if window is not None:
                left_out = window.left_out
            window = self._windows[kind] = _Window(now)
        if window.told >= self.lines:
            window.left_out += 1
            return False
        window.told += 1
        if left_out:
            message += " (%d more of these were not logged since the one before)"
            args = (*args, left_out)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True
