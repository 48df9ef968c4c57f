"""The ZeroMQ sockets that carry `send_update`'s messages to the broker, and their acks.

ZeroMQ sockets are not thread-safe and do not survive `fork`, so each
thread of each process sends on a DEALER socket of its own
(``threading.local`` plus a pid check: a gunicorn ``--preload`` child makes
its own context and never touches its parent's). What a socket has sent
and what it must write again is its `broker.outbox.Outbox`; this module
carries frames and acks between outboxes and sockets, and keeps the
process's threads and hooks. Together they guarantee that a message
`send_update` accepted is sequenced exactly once while this process lives,
across broker restarts, in the order each thread sent it, provided the
broker keeps a history file (``history_file``, which records each
publisher's numbers with its messages). Without one, a restarted broker
does not know this publisher: a message the old broker had sequenced but
not yet acknowledged when it died is sequenced again by the new one (a
repeat, never a loss).

Each socket has a lock; whoever holds it may use the socket, which is how
one flusher thread per process serves every socket: every ~100 ms, while
any socket holds unacknowledged messages, it takes the acks and writes
what the outbox says is due, so messages queued during an outage reach the
broker once it is back even if the application sends nothing more. It is
a daemon thread, started when needed and ending when nothing is pending.
At interpreter exit (``atexit``) and in `close`, the queues get up to
``exit_timeout`` to be acknowledged; then the sockets close with no linger.

The policy (settings in `pushserver.conf`):

* a fresh socket waits up to ``send_timeout`` for its first connection;
* while the broker is reachable, or was less than
  ``broker_unreachable_timeout`` ago (a restart), messages are queued, up
  to ``send_queue_size`` unacknowledged per thread, and delivered in order
  once it is back; a full queue is an error (after waiting up to
  ``send_timeout`` for acks while connected);
* once the broker has been unreachable for longer, `PushServerError` is
  raised instead, so callers are not misled. A process that has not
  reached the broker yet counts the outage from its first send (or from
  `close`), so one started during a broker restart (a deploy restarting
  both) queues like one that was already running.

Nothing here blocks a sender longer than ``send_timeout``. Writes use
``ZMQ_IMMEDIATE``, so nothing waits inside a connection that may die:
messages wait in the outbox instead. Reachability comes from a socket
monitor; ZMTP heartbeats make a frozen broker show up as a disconnect.

What a message costs: asking a socket whether anything arrived costs as
much as writing to it, so a sender that keeps sending looks at its monitor
and takes its acks only every ``CHECK_INTERVAL`` (5 ms) or ``CHECK_EVERY``
messages, at once when a write fails or the connection is down, and
before the queue can reach ``send_queue_size``; in between a message is
packed into one frame and written, nothing more.

The traps:

* an outage is counted from the moment a sender or the flusher noticed
  it, not from when it began; the flusher only runs while something is
  unacknowledged, so after a long idle period up to
  ``broker_unreachable_timeout`` worth of messages may be queued for a
  broker that is already gone;
* messages still unacknowledged when ``exit_timeout`` runs out at exit
  are lost with the process, and so is everything queued if the process
  is killed: the guarantee holds while the process lives;
* a thread that ended keeps its socket while it has unacknowledged
  messages (the flusher delivers them); it is closed once they are.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from broker import wire
from broker.choice import Choice
from broker.curve import ClientKeys, apply_client, load_client_keys
from broker.outbox import Outbox
from broker.sockets import (
    backend_send,
    configure_heartbeats,
    limit_frames,
    max_frame_size,
    send_plain,
)
from broker.throttled_log import ThrottledLog
from pushserver import PushServerError

log = logging.getLogger("pushserver")

MONITOR_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
# How often the flusher looks at sockets with unacknowledged messages.
FLUSH_INTERVAL = 0.1
# How long a wait for acks sleeps at most before looking again.
POLL_SLICE = 0.05
# A sender looks at its monitor and takes its acks at most this long apart
# while it keeps sending (each look costs as much as a write), and at once
# when its connection is down. Far below the reconnection interval, so a new
# connection is always seen before anything is written on it; see
# `_Publisher.send`.
CHECK_INTERVAL = 0.005
# libzmq's default, set explicitly because `CHECK_INTERVAL` relies on it:
# a dropped connection is made again no sooner than this (plus up to as
# much again at random).
RECONNECT_IVL_MS = 100
# ... and after this many more messages are queued unacknowledged.
CHECK_EVERY = 256
# Plain ints: pyzmq's flag enums cost more than the socket calls on this path.
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


def _readable(sock: zmq.Socket[bytes]) -> bool:
    # Asking is much cheaper than the exception a read of nothing raises.
    return bool(cast(int, sock.get(zmq.EVENTS)) & _POLLIN)


@dataclass(frozen=True, slots=True)
class SenderConfig:
    endpoint: str
    send_timeout: float
    unreachable_timeout: float
    queue_size: int
    exit_timeout: float
    max_message_size: int
    # The keys of CURVE, read once per process; None without CURVE.
    curve_keys: ClientKeys | None = None
    # A standby pair's backup ingress (`PUSH_SERVER['standby']`); None without a pair.
    standby_endpoint: str | None = None
    # How long a socket waits on a silent broker of a pair before trying the other.
    switch_after: float = 1.0

    @property
    def endpoints(self) -> tuple[str, ...]:
        if self.standby_endpoint is None:
            return (self.endpoint,)
        return (self.endpoint, self.standby_endpoint)


def _load_config() -> SenderConfig:
    from django.core.exceptions import ImproperlyConfigured

    from pushserver import checks, conf

    errors = [
        message
        for message in [*checks.check_settings(), *checks.check_curve_role(checks.PUBLISHER)]
        if message.is_serious()
    ]
    if errors:
        raise ImproperlyConfigured("; ".join(f"{error.id}: {error.msg}" for error in errors))
    files = conf.publisher_curve()
    standby = conf.standby_section()
    return SenderConfig(
        standby_endpoint=None if standby is None else conf.connect_endpoint(standby["ingress"]),
        switch_after=conf.switch_after(),
        endpoint=conf.connect_endpoint(conf.broker_endpoints()["ingress"]),
        send_timeout=conf.number("send_timeout"),
        unreachable_timeout=conf.number("broker_unreachable_timeout"),
        queue_size=int(conf.number("send_queue_size")),
        exit_timeout=conf.number("exit_timeout"),
        max_message_size=int(conf.number("max_message_size")),
        curve_keys=None if files is None else load_client_keys(files),
    )


class _Publisher:
    """One thread's DEALER socket, its outbox, and its monitor.

    Every method but `__init__` is called with `lock` held.
    """

    def __init__(self, process: _Process) -> None:
        config = process.config
        self.process = process
        self.thread = threading.current_thread()
        # Held while the socket is in use: by its thread sending, by the
        # flusher, by `close` and the sweep of ended threads.
        self.lock = threading.Lock()
        self.connected = False
        # Set once `close` takes this socket over; senders then make a new one.
        self.retired = False
        self.closed = False
        self.outbox = Outbox()
        # The outbox keeps messages as values; each is packed when written.
        self._encode = wire.PublishPacker().encode
        # When `send` next looks at the monitor and the acks, or once the
        # queue is this long: the cheap path in between only writes.
        self.check_at = 0.0
        self.check_len = 0
        # Which broker of a pair this socket talks to; one broker: always the first.
        self.choice = Choice(len(config.endpoints), config.switch_after)
        self.socket, self.monitor = self._open(config.endpoints[0])

    def _open(self, endpoint: str) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        config = self.process.config
        sock: zmq.Socket[bytes] = self.process.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.SNDHWM, config.queue_size)
        sock.setsockopt(zmq.LINGER, 0)
        # A frozen broker shows up as a disconnect in seconds; acks are never refused room.
        configure_heartbeats(sock)
        limit_frames(sock, max_frame_size(config.max_message_size))
        if config.curve_keys is not None:
            apply_client(sock, config.curve_keys)
        monitor: zmq.Socket[bytes] = sock.get_monitor_socket(MONITOR_EVENTS)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            self.closed = True
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"PUSH_SERVER['broker']['ingress'] {endpoint!r} cannot be connected to: {exc}"
            ) from exc
        return sock, monitor

    def _switch(self) -> None:
        """Talk to the broker `choice` now names: a new socket, everything unacknowledged
        written again (the pair's replicated ledger drops what was sequenced already)."""
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self.connected = False
        self.outbox.on_reconnect()
        endpoint = self.process.config.endpoints[self.choice.current]
        log.info("the push sender moves to the broker at %s", endpoint)
        self.socket, self.monitor = self._open(endpoint)
        self.check_at = 0.0

    # -- connection state ----------------------------------------------------

    def drain_monitor(self) -> None:
        while _readable(self.monitor):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            # CONNECTED is only TCP; messages flow once the ZMTP handshake is done.
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
                self.outbox.on_reconnect()
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

    # -- acks and writes -----------------------------------------------------

    def take_acks(self) -> None:
        outbox = self.outbox
        while _readable(self.socket):
            try:
                frames = self.socket.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            try:
                ack = wire.decode_answer(frames)
            except wire.WireError as error:
                self.process.tell_malformed(self.process.config.endpoint, error)
                continue
            choice = self.choice
            if isinstance(ack, wire.NotActive):
                if choice.refused(choice.current):
                    self._switch()
                return
            if not isinstance(ack, wire.Ack) or not choice.heard(choice.current, True, ack.epoch):
                continue  # an answer (never asked for here), or an older epoch's broker
            renumbered = outbox.on_ack(ack)
            if renumbered is not None:
                log.warning(
                    "the push broker at %s holds this publisher's messages only up to %d, "
                    "though it acknowledged up to %d (its history lost the rest); "
                    "sending the %d queued messages again under a new publisher id",
                    self.process.config.endpoint,
                    renumbered.broker_holds,
                    renumbered.acknowledged,
                    renumbered.queued,
                )

    def write_due(self) -> None:
        """Write what the outbox says is due; stops when the socket cannot take more
        (no connection, or its queue is full)."""
        self.outbox.write_due(self._write)

    def _write(self, publish: wire.Publish) -> bool:
        return send_plain(self.socket, self._encode(publish))

    def flush(self) -> None:
        """Take acks and write what is due, without blocking."""
        self.take_acks()
        self._vote()
        self.write_due()

    def _vote(self) -> None:
        """With a standby pair: move to the other broker once this one left what was
        written unacknowledged, or stayed unreachable, for `switch_after`."""
        choice = self.choice
        if choice.count == 1:
            return
        if self.connected and not self.outbox.unacked:
            choice.heard(choice.current, False, choice.newest_epoch)  # nothing to wait for
        elif choice.silent():
            self._switch()

    def send(
        self,
        fresh: bool,
        channel_id: str,
        body: bytes,
        content_type: str | None,
        event: str | None = None,
    ) -> None:
        """Queue one message and write it if it may go now, or raise `PushServerError`.

        Looking at the monitor and at the acks costs as much as the write, so
        it is done every `CHECK_INTERVAL` or `CHECK_EVERY` messages, after a
        pause, and on every call while the connection is down or was just
        made. Writing between looks is safe: libzmq makes a new connection
        no sooner than `RECONNECT_IVL` after the old one died, far longer than
        `CHECK_INTERVAL`, so a look sees the new connection's handshake (and
        has the unacknowledged tail written again, oldest first) before
        anything is written on it. Should a thread stall between a look and
        its write for longer than that, each message also says which is its
        oldest unacknowledged (`wire.Publish.base`): a new broker that does not
        know this publisher refuses one written ahead of it, and the queue is
        written again from the oldest.
        """
        process = self.process
        now = time.monotonic()
        outbox = self.outbox
        unacked = outbox.unacked
        if fresh or not self.connected or now >= self.check_at or len(unacked) >= self.check_len:
            self._check(now, fresh)
        publish = outbox.append(channel_id, body, content_type, event=event)
        if publish is None:
            self.write_due()
        else:
            try:
                backend_send(self.socket, self._encode(publish), _NOBLOCK)
            except zmq.Again:
                outbox.unwrite()
                # No connection (or a full one): look at the monitor next time.
                self.check_at = 0.0
        # The flusher ends only once every queue is empty, so a queue that was
        # not empty already has one; `None` also retries one that failed to start.
        if len(unacked) == 1 or process.flusher is None:
            process.ensure_flusher()

    def _check(self, started: float, fresh: bool) -> None:
        """Bring connection state and acks up to date; raise when the message must be refused."""
        process = self.process
        config = process.config
        now = _observe(process, self, config.send_timeout if fresh else 0.0)
        if not self.connected and not process.reachable_lately(now):
            raise PushServerError(
                f"could not reach the push broker at {config.endpoint} "
                f"for {process.unreachable_for(now):.1f} s"
            )
        self.flush()
        unacked = self.outbox.unacked
        # Connected but behind: acks may make room within the bound.
        if len(unacked) >= config.queue_size and (
            not self.connected
            or not self.wait_for_acks(
                lambda: len(unacked) < config.queue_size,
                started + config.send_timeout,
            )
        ):
            raise PushServerError(
                f"the queue of {config.queue_size} messages for the push broker at "
                f"{config.endpoint} is full"
            )
        self.check_at = time.monotonic() + CHECK_INTERVAL
        self.check_len = min(len(unacked) + CHECK_EVERY, config.queue_size)

    def wait_for_acks(self, until: Callable[[], bool], deadline: float) -> bool:
        """Flush until `until()` holds or `deadline` (monotonic) passes; returns `until()`."""
        while True:
            self.drain_monitor()
            self.flush()
            remaining = deadline - time.monotonic()
            if until() or remaining <= 0:
                return until()
            self.socket.poll(max(1, round(min(remaining, POLL_SLICE) * 1000)), zmq.POLLIN)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


class _Process:
    """This process's context, sockets and flusher; a forked child builds its own."""

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
        self.flusher: threading.Thread | None = None
        self.stopping = threading.Event()
        # Told a few times a minute for all of the process's sockets: a broker of
        # another version would otherwise have a line logged per ack.
        self._malformed = ThrottledLog(log)
        self._malformed_lock = threading.Lock()

    def tell_malformed(self, endpoint: str, error: Exception) -> None:
        with self._malformed_lock:
            self._malformed.warning("acks", "ignored a malformed ack from %s: %s", endpoint, error)

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
        # An ended thread's socket is kept while it holds unacknowledged
        # messages: the flusher delivers them once the broker takes them.
        keep = []
        for publisher in self.publishers:
            if publisher.thread.is_alive() or not publisher.lock.acquire(blocking=False):
                keep.append(publisher)
                continue
            try:
                publisher.drain_monitor()
                publisher.flush()
                if publisher.outbox.unacked:
                    keep.append(publisher)
                else:
                    publisher.close()
            finally:
                publisher.lock.release()
        self.publishers = keep

    def reachable_lately(self, now: float) -> bool:
        return self.unreachable_for(now) <= self.config.unreachable_timeout

    def unreachable_for(self, now: float) -> float:
        return now - (self.started if self.last_up is None else self.last_up)

    # -- the flusher ---------------------------------------------------------

    def ensure_flusher(self) -> None:
        """Start the flusher unless it runs; called when a socket is left with unacked messages."""
        with self.lock:
            if self.flusher is not None or self.closed or _exiting:
                return
            thread = threading.Thread(
                target=self._flush_while_pending, name="pushserver-sender-flusher", daemon=True
            )
            self.flusher = thread
            try:
                thread.start()
            except RuntimeError:  # the interpreter is shutting down
                self.flusher = None

    def _flush_while_pending(self) -> None:
        while not self.stopping.wait(FLUSH_INTERVAL):
            with self.lock:
                publishers = list(self.publishers)
            for publisher in publishers:
                # A thread sending on it flushes it itself; never wait for one.
                if not publisher.lock.acquire(blocking=False):
                    continue
                try:
                    if not publisher.retired and not publisher.closed and publisher.outbox.unacked:
                        _observe(self, publisher, 0.0)
                        publisher.flush()
                finally:
                    publisher.lock.release()
            # A sender appends before it looks for the flusher under this lock,
            # so nothing is left behind when the flusher ends here.
            with self.lock:
                if not self.closed:
                    self._close_ended_threads()
                if self.closed or not any(p.outbox.unacked for p in self.publishers):
                    self.flusher = None
                    return
        with self.lock:
            self.flusher = None

    # -- closing -------------------------------------------------------------

    def shutdown(self, timeout: float) -> None:
        """Give unacknowledged messages up to `timeout` seconds, then close everything."""
        deadline = time.monotonic() + timeout
        with self.lock:
            self.closed = True
            publishers, self.publishers = self.publishers, []
            flusher = self.flusher
        self.stopping.set()
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(FLUSH_INTERVAL * 10)
        # Take every socket from its thread: a sender holds its lock for at
        # most send_timeout, and finds the socket retired once it gets it.
        taken: list[_Publisher] = []
        for publisher in publishers:
            if publisher.lock.acquire(timeout=self.config.send_timeout * 2):
                publisher.retired = True
                taken.append(publisher)
        try:
            self._flush_until(taken, deadline)
        finally:
            for publisher in taken:
                try:
                    publisher.close()
                finally:
                    publisher.lock.release()
        # term() waits for open sockets, so it would hang on one still in use.
        if len(taken) == len(publishers):
            self.context.term()

    def _flush_until(self, publishers: list[_Publisher], deadline: float) -> None:
        poller = zmq.Poller()
        for publisher in publishers:
            poller.register(publisher.socket, zmq.POLLIN)
            poller.register(publisher.monitor, zmq.POLLIN)
        while True:
            pending = 0
            for publisher in publishers:
                if publisher.closed:
                    continue
                publisher.drain_monitor()
                publisher.flush()
                pending += len(publisher.outbox.unacked)
            remaining = deadline - time.monotonic()
            if not pending:
                return
            if remaining <= 0:
                log.warning(
                    "%d messages for the push broker at %s were not acknowledged "
                    "within exit_timeout and are dropped",
                    pending,
                    self.config.endpoint,
                )
                return
            poller.poll(max(1, round(min(remaining, POLL_SLICE) * 1000)))


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
    # Another thread of the parent may have held the lock at the fork; the
    # parent's flusher thread does not exist here.
    _lock = threading.Lock()
    if _process is not None:
        _inherited.append(_process)
    _process = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def publish(
    channel_id: str, body: bytes, content_type: str | None, event: str | None = None
) -> None:
    """Queue one message for the broker, or raise `PushServerError`; blocks at most
    ``send_timeout``. `send_update` is the public way in; `event` and the body's size
    (`max_message_size`) are checked there, before its signals fire: a frame over the
    broker's limit would cost the socket its connection at every resend."""
    _with_publisher(_Publisher.send, channel_id, body, content_type, event)


def max_message_size() -> int:
    """The largest body `publish` takes (``max_message_size``), as this process read it."""
    # Asked on every message: a forked child reads the same settings as its
    # parent, so whose process this is need not be checked (`publish` does).
    process = _process
    if process is None:
        process = _current_process()
    return process.config.max_message_size


def broker_connected(timeout: float = 0.0) -> bool:
    """Whether the calling thread's socket to the broker is connected, waiting up to
    `timeout` seconds for it to be (a health check, say).

    >>> sender.broker_connected(timeout=0.5)
    True
    """

    def observe(publisher: _Publisher, fresh: bool) -> bool:
        _observe(publisher.process, publisher, timeout)
        return publisher.connected

    return _with_publisher(observe)


def pending() -> int:
    """How many messages of the calling thread the broker has not acknowledged yet."""

    def count(publisher: _Publisher, fresh: bool) -> int:
        publisher.drain_monitor()
        publisher.flush()
        return len(publisher.outbox.unacked)

    return _with_publisher(count)


_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


def _with_publisher(use: Callable[[_Publisher, bool, *_Args], _T], *args: *_Args) -> _T:
    """Call `use` with the calling thread's socket, locked, and `args`; `fresh` says the
    socket was just made."""
    # Arguments rather than a closure: `publish` calls this once per message.
    # A `close` between finding the socket and locking it retires that socket;
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
            if not publisher.retired and not publisher.closed:
                return use(publisher, fresh, *args)
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
    """Give unacknowledged messages up to ``exit_timeout`` to be acknowledged, then close
    this process's sockets.

    The next `publish` starts afresh and reads the settings again. Called at
    interpreter exit; also useful to pick up changed settings. A thread
    sending meanwhile gets a fresh socket.
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
