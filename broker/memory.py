"""Gives the operating system back the memory of what a process forgot.

The broker and the edges forget channels by the thousand; the objects go
back to the allocator, but glibc keeps the pages of its heap that they
freed, so the process's resident size stays at its peak. glibc's
`malloc_trim(0)` returns every whole free page. It walks the heap, which
costs milliseconds on a large one, so it runs only once many channels
were forgotten: when the forgetting pauses, or at most once per interval
while it goes on, and once more an interval after the last trim, for what
was freed after it. Elsewhere (musl, macOS) there is no such call and
nothing is done.

A page is kept whole by one live object in it, and a running server
leaves such objects spread over the pages a crowd freed. Three kinds are
let go before each trim. The process's own caches of what it parsed (an
edge's routes, channel ids and cursors, by path or by header, up to 4,096
entries each, all of them made while the crowd came) are emptied through
`Trimmer.caches`, and the next requests fill them again. CPython's cache
of type attribute look-ups keeps up to 4,096 attribute names alive, many
of them strings made at run time (pyzmq's socket options, the email
module's date fields), each one a block wherever it was made: the cache
is emptied, which costs a few microseconds and slows the next look-ups of
each name once. While the process holds few channels, a full garbage
collection also runs: it empties CPython's free lists (tuples, floats,
dicts, lists kept for reuse) and frees cyclic garbage old enough to have
left the young generations. It costs about half a microsecond per object
the interpreter tracks (65 ms at 100,000 held channels here), hence the bound.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

# Forgotten channels after which a trim is worth its walk of the heap.
TRIM_AFTER = 1_000
TRIM_INTERVAL = 5.0
# Channels held at most for a trim to be preceded by a full collection.
COLLECT_BELOW = 10_000


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


def _clear_type_cache() -> None:
    # Named _clear_internal_caches from Python 3.13 on, which also empties the JIT's.
    clear = getattr(sys, "_clear_internal_caches", None) or sys._clear_type_cache
    clear()


def fitted(table: dict[K, V], peak: int) -> tuple[dict[K, V], int]:
    """`table` and its new peak size: a copy sized for what it holds once it fell to a
    quarter of `peak`, since a dict never shrinks its own table as keys are deleted.

    >>> crowd = dict.fromkeys(range(1000))
    >>> for key in range(990): del crowd[key]
    >>> table, peak = fitted(crowd, 1000)
    >>> table is crowd, peak, sys.getsizeof(table) < sys.getsizeof(crowd)
    (False, 10, True)
    >>> fitted(table, peak)[0] is table
    True
    """
    size = len(table)
    if size * 4 < peak:
        return dict(table), size
    return table, max(peak, size)


def can_trim() -> bool:
    """Whether this C library has `malloc_trim` (glibc does)."""
    return _malloc_trim() is not None


class Trimmer:
    def __init__(
        self,
        after: int = TRIM_AFTER,
        interval: float = TRIM_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        collect_below: int = COLLECT_BELOW,
        collect: Callable[[], object] = gc.collect,
        clear_caches: Callable[[], None] = _clear_type_cache,
    ) -> None:
        self._trim = _malloc_trim()
        self._after = after
        self._interval = interval
        self._clock = clock
        self._collect_below = collect_below
        self._collect = collect
        self._clear_caches = clear_caches
        # The process's own caches, each emptied by its callable before a trim.
        self.caches: list[Callable[[], None]] = []
        self._forgotten = 0
        self._trimmed_at = -interval
        # When to trim once more after a crowd's last trim, None when not due.
        self._again_at: float | None = None

    def forgot(self, count: int, held: int = 0) -> bool:
        """Count the channels forgotten in a turn (0 too), `held` being those still held;
        returns whether it trimmed."""
        self._forgotten += count
        now = self._clock()
        paused = count == 0
        if self._forgotten < self._after or (
            not paused and now - self._trimmed_at < self._interval
        ):
            if not (paused and self._again_at is not None and now >= self._again_at):
                return False
            # The last of a crowd can be freed after its trim: ZeroMQ's I/O
            # threads, for one, work through its unsubscriptions in their own time.
            self._again_at = None
        else:
            self._forgotten = 0
            self._again_at = now + self._interval
        self._trimmed_at = now
        for drop in self.caches:
            drop()
        self._clear_caches()
        if held < self._collect_below:
            self._collect()
        if self._trim is not None:
            self._trim(0)
        return True
