"""Resident memory of a target's parts over a workload: before, at the peak, and after.

Read from /proc/<pid>/status (VmRSS) for each part the target names (the
broker, the edge, or one process doing both), by a thread sampling a few
times a second, so the peak is the highest sample, not VmHWM: a process's
high-water mark would remember the workloads run before this one. The
trap: pages a process freed may stay resident until the allocator gives
them back, which is exactly what "after" is there to show.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ops.bench.targets import rss_bytes

SAMPLE_INTERVAL = 0.2
MIB = 1024 * 1024
# The name of all parts together, where a target has more than one.
ALL_PARTS = "server"


class MemorySampler:
    def __init__(self, parts: Callable[[], dict[str, list[int]]]) -> None:
        self.parts = parts
        self.before = self.read()
        self.peak = dict(self.before)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> dict[str, int]:
        sizes = {part: rss_bytes(pids) for part, pids in self.parts().items()}
        if len(sizes) > 1:
            sizes[ALL_PARTS] = sum(sizes.values())
        return sizes

    def sample(self) -> dict[str, int]:
        sizes = self.read()
        with self._lock:
            for part, size in sizes.items():
                self.peak[part] = max(self.peak.get(part, 0), size)
        return sizes

    def _run(self) -> None:
        while not self._stopping.wait(SAMPLE_INTERVAL):
            self.sample()

    def stop(self) -> dict[str, int]:
        """Stop sampling; returns what the parts hold now ("after")."""
        self._stopping.set()
        self._thread.join()
        return self.sample()

    def figures(self, after: dict[str, int]) -> dict[str, float]:
        figures = {}
        for part in self.before:
            figures[f"{part} MiB before"] = self.before[part] / MIB
            figures[f"{part} MiB peak"] = self.peak[part] / MIB
            figures[f"{part} MiB after"] = after[part] / MIB
            figures[f"{part} after ÷ before"] = after[part] / self.before[part]
        return figures
