"""The tests start processes as the local cluster launcher does, with the tests' own settings.

Faults are injected here, in the test process, never through settings: a
site's PUSH_SERVER cannot switch one on. `LossyLink` stands on the link
from the broker to one edge and loses live messages, as a high-water mark
or a slow joiner would.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from broker import curve, wire
from ops import launch
from ops.launch import (
    ANY_PORT,
    BROKER_LINE,
    EDGE_LINE,
    ROOT,
    Process,
    eventually,
    free_port,
)

__all__ = [
    "ANY_PORT",
    "BROKER_LINE",
    "EDGE_LINE",
    "ROOT",
    "Launcher",
    "LossyLink",
    "Process",
    "eventually",
    "free_port",
    "memory_kib",
    "starved_main_thread",
]

# How long the relay waits for traffic before looking at its stop flag.
_POLL_MS = 50


class Launcher(launch.Launcher):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder, base="tests.django_settings")


class LossyLink:
    """A relay between the broker's events socket and an edge that drops every Nth live message.

    Point an edge's ``broker['events']`` at `endpoint`. Subscriptions go up
    as the edge sent them (repeats and unsubscriptions included, which the
    broker answers with sync markers); events come down, except every
    `drop_every`-th channel message. Heartbeats and sync markers always pass,
    so the edge keeps the broker and learns of the newest ids.

    With `curve` (a ``PUSH_SERVER['curve']`` dict), the relay connects as an
    edge does and serves the edge with the broker's own keys, without an
    allow-list of its own.

    Use as a context manager; the sockets belong to the relay's thread until
    it has stopped.
    """

    def __init__(
        self, events: str, drop_every: int, curve_keys: dict[str, Any] | None = None
    ) -> None:
        if drop_every < 1:
            raise ValueError(f"drop_every must be at least 1, got {drop_every}")
        self.drop_every = drop_every
        self.dropped = 0
        self.passed = 0
        self._context = zmq.Context()
        self._upstream = self._context.socket(zmq.XSUB)
        self._downstream = self._context.socket(zmq.XPUB)
        for sock in (self._upstream, self._downstream):
            sock.setsockopt(zmq.LINGER, 0)
            # The relay itself must lose nothing but what it drops on purpose.
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        self._downstream.setsockopt(zmq.XPUB_VERBOSER, 1)
        if curve_keys is not None:
            files = curve.ClientFiles(
                Path(curve_keys["broker_public_key"]), Path(curve_keys["edge_secret_key"])
            )
            curve.apply_client(self._upstream, curve.load_client_keys(files))
            public, secret = curve.key_pair(Path(curve_keys["broker_secret_key"]))
            self._downstream.curve_secretkey = secret
            self._downstream.curve_publickey = public
            self._downstream.curve_server = True
        self._upstream.connect(events)
        port = self._downstream.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="lossy-link", daemon=True)

    def __enter__(self) -> LossyLink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(5)
        if self._thread.is_alive():
            raise AssertionError("the lossy link's relay did not stop")
        self._upstream.close()
        self._downstream.close()
        self._context.term()

    def _relay(self) -> None:
        poller = zmq.Poller()
        poller.register(self._upstream, zmq.POLLIN)
        poller.register(self._downstream, zmq.POLLIN)
        messages = 0
        while not self._stopping.is_set():
            for sock, _ in poller.poll(_POLL_MS):
                if sock is self._downstream:
                    self._upstream.send_multipart(self._downstream.recv_multipart())
                    continue
                frames = self._upstream.recv_multipart()
                if self._is_message(frames):
                    messages += 1
                    if messages % self.drop_every == 0:
                        self.dropped += 1
                        continue
                    self.passed += 1
                self._downstream.send_multipart(frames)

    @staticmethod
    def _is_message(frames: list[bytes]) -> bool:
        try:
            return isinstance(wire.decode_event(frames), wire.Message)
        except wire.WireError:
            return False  # the edge's to count and drop


def memory_kib(pid: int, field: str) -> int:
    """A figure of /proc/<pid>/status in KiB: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """The (local, remote) ports of the established TCP connections process `pid` holds
    (IPv4)."""
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(descriptor)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    connections = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        # fields: slot, local address, remote address, state (01: established), …, inode
        if fields[3] == "01" and fields[9] in inodes:
            local, remote = (int(field.rpartition(":")[2], 16) for field in fields[1:3])
            connections.append((local, remote))
    return connections


def tcp_peer_ports(pid: int) -> list[int]:
    """The remote ports of the established TCP connections process `pid` holds (IPv4)."""
    return [remote for _, remote in tcp_connections(pid)]


@contextlib.contextmanager
def starved_main_thread(pid: int) -> Iterator[None]:
    """Keep process `pid`'s main thread (its event loop) almost off the CPU, its other threads on.

    The main thread is pinned to one CPU at `SCHED_IDLE` beside a busy loop
    at normal priority, so it runs a fraction of a percent of the time while
    libzmq's I/O threads go on reading, writing and heartbeating: a loop far
    behind its sockets, as a busy process is, without changing its code.
    """
    before = os.sched_getaffinity(pid)
    cpu = min(before)
    hog = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    try:
        # Linux applies both to the one thread whose id is `pid`: the main thread.
        os.sched_setaffinity(pid, {cpu})
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        yield
    finally:
        hog.kill()
        hog.wait()
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, before)
        # Back to a normal share, or it crawls whenever other tests keep the CPUs busy;
        # without privileges Linux refuses (RLIMIT_NICE), and it runs on as it can.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
