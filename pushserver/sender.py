"""The ZeroMQ PUSH sockets that carry `send_update`'s messages to the broker.

Why a module of its own: ZeroMQ sockets are not thread-safe and do not
survive `fork`, so each thread of each process gets its own socket
(``threading.local`` plus a pid check: a gunicorn ``--preload`` child makes
its own context and never touches its parent's), and pyzmq does not flush
queued messages at interpreter exit, so an ``atexit`` hook closes every
socket of the process with a bounded linger.

The policy (settings in `pushserver.conf`):

* a fresh socket waits up to ``send_timeout`` for its first connection;
* while the broker is reachable, or was less than
  ``broker_unreachable_timeout`` ago (a restart), messages are queued in the
  socket, up to ``send_queue_size``, and delivered in order once it is back;
* once the broker has been unreachable for longer (or was never reached),
  `PushServerError` is raised instead, so callers are not misled.

Nothing here blocks longer than ``send_timeout``. Reachability comes from a
socket monitor drained on each send; ZMTP heartbeats make a frozen broker
show up as a disconnect. The trap: an outage is counted from the moment a
send noticed it, not from when it began, so after a long idle period up to
``broker_unreachable_timeout`` worth of messages may be queued for a broker
that is already gone.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import zmq
from zmq.utils.monitor import recv_monitor_message

from broker import wire
from pushserver import PushServerError

# ZMTP heartbeats, as the broker's sockets use: a frozen broker is noticed in seconds.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
MONITOR_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED


@dataclass(frozen=True, slots=True)
class SenderConfig:
    endpoint: str
    send_timeout: float
    unreachable_timeout: float
    queue_size: int
    exit_timeout: float
    max_message_size: int


def _load_config() -> SenderConfig:
    from django.core.exceptions import ImproperlyConfigured

    from pushserver import checks, conf

    errors = [message for message in checks.check_settings() if message.is_serious()]
    if errors:
        raise ImproperlyConfigured("; ".join(f"{error.id}: {error.msg}" for error in errors))
    return SenderConfig(
        endpoint=conf.connect_endpoint(conf.broker_endpoints()["ingress"]),
        send_timeout=conf.number("send_timeout"),
        unreachable_timeout=conf.number("broker_unreachable_timeout"),
        queue_size=int(conf.number("send_queue_size")),
        exit_timeout=conf.number("exit_timeout"),
        max_message_size=int(conf.number("max_message_size")),
    )


class _Publisher:
    """One thread's PUSH socket and the monitor that tells whether it is connected."""

    def __init__(self, process: _Process) -> None:
        config = process.config
        self.process = process
        self.thread = threading.current_thread()
        # Held while the socket is in use, so closing it from another thread
        # (atexit, `close`, the sweep of ended threads) never races a send.
        self.lock = threading.Lock()
        self.connected = False
        self.closed = False
        self.socket: zmq.Socket[bytes] = process.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, config.queue_size)
        self.socket.setsockopt(zmq.LINGER, round(config.exit_timeout * 1000))
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        self.socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
        # IMMEDIATE stays 0: messages queue while the broker is briefly away.
        self.monitor: zmq.Socket[bytes] = self.socket.get_monitor_socket(MONITOR_EVENTS)
        try:
            self.socket.connect(config.endpoint)
        except zmq.ZMQError as exc:
            self.close(0)
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"PUSH_SERVER['broker']['ingress'] {config.endpoint!r} "
                f"cannot be connected to: {exc}"
            ) from exc

    def drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            # CONNECTED is only TCP; messages flow once the ZMTP handshake is done.
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.drain_monitor()
            remaining = deadline - time.monotonic()
            if self.connected or remaining <= 0:
                return self.connected
            self.monitor.poll(max(1, round(remaining * 1000)), zmq.POLLIN)

    def close(self, linger: float) -> None:
        """Close the socket; queued messages get `linger` seconds to leave, in the background."""
        if self.closed:
            return
        self.closed = True
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=round(linger * 1000))


class _Process:
    """This process's context and sockets; a forked child builds its own."""

    def __init__(self, config: SenderConfig) -> None:
        self.pid = os.getpid()
        self.config = config
        self.context = zmq.Context()
        self.started = time.monotonic()
        # When a socket of this process was last seen connected (monotonic), or
        # when the current outage was first noticed, whichever is later.
        self.last_up: float | None = None
        self.outage_noticed = False
        self.lock = threading.Lock()
        self.publishers: list[_Publisher] = []
        self.closed = False

    def add_publisher(self) -> _Publisher | None:
        """A new socket for the calling thread; None when this process's sender is closed."""
        with self.lock:
            if self.closed:
                return None
            self._close_ended_threads()
            publisher = _Publisher(self)
            self.publishers.append(publisher)
            return publisher

    def _close_ended_threads(self) -> None:
        # A thread-per-request server would otherwise leak a socket per request.
        # An ended thread's socket is kept while it may hold messages for a
        # broker that is only restarting.
        now = time.monotonic()
        keep = []
        for publisher in self.publishers:
            if publisher.thread.is_alive() or not publisher.lock.acquire(blocking=False):
                keep.append(publisher)
                continue
            try:
                publisher.drain_monitor()
                if publisher.connected or not self.reachable_lately(now):
                    publisher.close(self.config.exit_timeout)
                else:
                    keep.append(publisher)
            finally:
                publisher.lock.release()
        self.publishers = keep

    def reachable_lately(self, now: float) -> bool:
        last_up = self.last_up
        return last_up is not None and now - last_up <= self.config.unreachable_timeout

    def unreachable_for(self, now: float) -> float:
        return now - (self.started if self.last_up is None else self.last_up)

    def shutdown(self, linger: float) -> None:
        with self.lock:
            self.closed = True
            publishers, self.publishers = self.publishers, []
        all_closed = True
        for publisher in publishers:
            # A thread still sending holds its lock for at most send_timeout.
            if publisher.lock.acquire(timeout=self.config.send_timeout * 2):
                try:
                    publisher.close(linger)
                finally:
                    publisher.lock.release()
            else:
                all_closed = False
        # term() waits for open sockets, so it would hang on one still in use.
        if all_closed:
            self.context.term()


_lock = threading.Lock()
_process: _Process | None = None
_local = threading.local()
_exiting = False
# A forked child keeps its parent's objects referenced so garbage collection
# never closes (or warns about) sockets that belong to the parent.
_inherited: list[_Process] = []


def _current_process() -> _Process:
    global _process
    if _exiting:
        raise PushServerError("the interpreter is exiting; no more messages are sent")
    process = _process
    if process is not None and process.pid == os.getpid():
        return process
    with _lock:
        if _process is not None and _process.pid != os.getpid():
            _inherited.append(_process)
            _process = None
        if _process is None:
            _process = _Process(_load_config())
        return _process


def _after_fork_in_child() -> None:
    global _lock, _process
    # Another thread of the parent may have held the lock at the fork.
    _lock = threading.Lock()
    if _process is not None:
        _inherited.append(_process)
    _process = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def publish(channel_id: str, body: bytes, content_type: str | None) -> None:
    """Queue one message for the broker, or raise `PushServerError`; blocks at most
    ``send_timeout``. `send_update` is the public way in."""
    frames = wire.encode_publish(channel_id, body, content_type)

    def send(process: _Process, publisher: _Publisher, fresh: bool) -> None:
        config = process.config
        if len(body) > config.max_message_size:
            raise PushServerError(
                f"message for channel {channel_id!r} is {len(body)} bytes, "
                f"more than max_message_size ({config.max_message_size})"
            )
        now = _observe(process, publisher, config.send_timeout if fresh else 0.0)
        if not publisher.connected and not process.reachable_lately(now):
            raise PushServerError(
                f"could not reach the push broker at {config.endpoint} "
                f"for {process.unreachable_for(now):.1f} s"
            )
        try:
            publisher.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise PushServerError(
                f"the queue of {config.queue_size} messages for the push broker at "
                f"{config.endpoint} is full"
            ) from None

    _with_publisher(send)


def broker_connected(timeout: float = 0.0) -> bool:
    """Whether the calling thread's socket to the broker is connected, waiting up to
    `timeout` seconds for it to be (a health check, say).

    >>> sender.broker_connected(timeout=0.5)
    True
    """

    def observe(process: _Process, publisher: _Publisher, fresh: bool) -> bool:
        _observe(process, publisher, timeout)
        return publisher.connected

    return _with_publisher(observe)


_T = TypeVar("_T")


def _with_publisher(use: Callable[[_Process, _Publisher, bool], _T]) -> _T:
    """Call `use` with the calling thread's socket, locked; `fresh` says it was just made."""
    # A `close` between finding the socket and locking it closes that socket;
    # the second round then uses a fresh one.
    for _ in range(2):
        process = _current_process()
        publisher: _Publisher | None = getattr(_local, "publisher", None)
        fresh = publisher is None or publisher.process is not process
        if fresh:
            publisher = process.add_publisher()
            if publisher is None:
                continue
            _local.publisher = publisher
        assert publisher is not None
        with publisher.lock:
            if not publisher.closed:
                return use(process, publisher, fresh)
    raise PushServerError("the push sender was closed while in use; try again")


def _observe(process: _Process, publisher: _Publisher, wait: float) -> float:
    """Bring `publisher.connected` and `process.last_up` up to date; returns the time."""
    was_connected = publisher.connected
    if wait > 0:
        publisher.wait_connected(wait)
    else:
        publisher.drain_monitor()
    now = time.monotonic()
    if publisher.connected:
        process.last_up = now
        process.outage_noticed = False
    elif was_connected and not process.outage_noticed:
        # Up until this drain noticed it is not: the outage counts from here.
        # Other threads noticing the same outage later must not restart its clock.
        process.last_up = now
        process.outage_noticed = True
    return now


def close() -> None:
    """Close this process's sockets, giving queued messages ``exit_timeout`` to leave.

    The next `publish` starts afresh and reads the settings again. Called at
    interpreter exit; also useful to pick up changed settings.
    """
    global _process
    with _lock:
        process, _process = _process, None
    if process is not None and process.pid == os.getpid():
        process.shutdown(process.config.exit_timeout)


@atexit.register
def _close_at_exit() -> None:
    global _exiting
    _exiting = True
    close()
