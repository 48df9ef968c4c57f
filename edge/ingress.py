"""The edge's HTTP publishes on their way to the broker, exactly once, as `send_update`'s are.

The publisher location hands each POST here. It goes to the broker's
ingress ROUTER over one DEALER with the numbering, acks and resends of
`broker.outbox` (the broker drops repeats), asking for the message's own
answer: the channel's info after the publish, which decides 201 or 202
and is the response's body. Publishes from every connection of the edge
share the socket and are written as they arrive, never waiting on each
other's answers; the broker answers them in batches.

The socket is a plain one read by a reader callback of the loop, not a
zmq.asyncio socket: an answer finishes its HTTP response in the callback
that read it, with no future or task per publish, and one timer serves
every deadline (publishes wait in the order they arrived, and all wait
the same `broker_timeout`).

In the process of its broker, the publishes go through `broker.local`
instead of the socket, as values (`wire.Publish`, never packed), and the
answers come back as the values they would decode to; numbering, acks and
deadlines are the same.

The traps:

* a ZeroMQ socket's descriptor signals edges, and a send may take the
  signal of an answer that arrived meanwhile, so every send is followed by
  a look at the socket's events and a read of whatever waits;
* a publish that is not answered within `broker_timeout` is given up
  (its location answers 503) but stays in the outbox, so it is still
  published once the broker takes it: that is why HTTP publishers retry
  with an idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from broker import curve, wire
from broker.choice import Choice
from broker.local import LocalLink
from broker.outbox import Outbox
from broker.sockets import (
    backend_recv,
    configure_heartbeats,
    limit_frames,
    max_frame_size,
    readable,
    send_plain,
)
from broker.throttled_log import ThrottledLog
from edge.config import EdgeConfig

log = logging.getLogger("pushserver.edge")

# Called once per publish: with the channel's info, or None when the broker
# did not answer within `broker_timeout`.
Answer = Callable[[wire.ChannelInfo | None], None]

MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
# How often unacknowledged publishes are looked at, to write again what a
# dead connection may have swallowed (`broker.outbox.RESEND_AFTER`).
RESEND_INTERVAL = 0.1
# At a stop, how often the wait for the last acks looks.
CLOSE_POLL = 0.02
# Plain ints: pyzmq's flag enums cost more than the socket calls on this path.
_NOBLOCK = int(zmq.NOBLOCK)


class Ingress:
    def __init__(
        self,
        config: EdgeConfig,
        local: LocalLink | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        """`counters`: where malformed answers are counted (the feed's, in the metrics)."""
        self.config = config
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._malformed = ThrottledLog(log)
        self.outbox = Outbox()
        # What each publish waiting for its answer is told, by its number.
        self._waiting: dict[int, Answer] = {}
        # (deadline, number) in the order publishes arrived, which is deadline order.
        self._deadlines: deque[tuple[float, int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._resender: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closed = False
        self._local = local
        self._endpoints = [config.ingress]
        if local is not None:
            # The broker of this process: no socket, no connection to wait for.
            self.connected = True
            self._send: Callable[[wire.Publish], bool] = local.publish
            self._choice = Choice(1, config.failover_timeout / 3)
            return
        self.connected = False
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = self._context.socket(zmq.DEALER)
        # Nothing waits inside a connection that may die: it waits in the outbox.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, config.send_queue_size)
        sock.setsockopt(zmq.LINGER, 0)
        # Acks and answers are never refused room: no receive high-water mark.
        configure_heartbeats(sock)
        limit_frames(sock, max_frame_size(config.max_message_size))
        if config.curve is not None:
            curve.apply_client(sock, curve.load_client_keys(config.curve))
        self._socket = sock
        # A standby pair's two ingress endpoints: the socket follows the active broker,
        # moving on a passive one's refusal or after a silence (`broker.choice`).
        if config.standby_ingress is not None:
            self._endpoints.append(config.standby_ingress)
        self._choice = Choice(len(self._endpoints), config.failover_timeout / 3)
        self._encode = wire.PublishPacker().encode
        self._send = self._write
        self._monitor = sock.get_monitor_socket(MONITOR_EVENTS)

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if self._local is not None:
            self._local.to_ingress = self._on_answers
            return
        self._socket.connect(self._endpoints[0])
        loop.add_reader(cast(int, self._socket.get(zmq.FD)), self._read)
        loop.add_reader(cast(int, self._monitor.get(zmq.FD)), self._watch)

    async def close(self, grace: float) -> None:
        """Give unacknowledged publishes up to `grace` seconds, then close the socket."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.outbox.unacked and loop.time() < deadline and self._loop is not None:
            await asyncio.sleep(CLOSE_POLL)
        if self.outbox.unacked:
            log.warning(
                "%d HTTP publishes for the broker at %s were not acknowledged before the "
                "edge stopped and are dropped",
                len(self.outbox.unacked),
                self.config.ingress,
            )
        self._closed = True
        for handle in (self._timer, self._resender):
            if handle is not None:
                handle.cancel()
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            self._tell(answer, None)
        if self._local is not None:
            return
        if self._loop is not None:
            self._loop.remove_reader(cast(int, self._socket.get(zmq.FD)))
            self._loop.remove_reader(cast(int, self._monitor.get(zmq.FD)))
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()

    def publish(
        self,
        channel_id: str,
        body: bytes,
        content_type: str | None,
        key: str | None,
        answer: Answer,
        event: str | None = None,
    ) -> bool:
        """Hand a message to the broker; `answer` hears how it went. False (and no
        answer) when the edge holds `send_queue_size` unacknowledged publishes."""
        outbox = self.outbox
        loop = self._loop
        if self._closed or loop is None or len(outbox.unacked) >= self.config.send_queue_size:
            return False
        if not self.connected:
            self._watch()  # a new connection must be seen before anything is written on it
        if not outbox.unacked:
            # Nothing was awaited: a silence counts from here, not from the last answer.
            self._choice.heard(self._choice.current, False, 0)
        seq = outbox.next_seq
        publish = outbox.append(channel_id, body, content_type, key, reply=True, event=event)
        self._waiting[seq] = answer
        self._deadlines.append((loop.time() + self.config.broker_timeout, seq))
        if self._timer is None:
            self._timer = loop.call_at(self._deadlines[0][0], self._expire)
        if self._resender is None:
            self._resender = loop.call_later(RESEND_INTERVAL, self._resend)
        if publish is None:
            self._write_due()
        elif not self._send(publish):
            outbox.unwrite()  # no connection (or a full one): the outbox keeps it due
        self._read_waiting()
        return True

    # -- writing ---------------------------------------------------------------

    def _write(self, publish: wire.Publish) -> bool:
        return send_plain(self._socket, self._encode(publish))

    def _write_due(self) -> None:
        self.outbox.write_due(self._send)

    def _resend(self) -> None:
        self._resender = None
        if self._closed or self._loop is None:
            return
        self._watch()
        if self.outbox.unacked and self._choice.silent() and self._local is None:
            self._follow()
        self._write_due()
        self._read_waiting()
        if self.outbox.unacked:
            self._resender = self._loop.call_later(RESEND_INTERVAL, self._resend)

    def _follow(self) -> None:
        """Move the socket to the broker the choice names: everything unacknowledged is
        written again there (the pair's replicated ledger drops what it holds)."""
        endpoints = self._endpoints
        left = endpoints[(self._choice.current + 1) % len(endpoints)]
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disconnect(left)
        self._socket.connect(endpoints[self._choice.current])
        self.connected = False
        self.outbox.on_reconnect()
        log.info("HTTP publishes go to the broker at %s", endpoints[self._choice.current])

    # -- reading ---------------------------------------------------------------

    def _read_waiting(self) -> None:
        """After a send: read what arrived, whose signal the send may have taken."""
        if self._local is None and not self._reading and readable(self._socket):
            self._read()

    def _on_answers(self, answers: list[wire.Answer]) -> None:
        """Answers handed over by the broker of this process (`broker.local`)."""
        if self._closed:
            return
        for answer in answers:
            self._take(answer)
        self._write_due()

    def _read(self) -> None:
        if self._reading or self._closed:
            return  # an answer's callback published again: the loop below goes on reading
        self._reading = True
        sock = self._socket
        try:
            # Asking the socket's events costs a microsecond; the zmq.Again that
            # ends a read loop costs several, and most reads take one answer.
            while readable(sock):
                try:
                    frame = backend_recv(sock, _NOBLOCK)
                except zmq.Again:
                    break
                self._on_answer(frame)
        finally:
            self._reading = False
        # Answers and acks may have freed publishes to write, and writing may
        # have taken the signal of more answers.
        self._write_due()
        if readable(sock):
            self._loop_soon(self._read)

    def _loop_soon(self, callback: Callable[[], None]) -> None:
        if self._loop is not None:
            self._loop.call_soon(callback)

    def _on_answer(self, frame: bytes) -> None:
        try:
            answer = wire.decode_answer([frame])
        except wire.WireError as error:
            self.counters["answers_malformed"] += 1
            self._malformed.warning(
                "answers", "ignored a malformed answer from %s: %s", self.config.ingress, error
            )
            return
        self._take(answer)

    def _take(self, answer: wire.Answer) -> None:
        outbox = self.outbox
        if isinstance(answer, wire.NotActive):
            # A standby pair's passive broker: the publishes go to the other.
            if self._choice.refused(self._choice.current):
                self._follow()
            return
        self._choice.heard(self._choice.current, False, 0)
        if isinstance(answer, wire.Published):
            # An answer acknowledges everything up to its number.
            if not outbox.acknowledged(answer.publisher, answer.seq):
                return  # for an identity the outbox gave up
            told = self._waiting.pop(answer.seq, None)
            if told is not None:
                self._tell(told, answer.info)
                self._forget_answered()
            return
        renumbered = outbox.on_ack(answer)
        if renumbered is not None:
            log.warning(
                "the push broker at %s holds this edge's publishes only up to %d, though it "
                "acknowledged up to %d (its history lost the rest); sending the %d queued "
                "publishes again under a new publisher id",
                self.config.ingress,
                renumbered.broker_holds,
                renumbered.acknowledged,
                renumbered.queued,
            )
            # The queue is numbered from 0 again, in the same order.
            shift = renumbered.acknowledged + 1
            self._waiting = {seq - shift: told for seq, told in self._waiting.items()}
            self._deadlines = deque((at, seq - shift) for at, seq in self._deadlines)

    def _watch(self) -> None:
        if self._local is not None:
            return
        monitor = self._monitor
        while readable(monitor):
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            # Messages flow once the ZMTP handshake is done, not at the TCP connect.
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
                self.outbox.on_reconnect()
                self._write_due()
                self._read_waiting()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = False

    # -- deadlines -------------------------------------------------------------

    def _forget_answered(self) -> None:
        deadlines, waiting = self._deadlines, self._waiting
        while deadlines and deadlines[0][1] not in waiting:
            deadlines.popleft()

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        deadlines, waiting = self._deadlines, self._waiting
        while deadlines and deadlines[0][0] <= now:
            _, seq = deadlines.popleft()
            told = waiting.pop(seq, None)
            if told is not None:
                self._tell(told, None)
        self._forget_answered()
        if deadlines:
            self._timer = loop.call_at(deadlines[0][0], self._expire)

    def _tell(self, answer: Answer, info: wire.ChannelInfo | None) -> None:
        try:
            answer(info)
        except Exception:
            # One failed response must not stop the answers behind it.
            log.exception("answering an HTTP publish failed")
