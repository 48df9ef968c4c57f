"""The broker's sockets and loop: ingress and control ROUTERs, events XPUB, heartbeats.

One asyncio task per socket reads it by waiting once and then draining
without blocking, which is several times faster than awaiting each
message. Everything a socket delivers is untrusted: a malformed frame is
dropped, logged and counted, and the loop goes on.

Ingress, the busiest, reads in bounded batches: within a batch, messages go
out to edges through a plain (blocking, but used with NOBLOCK) shadow of
the events socket, because the asyncio socket's bookkeeping on each send
cost more than everything else a publish does; the answers of publishes
that asked for one (the HTTP publisher's), then the acks, go at the end of
each batch, and the loop gets a turn between batches. Answers go first:
a publisher that has an ack then has every answer it covers, so a
message is never acknowledged with its answer lost. An answer is an ack
up to its own number, so the ack is left out where the answers cover it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import cast

import zmq
import zmq.asyncio

from broker import curve, wire
from broker import history as records
from broker.config import BrokerConfig
from broker.history import History
from broker.idempotency import Keys
from broker.inflight import InFlight
from broker.local import ROUTE as LOCAL_ROUTE
from broker.local import LocalLink
from broker.memory import Trimmer
from broker.metrics import CURVE_RELOADS, CURVE_RELOADS_KEPT, MEMORY_TRIMS, MetricsServer
from broker.presence import Presence
from broker.publishers import Publishers, Verdict
from broker.replication import apply_frames, take_over
from broker.sequencer import Channel, Sequencer
from broker.sockets import (
    backend_send,
    configure_heartbeats,
    configure_keepalive,
    drain,
    limit_frames,
    max_frame_size,
    readable,
    receive,
    run_until,
    send_now,
    wake_readers,
)
from broker.standby import Action, Standby
from broker.throttled_log import ThrottledLog
from broker.trailing import TrailingSyncs

log = logging.getLogger("pushserver.broker")

# Plain ints: pyzmq's flag enums cost more than the socket calls on the ingress path.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


STOP_LINGER_MS = 500
# After a stop, how long the last acknowledgements get to be read before the
# sockets close: a publisher's socket throws away what it has not read when
# its connection drops, and would send those messages again to the next broker.
ACK_GRACE = 0.5
# Publishes read before the acks go out and other tasks get a turn.
INGRESS_BATCH = 250
# Publishes sequenced after a stop at most.
STOP_DRAIN = 10 * INGRESS_BATCH
# Bodies from this size on go to edges without a copy, libzmq holding the
# history's own bytes (a queue shares them rather than doubling them), and
# count against `events_queue_bytes` (`broker.inflight`).
LARGE_BODY = 16 * 1024


@dataclass(frozen=True, slots=True)
class Endpoints:
    ingress: str
    events: str
    control: str
    # The Prometheus endpoint's URL, when one is configured.
    metrics: str | None = None
    # The standby link's endpoint, for a broker of a pair.
    peer: str | None = None


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.epoch = uuid.uuid4().hex
        self.counters: Counter[str] = Counter()
        # What outsiders send is told a few times a minute; the metrics count it all.
        self._outsiders = ThrottledLog(log)
        self.sequencer = Sequencer(
            wire.Limits(config.max_messages, config.min_messages, config.message_timeout)
        )
        # Durations only, so the monotonic clock: lingers survive the wall clock being set.
        self.presence = Presence(time.monotonic)
        self._trimmer = Trimmer()
        self._in_flight = InFlight(config.events_queue_bytes)
        self.keys = Keys(config.idempotency_window, config.idempotency_keys)
        self.history = (
            None if config.history_file is None else History(config.history_file, self.keys)
        )
        self._context = zmq.asyncio.Context()
        self._stopping = asyncio.Event()
        self._trailing = TrailingSyncs()
        self.publishers = Publishers()
        self._acks: dict[bytes, tuple[bytes, bool]] = {}
        # Answers to publishes that asked for one, by route, sent before the acks.
        self._answers: list[tuple[bytes, wire.Published]] = []
        self._acks_scheduled = False
        # Set while an ingress batch runs: events are sent through it, and
        # the acks wait for the batch's end.
        self._events_now: zmq.Socket[bytes] | None = None
        self._ingress: zmq.asyncio.Socket | None = None
        # A plain shadow of the ingress socket, for answers and acks without
        # the asyncio socket's bookkeeping per send.
        self._ingress_now: zmq.Socket[bytes] | None = None
        self._events: zmq.asyncio.Socket | None = None
        self._events_shadow: zmq.Socket[bytes] | None = None
        self._control: zmq.asyncio.Socket | None = None
        self._gatekeeper: curve.Gatekeeper | None = None
        self._monitors: curve.Monitors | None = None
        self._metrics: MetricsServer | None = None
        # A broker of a standby pair; None alone, which changes nothing of the above.
        self.standby = Standby(self, config) if config.paired else None
        # The edge in this process, when there is one (`broker.local`).
        self._local: LocalLink | None = None
        # An edge subscribed on the events socket. Until one did, a broker with a
        # local edge encodes and sends it nothing: an edge's first subscription is
        # answered by a sync, and the edge refills from there.
        self._remote_edges = False

    def local_link(self) -> LocalLink | None:
        """The link for an edge in this process; None for a pair's broker, whose
        edges must each follow whichever of the two is active."""
        if self.standby is not None:
            return None
        if self._local is None:
            link = self._local = LocalLink()
            link.to_broker = self._read_local
            link.to_broker_subscription = self._on_subscription
            link.to_broker_presence = self._on_local_presence
        return self._local

    def bind(self) -> Endpoints:
        try:
            return self._bind()
        except (zmq.ZMQError, OSError, curve.KeyFileError):
            self._close_outside_loop()
            self._context.destroy(linger=0)
            raise

    def _bind(self) -> Endpoints:
        config = self.config
        keys = None
        if config.curve is not None:
            keys = curve.load_server_keys(config.curve)
            # Before any socket binds: without a handler CURVE admits any client.
            self._gatekeeper = curve.Gatekeeper(self._context, keys, self._refused)
            self._gatekeeper.start()
        ingress = self._context.socket(zmq.ROUTER)
        events = self._context.socket(zmq.XPUB)
        control = self._context.socket(zmq.ROUTER)
        frame_limit = max_frame_size(config.max_message_size)
        for port, sock in (
            (curve.INGRESS, ingress),
            (curve.EVENTS, events),
            (curve.CONTROL, control),
        ):
            if sock is ingress:
                configure_heartbeats(sock)
            else:
                # Links to edges: either end may wait at its high-water mark.
                configure_keepalive(sock)
            sock.setsockopt(zmq.LINGER, 0)
            # A frame over the limit costs its sender the connection, not the broker memory.
            limit_frames(sock, frame_limit)
            if keys is not None:
                curve.apply_server(sock, keys, port)
        # Every subscription, repeated ones too, asks for a fresh sync marker.
        events.setsockopt(zmq.XPUB_VERBOSE, 1)
        events.setsockopt(zmq.SNDHWM, config.events_sndhwm)
        self._ingress, self._events, self._control = ingress, events, control
        if keys is not None:
            self._monitors = curve.monitor_handshakes(
                {curve.INGRESS: ingress, curve.EVENTS: events, curve.CONTROL: control}
            )
        ingress.bind(config.ingress)
        events.bind(config.events)
        control.bind(config.control)
        self._events_shadow = zmq.Socket.shadow(events.underlying)
        peer = None if self.standby is None else self.standby.bind(self._context, keys)
        if config.metrics is not None:
            gauges = None if self.standby is None else self.standby.metrics
            self._metrics = MetricsServer(config.metrics, self.counters, gauges)
        return Endpoints(
            ingress.getsockopt_string(zmq.LAST_ENDPOINT),
            events.getsockopt_string(zmq.LAST_ENDPOINT),
            control.getsockopt_string(zmq.LAST_ENDPOINT),
            None if self._metrics is None else self._metrics.url,
            peer,
        )

    def _close_outside_loop(self) -> None:
        if self._gatekeeper is not None:
            self._gatekeeper.stop()
            self._gatekeeper = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def _refused(self, port: str, identity: str, why: str) -> None:
        self.counters[port + "_refused"] += 1
        self._outsiders.warning(
            f"{port}_refused",
            "refused a connection to the %s port (%d so far): %s, %s",
            port,
            self.counters[port + "_refused"],
            identity,
            why,
        )

    def reload(self) -> None:
        """Read the CURVE allow-lists again (SIGHUP): a key added opens its ports from its
        next handshake, a key removed is refused from its next one."""
        gatekeeper = self._gatekeeper
        if gatekeeper is None:
            log.warning("asked to read the CURVE allow-lists again, but CURVE is off")
            return
        try:
            keys = gatekeeper.reload()
        except curve.KeyFileError as error:
            self.counters[CURVE_RELOADS_KEPT] += 1
            log.error("kept the CURVE allow-lists as they were: %s", error)
            return
        self.counters[CURVE_RELOADS] += 1
        log.info(
            "read the CURVE allow-lists again: %d keys open the ingress, %d the events and "
            "control ports",
            len(keys.allowed[curve.INGRESS]),
            len(keys.allowed[curve.EVENTS]),
        )

    def stop(self) -> None:
        self._stopping.set()

    def _sequence_what_arrived(self) -> None:
        """Publish what publishers sent before the stop, rather than drop it with the socket,
        and acknowledge it: unacknowledged, it would be sent again to the next broker.

        At most `STOP_DRAIN` messages: publishers that keep sending would
        otherwise keep a stopping broker at work. What is left unread is not
        sequenced, so publishers send it again to the next broker.
        """
        assert self._ingress is not None
        ingress: zmq.Socket[bytes] = zmq.Socket.shadow(self._ingress.underlying)
        for _ in range(STOP_DRAIN):
            try:
                frames = ingress.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_publish(frames)
        if self._local is not None:
            for publish in self._local.queued_publishes():
                self._take_publish(LOCAL_ROUTE, publish)
            # Later publishes are the edge's to give up, as once the socket is closed.
            self._local.detach_broker()
        self._send_acks()

    async def run(self) -> None:
        if self._ingress is None or self._events is None or self._control is None:
            self.bind()
        assert self._ingress and self._events and self._control
        if self.history is not None:
            replayed = self.history.load(self.sequencer, self.publishers)
            log.info(
                "history %s: %d records replayed, %d channels",
                self.history.path,
                replayed,
                len(self.sequencer),
            )
        # Ids of a previous run all precede this broker's first second.
        await asyncio.sleep(max(0.0, self.sequencer.first_time - time.time()))
        tasks = [
            self._drain_ingress(),
            drain(self._events, self._on_remote_subscription, self._stopping),
            drain(self._control, self._on_request, self._stopping),
            self._tick(),
        ]
        if self.standby is not None:
            tasks.append(drain(self.standby.router, self.standby.on_peer, self._stopping))
        if self._monitors is not None:
            tasks.append(curve.watch_handshakes(self._monitors, self._refused))
        try:
            await run_until(self._stopping, *tasks)
            self._sequence_what_arrived()
            await asyncio.sleep(ACK_GRACE)
        finally:
            if self.history is not None:
                self.history.close()
            if self.standby is not None:
                self.standby.close()
            await curve.stop_gatekeeper(self._gatekeeper)
            self._gatekeeper = None
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            # A moment for the last messages to reach edges; no longer, so a
            # vanished edge cannot hold the broker's exit.
            self._context.destroy(linger=STOP_LINGER_MS)
            log.info("broker stopped; %s", dict(self.counters))

    # -- sending -------------------------------------------------------------

    def _emit(self, event: wire.Event) -> None:
        """Send an event to every edge: encoded for the events socket once an edge
        subscribed there, as it is to the edge in this process."""
        standby = self.standby
        frames = None
        if standby is not None:
            frames = wire.encode_event(event)
            if standby.hold(("e", frames)):
                return  # to edges once the standby holds what it tells of
        if self._local is not None:
            self._local.event(event)
            if not self._remote_edges:
                return  # nobody to send it to over the socket
        if frames is None:
            frames = wire.encode_event(event)
        events_now = self._events_now
        if events_now is None:
            # Outside a batch: sent the same way, then the readers woken.
            assert self._events is not None and self._events_shadow is not None
            self._send_event(self._events_shadow, frames)
            wake_readers(self._events)
        else:
            self._send_event(events_now, frames)

    def _send_event(self, events: zmq.Socket[bytes], frames: list[bytes]) -> None:
        body = frames[-1]
        large = len(body) >= LARGE_BODY
        if large and not self._in_flight.admits(len(body)):
            # Edges learn of it from the next sync and refill.
            self.counters["events_withheld"] += 1
            return
        # send_multipart combines enum flags per frame; plain ints are cheaper.
        # XPUB takes the rest of a message once it took the first frame.
        try:
            backend_send(events, frames[0], _MORE_NOBLOCK)
        except zmq.Again:
            self.counters["events_dropped"] += 1
            return
        for frame in frames[1:-1]:
            backend_send(events, frame, _MORE_NOBLOCK)
        if large:
            self._in_flight.sent(backend_send(events, body, _NOBLOCK, False, True), len(body))
        else:
            backend_send(events, body, _NOBLOCK)

    def _publish(
        self,
        channel_id: str,
        content_type: str | None,
        body: bytes,
        sent_by: tuple[bytes, int] | None = None,
        key: str | None = None,
        event: str | None = None,
    ) -> wire.Message:
        message = self.sequencer.publish(channel_id, content_type, body, event)
        if self.history is not None or self.standby is not None:
            # On disk (and on its way to the standby) before any edge can serve it.
            self._record(records.message_record(message, sent_by, key))
        self._emit(message)
        self._trailing.published(channel_id)
        self.counters["published"] += 1
        return message

    def _record(self, packed: bytes) -> None:
        """A change, as history records: to the file and to the standby's next batch."""
        if self.history is not None:
            self.history.append(packed)
        if self.standby is not None:
            self.standby.record(packed)

    def _created(self, channel_id: str) -> None:
        if self.history is not None or self.standby is not None:
            self._record(records.created_record(channel_id))
        self._emit_sync(channel_id)

    def _emit_sync(self, channel_id: str) -> None:
        channel = self.sequencer.get(channel_id)
        sync = wire.Sync(channel_id, channel is not None, None if channel is None else channel.last)
        self._emit(sync)

    def drop_malformed(self, where: str, error: Exception) -> None:
        """Count a frame dropped on port `where` and tell of it, a few times a minute."""
        self.counters[f"{where}_malformed"] += 1
        self._outsiders.warning(
            f"{where}_malformed",
            "dropped a malformed frame on %s (%d so far): %s",
            where,
            self.counters[f"{where}_malformed"],
            error,
        )

    # -- receiving -----------------------------------------------------------

    async def _drain_ingress(self) -> None:
        """Read the ingress from a reader callback of the loop until the broker stops.

        A callback rather than awaiting the asyncio socket: each wait on it
        costs futures and a poller, and with HTTP publishers, who each wait
        for their answer, a wake-up carries a few publishes, not hundreds.
        """
        assert self._ingress is not None and self._events is not None
        self._ingress_now = zmq.Socket.shadow(self._ingress.underlying)
        loop = asyncio.get_running_loop()
        descriptor = cast(int, self._ingress_now.get(zmq.FD))
        loop.add_reader(descriptor, self._read_ingress)
        try:
            self._read_ingress()  # whatever arrived before the reader was added
            await self._stopping.wait()
        finally:
            loop.remove_reader(descriptor)
            self._ingress_now = None

    def _read_ingress(self) -> None:
        """One batch of publishes, then their answers and acks; the loop gets a turn
        before the next batch."""
        shadow, events = self._ingress_now, self._events
        if shadow is None or events is None or self._stopping.is_set():
            return
        self._events_now = self._events_shadow
        try:
            for _ in range(INGRESS_BATCH):
                frames = receive(shadow)
                if frames is None:
                    break
                self._on_publish(frames)
        finally:
            self._events_now = None
            # Sending through the shadow may have taken the edge-triggered
            # wake-up the task reading subscriptions waits for.
            wake_readers(events)
        self._send_acks()
        # A batch cut short, or sends that took the descriptor's signal, leave
        # publishes waiting that no signal will announce.
        if readable(shadow):
            asyncio.get_running_loop().call_soon(self._read_ingress)

    def _read_local(self, publishes: list[wire.Publish]) -> None:
        """The local edge's publishes, one batch as from the ingress socket; checked by
        the edge as they are read, so not again."""
        if self._local is None or self._events is None:
            return
        if self._stopping.is_set():
            # As frames left unread on the socket: for the last drain to sequence.
            self._local.keep(publishes)
            return
        self._events_now = self._events_shadow
        try:
            for publish in publishes:
                self._take_publish(LOCAL_ROUTE, publish)
        finally:
            self._events_now = None
            if self._remote_edges:
                wake_readers(self._events)
        self._send_acks()

    def _on_publish(self, frames: list[bytes]) -> None:
        try:
            if len(frames) < 2:
                raise wire.WireError("no routing frame")
            publish = wire.decode_publish(frames[1:])
        except wire.WireError as error:
            self.drop_malformed("ingress", error)
            return
        self._take_publish(frames[0], publish)

    def _take_publish(self, route: bytes, publish: wire.Publish) -> None:
        standby = self.standby
        if standby is not None and not standby.serves():
            # Not the active broker: the publisher goes to the other.
            self._send_ingress([(route, wire.encode_not_active(wire.NotActive(0)))])
            self.counters["ingress_not_active"] += 1
            return
        verdict = self.publishers.admit(publish.publisher, publish.seq, publish.base)
        if verdict is Verdict.GAP:
            self.counters["ingress_gaps"] += 1
        elif verdict is Verdict.NEW:
            info = self._sequence(publish)
            if publish.reply:
                answer = wire.Published(publish.publisher, publish.seq, info)
                self._answers.append((route, answer))
        else:
            self.counters["ingress_repeats"] += 1
            if publish.reply:
                # Its first answer died with a connection: answered again, not published.
                info = self._recorded_info(publish) or self._channel_info(publish.channel_id)
                answer = wire.Published(publish.publisher, publish.seq, info)
                self._answers.append((route, answer))
        self._acknowledge(route, publish.publisher, verdict is Verdict.GAP)

    def _sequence(self, publish: wire.Publish) -> wire.ChannelInfo:
        """Publish a new message, unless its key names one published within the window."""
        channel_id, key = publish.channel_id, publish.key
        if key is not None:
            recorded = self.keys.get(channel_id, key)
            if recorded is not None:
                self.counters["ingress_key_retries"] += 1
                if self.history is not None or self.standby is not None:
                    # Restarted, the broker must still count the number as taken.
                    self._record(records.numbered_record(publish.publisher, publish.seq))
                return recorded.info or self._channel_info(channel_id)
        sent_by = (publish.publisher, publish.seq)
        self._publish(channel_id, publish.content_type, publish.body, sent_by, key, publish.event)
        info = self._channel_info(channel_id)
        if key is not None:
            self.keys.record(channel_id, key, info)
        return info

    def _recorded_info(self, publish: wire.Publish) -> wire.ChannelInfo | None:
        if publish.key is None:
            return None
        recorded = self.keys.get(publish.channel_id, publish.key)
        return None if recorded is None else recorded.info

    def _channel_info(self, channel_id: str) -> wire.ChannelInfo:
        """The channel's info; a deleted channel's as an empty one's."""
        return self._info(self.sequencer.get(channel_id)) or wire.ChannelInfo(0, None, 0, None)

    def _acknowledge(self, route: bytes, publisher: bytes, gap: bool) -> None:
        """Acknowledge once per batch or loop turn per publisher, not once per message."""
        pending = self._acks.get(route)
        self._acks[route] = (publisher, gap or (pending is not None and pending[1]))
        if not self._acks_scheduled and self._events_now is None:
            self._acks_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_acks)

    def _send_acks(self) -> None:
        self._acks_scheduled = False
        answers, self._answers = self._answers, []
        acks, self._acks = self._acks, {}
        told: list[tuple[bytes, wire.Answer]] = list(answers)
        # An answer acknowledges its number too: a route whose last answer is at its
        # publisher's newest number needs no ack of its own.
        answered = {(route, published.publisher): published.seq for route, published in answers}
        for route, (publisher, gap) in acks.items():
            seq = self.publishers.last(publisher)
            if seq is None:
                if not gap:
                    continue
                seq = wire.UNKNOWN
            elif not gap and answered.get((route, publisher)) == seq:
                continue
            told.append((route, wire.Ack(publisher, seq, gap, self._pair_epoch)))
        local = self._local
        if local is not None:
            # The local edge's, as they are: it would decode them at once.
            for route, answer in told:
                if route == LOCAL_ROUTE:
                    local.answer(answer)
        frames = [
            (route, wire.encode_answer(answer)) for route, answer in told if route != LOCAL_ROUTE
        ]
        standby = self.standby
        if frames and (standby is None or not standby.hold(("i", frames))):
            self._send_ingress(frames)
        if standby is not None:
            standby.close_batch()

    def _send_ingress(self, messages: list[tuple[bytes, list[bytes]]]) -> None:
        ingress, shadow = self._ingress, self._ingress_now
        assert ingress is not None
        if shadow is None:
            for route, frames in messages:
                send_now(ingress, [route, *frames])
            return
        # A ROUTER drops what it cannot route or queue rather than block.
        for route, (frame,) in messages:
            backend_send(shadow, route, _MORE_NOBLOCK)
            backend_send(shadow, frame, _NOBLOCK)
        if self._events_now is None and readable(shadow):
            # Outside a batch, the sends may have taken the signal of publishes waiting.
            asyncio.get_running_loop().call_soon(self._read_ingress)

    def _on_remote_subscription(self, frames: list[bytes]) -> None:
        """A subscription read from the events socket: from now on, events go there too."""
        self._remote_edges = True
        self._on_subscription(frames)

    def _on_subscription(self, frames: list[bytes]) -> None:
        frame = frames[0] if len(frames) == 1 else b""
        if frame[:1] != b"\x01":
            return  # unsubscriptions need no answer
        topic = frame[1:]
        if topic == wire.HEARTBEAT_TOPIC:
            self._emit_heartbeat()
            return
        try:
            channel_id = wire.channel_of(topic)
        except wire.WireError as error:
            self.drop_malformed("events", error)
            return
        if self.standby is not None and not self.standby.active:
            return  # a passive broker says nothing of channels
        self._emit_sync(channel_id)

    def _on_request(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.drop_malformed("control", wire.WireError("no routing frame"))
            return
        edge, payload = frames[0], frames[1:]
        try:
            request = wire.decode_request(payload)
        except wire.WireError as error:
            self.drop_malformed("control", error)
            return
        standby = self.standby
        if isinstance(request, wire.Presence):
            if standby is None or standby.active:
                self.presence.report(edge, request.counts, request.full, self.sequencer.held_id)
            return
        if standby is not None and not standby.serves():
            # Not the active broker: no answer; the edge asks the other.
            self.counters["control_not_active"] += 1
            return
        reply = self._answer(request)
        frames = [edge, *wire.encode_reply(reply)]
        if standby is not None and standby.hold(("c", frames)):
            standby.close_batch()
            return
        self._send_control(frames)

    def _on_local_presence(self, presence: wire.Presence) -> None:
        """The local edge's report: a pair's broker has no local edge, so it is taken."""
        self.presence.report(LOCAL_ROUTE, presence.counts, presence.full, self.sequencer.held_id)

    def _send_control(self, frames: list[bytes]) -> None:
        assert self._control is not None
        if not send_now(self._control, frames):
            self.counters["control_replies_dropped"] += 1

    def _info(self, channel: Channel | None) -> wire.ChannelInfo | None:
        if channel is None:
            return None
        channel_id = channel.channel_id
        presence = self.presence
        return wire.ChannelInfo(
            len(channel.messages),
            presence.requested(channel_id),
            presence.subscribers(channel_id),
            channel.last,
        )

    def _answer(self, request: wire.Request) -> wire.Reply:
        sequencer = self.sequencer
        channel_id = request.channel_id
        if request.kind == wire.PUBLISH:
            message = self._publish(
                channel_id, request.content_type, request.body, event=request.event
            )
            info = self._info(sequencer.get(channel_id))
            return wire.Reply(request.request_id, True, info, None, message.id)
        if request.kind == wire.SNAPSHOT:
            existed = channel_id in sequencer
            snapshot = sequencer.snapshot(channel_id, request.create)
            if snapshot.exists and not existed:
                self._created(channel_id)
            info = self._info(sequencer.get(channel_id))
            return wire.Reply(request.request_id, snapshot.exists, info, snapshot)
        if request.kind == wire.CREATE:
            existed = channel_id in sequencer
            created = sequencer.create(channel_id)
            if not existed:
                self._created(channel_id)
            return wire.Reply(request.request_id, True, self._info(created))
        if request.kind == wire.DELETE:
            deleted = sequencer.delete(channel_id)
            # Reported as it was, subscribers included, before they are forgotten.
            info = self._info(deleted)
            if deleted is not None:
                self.presence.forget_channel(channel_id)
                if self.history is not None or self.standby is not None:
                    self._record(records.deleted_record(channel_id))
                self._emit(wire.Deleted(channel_id))
                self._trailing.published(channel_id)
            return wire.Reply(request.request_id, deleted is not None, info)
        found = self._info(sequencer.get(channel_id))
        return wire.Reply(request.request_id, found is not None, found)

    # -- timers --------------------------------------------------------------

    @property
    def _pair_epoch(self) -> int:
        standby = self.standby
        return 0 if standby is None or not standby.active else standby.pair.epoch

    def _emit_heartbeat(self) -> None:
        standby = self.standby
        heartbeat = wire.Heartbeat(
            self.epoch,
            time.time(),
            standby is None or standby.active,
            0 if standby is None else standby.pair.epoch,
        )
        if standby is None:
            self._emit(heartbeat)
        else:
            # Never held back: clients must hear a paired broker's state at once.
            assert self._events_shadow is not None and self._events is not None
            self._send_event(self._events_shadow, wire.encode_heartbeat(heartbeat))
            wake_readers(self._events)

    async def _tick(self) -> None:
        config = self.config
        period = min(config.heartbeat_interval, config.sync_interval)
        next_heartbeat = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                self._emit_heartbeat()
                next_heartbeat = now + config.heartbeat_interval
                self.sequencer.expire()
                self.publishers.forget_silent()
                if self.history is not None:
                    self.history.maybe_compact(self.sequencer, self.publishers)
                for edge in self.presence.forget_silent_edges(config.presence_timeout):
                    log.info("edge %s went silent; forgetting its subscribers", edge.hex())
            standby = self.standby
            if standby is not None:
                standby.tick()
            if standby is None or standby.active:
                self._emit_syncs(self._trailing.tick())
                # Trimmed once the forgotten channels are garbage, not while listed.
                if self._trimmer.forgot(self._forget_idle(), len(self.sequencer)):
                    self.counters[MEMORY_TRIMS] += 1
                if standby is not None:
                    standby.close_batch()
            await asyncio.sleep(min(period, self.config.failover_timeout / 6))

    def _emit_syncs(self, channel_ids: set[str]) -> None:
        """Sync markers for many channels, through the plain shadow as a batch of publishes
        is sent: on the asyncio socket each send cost as much as a publish."""
        self._events_now = self._events_shadow
        try:
            for channel_id in channel_ids:
                self._emit_sync(channel_id)
        finally:
            self._events_now = None
            if self._events is not None:
                wake_readers(self._events)

    def _forget_idle(self) -> int:
        linger = self.config.channel_linger
        presence = self.presence
        forgotten = self.sequencer.forget_idle(
            linger, lambda channel_id: presence.in_use(channel_id, linger)
        )
        if forgotten:
            if self.history is not None or self.standby is not None:
                self._record(records.forgotten_records(forgotten))
            assert self._events is not None
            self._events_now = self._events_shadow
            try:
                for channel in forgotten:
                    presence.forget_channel(channel.channel_id)
                    # An edge still following the channel learns it is gone without a gap.
                    self._emit_sync(channel.channel_id)
            finally:
                self._events_now = None
                wake_readers(self._events)
            self.counters["channels_forgotten"] += len(forgotten)
        return len(forgotten)

    # -- a standby pair (`broker.standby` calls these) --------------------------

    def run_actions(self, actions: list[Action]) -> None:
        """Send what the standby's confirmation released, in order."""
        assert self._events is not None and self._events_shadow is not None
        events_sent = False
        for kind, payload in actions:
            if kind == "e":
                self._send_event(self._events_shadow, payload)
                events_sent = True
            elif kind == "i":
                self._send_ingress(payload)
            else:
                self._send_control(payload)
        if events_sent:
            wake_readers(self._events)

    def apply_replicated(self, frames: tuple[bytes, ...]) -> None:
        """A batch from the active broker: into this one's state and history file."""
        apply_frames(frames, self.sequencer, self.publishers, self.keys)
        if self.history is not None:
            self.history.append(b"".join(frames))
        self.counters["replicated_batches"] += 1

    def load_copy(self, frames: tuple[bytes, ...]) -> None:
        """The active broker's whole state, in place of this one's."""
        config = self.config
        self.sequencer = Sequencer(
            wire.Limits(config.max_messages, config.min_messages, config.message_timeout)
        )
        self.publishers = Publishers()
        self.keys = Keys(config.idempotency_window, config.idempotency_keys)
        apply_frames(frames, self.sequencer, self.publishers, self.keys)
        self.sequencer.expire()
        if self.history is not None:
            self.history.use_keys(self.keys)
            self.history.rewrite(frames)
        self.counters["replica_copies"] += 1

    def took_over(self) -> None:
        """This broker became the pair's active one."""
        take_over(self.sequencer, time.time())
        self.counters["took_over"] += 1
        self._emit_heartbeat()

    def stepped_down(self) -> None:
        """This broker is passive again: what it sequenced unconfirmed dies with its state,
        replaced by the active broker's copy."""
        self._acks.clear()
        self._answers.clear()
        self.counters["stepped_down"] += 1
        self._emit_heartbeat()
