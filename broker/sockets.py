"""ZeroMQ socket habits shared by the broker and edges.

The trap these helpers exist for: a ZeroMQ socket's file descriptor is
edge-triggered, so one task sending on a socket another task is waiting
to read can swallow the wake-up. Sending through the asyncio socket (not a
blocking shadow) lets pyzmq re-check pending events after each send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, cast

import zmq
import zmq.asyncio
import zmq.backend

# The backend's send and recv, called on a blocking socket where one message
# costs a few microseconds in all: pyzmq's Socket.send adds Python-level checks
# for draft socket types (about 0.35 µs a call), its recv a little less.
backend_send = zmq.backend.Socket.send
backend_recv = zmq.backend.Socket.recv
_backend_get = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)

# ZMTP heartbeats: a frozen peer is noticed in seconds instead of never.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
# TCP keepalive where a link has no ZMTP heartbeats: probes after a second
# of silence, a second apart, three unanswered mean the peer's host is gone.
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
# How long data may wait unacknowledged on such a link (TCP_USER_TIMEOUT):
# a lost host's connection is given up, and so is a peer that has read
# nothing for that long; it connects again and refills.
UNACKNOWLEDGED_MS = 30_000
# How long a connection attempt may wait for its peer's answer before it is
# made again, on every link: else, after a lost host or a broken network is
# back, the kernel's retries of an unanswered SYN, further and further apart
# (1, 2, 4, 8, 16, 32 s), keep a link down for up to half a minute more.
CONNECT_TIMEOUT_MS = 2_000
# How long a drain waits before checking whether it should stop.
POLL_MS = 200

# What one frame may carry beyond a message's body: its channel id (1 KiB), content
# type (1 KiB of Latin-1, twice that in UTF-8), idempotency key, ids and msgpack's
# framing, with room to spare. An edge's presence reports are cut to fit half of it.
FRAME_SLACK = 64 * 1024
# What each message held adds to the header frame of a snapshot, at most: two ids
# and a content type.
SNAPSHOT_ENTRY_BYTES = 2 * 1024 + 64


def max_frame_size(max_message_size: int) -> int:
    """The largest frame a peer may send to a broker or edge socket (ZMQ_MAXMSGSIZE).

    A peer whose frame is larger is disconnected by libzmq before the frame is
    held in memory; its socket connects again, without that frame.
    """
    return max_message_size + FRAME_SLACK


def max_reply_frame_size(max_message_size: int, max_messages: int) -> int:
    """The largest frame the broker's control socket sends an edge: a snapshot's
    header lists every message the channel holds."""
    return max_frame_size(max_message_size) + max_messages * SNAPSHOT_ENTRY_BYTES


def limit_frames(sock: zmq.Socket[bytes] | zmq.asyncio.Socket, size: int) -> None:
    sock.setsockopt(zmq.MAXMSGSIZE, size)


def configure_heartbeats(sock: zmq.Socket[bytes] | zmq.asyncio.Socket) -> None:
    """ZMTP heartbeats, on a socket that never stops reading its connections.

    libzmq 4.3 aborts the whole process (``Assertion failed: !_io_error``,
    libzmq #4364, #4767) when a heartbeating connection fails while its
    reading is paused by a full receive queue: the next heartbeat writes to
    a connection already marked broken. A publisher killed in a burst the
    broker was behind on took the broker down that way. So such a socket
    has no receive high-water mark, and is used only where the peers bound
    what they send: publishers and the broker's ingress, each publisher
    within its window of unacknowledged messages (``send_queue_size``), and
    the standby pair's link. The links to edges, whose ends must be able to
    pause (``events_hwm``, the control port's queue), have no ZMTP
    heartbeats: see `configure_keepalive`.
    """
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)


def configure_keepalive(sock: zmq.Socket[bytes] | zmq.asyncio.Socket) -> None:
    """TCP keepalive instead of ZMTP heartbeats, for the links between the broker and edges.

    Either end of the events and control links may stop reading at its
    high-water mark (``events_hwm``; control requests and replies), which
    heartbeats cannot survive (`configure_heartbeats`), and the bound is
    what keeps a flood of requests or a slow edge from costing memory
    without end. The kernel answers keepalive probes whether or not the
    process reads, so a slow peer stays connected while a lost host is
    noticed in seconds; a broker that is alive but frozen is noticed by its
    own heartbeat events, which the edge times (``broker_timeout``), and by
    control requests that time out. Keepalive probes only a connection with
    nothing unacknowledged on it, so an edge whose broker fell silent also
    connects again (`edge.feed.Feed`). Data a lost peer never acknowledges is
    given up after `UNACKNOWLEDGED_MS`, which releases its share of the
    queues; until then that share is bounded by the high-water mark.
    """
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_COUNT)
    sock.setsockopt(zmq.TCP_MAXRT, UNACKNOWLEDGED_MS)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)


def send_now(sock: zmq.asyncio.Socket, frames: list[bytes]) -> bool:
    """Send without waiting; False when the socket's queue is full or it cannot route."""
    future = cast("asyncio.Future[object]", sock.send_multipart(frames, flags=zmq.NOBLOCK))
    return future.done() and not future.cancelled() and future.exception() is None


def send_plain(sock: zmq.Socket[bytes], frame: bytes) -> bool:
    """Send one frame on a plain socket without blocking; False when it cannot take it
    (no connection with ZMQ_IMMEDIATE, or its queue is full)."""
    try:
        backend_send(sock, frame, _NOBLOCK)
    except zmq.Again:
        return False
    return True


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a plain socket has a message waiting: what to ask after any operation on
    it, since the operation may have taken its descriptor's signal."""
    # The backend's getsockopt with plain ints skips pyzmq's enum conversions.
    return bool(cast(int, _backend_get(sock, _EVENTS)) & _POLLIN)


def receive(sock: zmq.Socket[bytes]) -> list[bytes] | None:
    """The next whole message of a plain socket, or None when none waits."""
    # Tried, not asked first: a waiting message is taken without a system call,
    # where asking (EVENTS) makes one every time. The zmq.Again that ends a drain
    # costs about two questions, so a drain of two messages or more gains.
    # Frames rather than bytes: a frame says whether more follow, where asking
    # the socket (RCVMORE) costs a microsecond.
    try:
        frame = backend_recv(sock, _NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame.bytes]
    while frame.more:
        frame = backend_recv(sock, _NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


def wake_readers(sock: zmq.asyncio.Socket) -> None:
    """Re-check a socket's events after an operation that may have consumed its wake-up."""
    sock.get(zmq.EVENTS)


async def run_until(stopping: asyncio.Event, *coroutines: Coroutine[Any, Any, None]) -> None:
    """Run `coroutines` as tasks until `stopping` is set, then cancel and await them."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        await stopping.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def drain(
    sock: zmq.asyncio.Socket, handle: Callable[[list[bytes]], None], stopping: asyncio.Event
) -> None:
    """Call `handle` with every multipart message `sock` receives until `stopping` is set.

    Waits once, then reads without blocking until the queue is empty: several
    times faster than awaiting each message.
    """
    shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
    while not stopping.is_set():
        if not await sock.poll(POLL_MS, zmq.POLLIN):  # type: ignore[call-arg]
            continue
        while True:
            try:
                frames = shadow.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            handle(frames)


class Reader:
    """Whole messages of a plain socket, handed on from a reader callback of the loop.

    The way to read a socket that carries one message per publish: a
    zmq.asyncio socket costs a future, a poll and pyzmq's flag enums per
    wake-up, several times the recv itself. The trap is the edge-triggered
    descriptor: anything done on the socket (a send, a subscription) may
    take the signal of messages waiting, so it must be followed by `poke`.
    A batch is at most `batch` messages, then the loop gets a turn.
    """

    def __init__(
        self, sock: zmq.Socket[bytes], handle: Callable[[list[bytes]], None], batch: int = 250
    ) -> None:
        self._socket: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._handle = handle
        self._batch = batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(cast(int, self._socket.get(zmq.FD)), self.read)
        self.poke()  # whatever arrived before the reader was added

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(cast(int, self._socket.get(zmq.FD)))
            self._loop = None

    def poke(self) -> None:
        """After an operation on the socket: read, on the next turn, what its signal
        may have announced to nobody."""
        if self._loop is not None and not self._scheduled and readable(self._socket):
            self._scheduled = True
            self._loop.call_soon(self.read)

    def read(self) -> None:
        self._scheduled = False
        sock, handle = self._socket, self._handle
        for _ in range(self._batch):
            frames = None if self._loop is None else receive(sock)
            if frames is None:
                return
            handle(frames)
        self.poke()
