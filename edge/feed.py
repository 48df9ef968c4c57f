"""The edge's link to the broker: channel topics on demand, snapshots, gap repair.

A channel's topic is subscribed when its first client asks for it. The
broker answers each subscription with a sync marker on that same topic,
after the subscription took effect; only then does the edge ask for the
channel's snapshot, so no message can fall between the snapshot and the
live stream. A live message whose `prev` is not the newest id held, or a
sync marker naming another newest id, means this edge lost something (a
high-water mark, a slow joiner): it fetches the snapshot again, and counts
a refill only where messages can have been lost: a sync that says the
broker's channel holds no message ever sent (just created, or forgotten)
while this edge holds none either is no gap. A channel idle for the topic
linger is dropped; once many were, the feed's tables are rebuilt and the
freed memory handed back (`broker.memory`), since neither Python's dicts
nor glibc's heap give it back on their own.

In the process of its broker (`runpushserver` with no role), the events
come through `broker.local` instead of a SUB socket, already decoded, and
presence reports go back through it.

With a standby pair the feed holds a SUB and a DEALER to each broker and
subscribes every topic on both, but applies only what the broker it chose
sends (`broker.choice`): the one whose heartbeat says active in the newest
epoch. It asks that one for snapshots, moves to the other after a silence
(its requests there are its vote), and when the active broker changes it
resynchronises every channel it follows from the new one's snapshots while
its buffers keep serving what they hold. The trap: replies and events from
the broker it left are dropped, however they look, since an old active
broker speaks of an epoch the pair has left behind.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol, cast

import zmq
import zmq.asyncio

from broker import curve, wire
from broker.choice import Choice
from broker.local import LocalLink
from broker.memory import Trimmer
from broker.sockets import (
    FRAME_SLACK,
    Reader,
    configure_keepalive,
    drain,
    limit_frames,
    max_frame_size,
    max_reply_frame_size,
    run_until,
    send_now,
)
from broker.throttled_log import ThrottledLog
from edge.channels import ChannelBuffer
from edge.config import EdgeConfig
from edge.idle import IdleQueue

log = logging.getLogger("pushserver.edge")

# A subscription not answered by a sync marker within this many seconds
# is sent again (the marker may have been dropped, or the broker was away).
RESUBSCRIBE_AFTER = 1.0
SWEEP_INTERVAL = 1.0
# Presence reports to the broker, at most this often (seconds) while counts keep changing.
PRESENCE_INTERVAL = 0.02
# Bytes of channel ids in one presence report at most, so that a report on many
# channels fits the broker's frame limit (`broker.sockets.FRAME_SLACK`).
PRESENCE_BYTES = FRAME_SLACK // 2
# What a presence entry costs beyond its channel id: msgpack's headers, two numbers.
PRESENCE_ENTRY_BYTES = 24
# A channel found in use by a held poll or stream is looked at again after
# this fraction of `topic_linger`: one whose last subscriber leaves just
# after is forgotten at most that much later than the linger says.
IN_USE_RECHECK = 0.25
# Channels looked at per sweep at most (as the broker's `FORGET_BATCH`).
FORGET_BATCH = 20_000
# A refill whose request could not be sent tries again after this long.
REFILL_RETRY = 0.1


class Events(Protocol):
    """Where a broker's events come from: a SUB socket, or the broker in this process."""

    def connect(self, endpoint: str) -> None: ...

    def reconnect(self, endpoint: str) -> bool:
        """Give up the connection for a new one, unless events wait to be read; returns
        whether it did."""
        ...

    def subscribe(self, topic: bytes, again: bool) -> None: ...

    def unsubscribe(self, topic: bytes) -> None: ...

    def close(self) -> None: ...


class SocketEvents:
    """A broker's events over a SUB socket, read from a reader callback of the loop
    (`broker.sockets.Reader`): they come one per publish."""

    def __init__(self, sock: zmq.Socket[bytes], handle: Callable[[list[bytes]], None]) -> None:
        self._socket = sock
        self._reader = Reader(sock, handle)

    def connect(self, endpoint: str) -> None:
        self._socket.connect(endpoint)
        self._reader.start()

    def reconnect(self, endpoint: str) -> bool:
        if cast(int, self._socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            return False  # the edge is behind on its reading, not the broker silent
        # The SUB socket sends its subscriptions again on the new connection.
        self._socket.disconnect(endpoint)
        self._socket.connect(endpoint)
        return True

    def subscribe(self, topic: bytes, again: bool) -> None:
        if again:
            # Repeating a subscription makes the broker send a sync marker again;
            # unsubscribing first keeps the SUB socket's own count at one.
            self._socket.unsubscribe(topic)
        self._socket.subscribe(topic)
        self._reader.poke()

    def unsubscribe(self, topic: bytes) -> None:
        self._socket.unsubscribe(topic)
        self._reader.poke()

    def close(self) -> None:
        self._reader.stop()
        # Made outside the context's own list of sockets: its `destroy` would not close it.
        self._socket.close(linger=0)


class BrokerUnavailable(Exception):
    """The broker did not answer in time."""


class Feed:
    def __init__(self, config: EdgeConfig, local: LocalLink | None = None) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        # A broker of another version, or something else at its address, can send
        # nothing but malformed frames: told a few times a minute, counted in full.
        self._malformed = ThrottledLog(log)
        self.buffers: dict[str, ChannelBuffer] = {}
        self.broker_epoch: str | None = None
        self._context = zmq.asyncio.Context()
        self._stopping = asyncio.Event()
        self._request_ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[wire.Reply]] = {}
        self._synced: dict[str, asyncio.Future[None]] = {}
        self._subscribed_at: dict[str, float] = {}
        # When to look at each buffer to see whether it is idle (`edge.idle`).
        self._idle = IdleQueue()
        # Buffers not loaded yet, whose subscription may need sending again; and
        # those with subscribers, for the full presence report: both few, beside
        # every buffer, which a sweep no longer walks.
        self._unready: dict[str, None] = {}
        self._present: dict[str, ChannelBuffer] = {}
        # The most buffers held since the tables were last rebuilt: a dict
        # never shrinks its table when keys are deleted.
        self._peak = 0
        self.trimmer = Trimmer()
        # One bound method for every buffer, rather than one made per buffer.
        self._touch = self.touch
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._flushed_at = 0.0
        self._last_heartbeat = 0.0
        self.broker_away = False
        # Told after each event of a channel the edge follows: the publisher
        # location's answers that wait for their message (`edge.publisher.CatchUp`).
        self.on_event: Callable[[ChannelBuffer], None] | None = None
        keys = None if config.curve is None else curve.load_client_keys(config.curve)
        links = [(config.events, config.control)]
        if config.standby_events is not None and config.standby_control is not None:
            links.append((config.standby_events, config.standby_control))
        self._links = links
        # Heartbeats come once a second: a third of the failover time would be too quick.
        self.choice = Choice(len(links), config.failover_timeout)
        # The active broker's epoch as last heard (a pair's; 0 without one).
        self._active_epoch = 0
        self._events: list[Events]
        self._local = local
        if local is not None:
            local.to_feed = functools.partial(self._take, 0)
            self._events = [local]
        else:
            self._events = [
                SocketEvents(self._events_socket(keys), functools.partial(self._on_event, index))
                for index in range(len(links))
            ]
        self._control_sockets = [self._control_socket(keys) for _ in links]

    def _events_socket(self, keys: curve.ClientKeys | None) -> zmq.Socket[bytes]:
        config = self.config
        events: zmq.Socket[bytes] = zmq.Socket(self._context, zmq.SUB)
        # It may stop reading at `events_rcvhwm`: no ZMTP heartbeats on this link.
        configure_keepalive(events)
        # Subscriptions obey SNDHWM: with the default only 1,000 topics
        # reach the broker (libzmq #4064).
        events.setsockopt(zmq.SNDHWM, 0)
        events.setsockopt(zmq.RCVHWM, config.events_rcvhwm)
        events.setsockopt(zmq.LINGER, 0)
        events.subscribe(wire.HEARTBEAT_TOPIC)
        limit_frames(events, max_frame_size(config.max_message_size))
        if keys is not None:
            curve.apply_client(events, keys)
        return events

    def _control_socket(self, keys: curve.ClientKeys | None) -> zmq.asyncio.Socket:
        config = self.config
        control = self._context.socket(zmq.DEALER)
        # Replies may wait at the high-water mark: no ZMTP heartbeats on this link.
        configure_keepalive(control)
        control.setsockopt(zmq.LINGER, 0)
        limit_frames(control, max_reply_frame_size(config.max_message_size, config.max_messages))
        if keys is not None:
            curve.apply_client(control, keys)
        return control

    @property
    def _control(self) -> zmq.asyncio.Socket:
        """The control socket of the broker the feed talks to."""
        return self._control_sockets[self.choice.current]

    @property
    def _broker_events(self) -> str:
        return self._links[self.choice.current][0]

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        readers = []
        for index, (events_endpoint, control_endpoint) in enumerate(self._links):
            self._events[index].connect(events_endpoint)
            control = self._control_sockets[index]
            control.connect(control_endpoint)
            readers.append(drain(control, functools.partial(self._on_reply, index), self._stopping))
        try:
            await run_until(self._stopping, *readers, self._sweep())
        finally:
            for events in self._events:
                events.close()
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(BrokerUnavailable("edge stopping"))
            self._context.destroy(linger=0)

    def _reconnect(self, index: int) -> None:
        """New connections to a broker that went silent.

        Its host may be gone, or a network may have dropped the connections
        without a word. TCP keepalive tells only a connection with nothing
        unacknowledged on it, and one with a subscription or a request in
        flight is given up after `UNACKNOWLEDGED_MS` (30 s): meanwhile no
        event would arrive even from a broker back at once. A broker merely
        frozen loses nothing by it: its events come on the new connections.
        """
        events_endpoint, control_endpoint = self._links[index]
        if not self._events[index].reconnect(events_endpoint):
            return
        control = self._control_sockets[index]
        control.disconnect(control_endpoint)
        control.connect(control_endpoint)
        self.counters["reconnects"] += 1
        log.info("connecting again to the broker at %s", events_endpoint)

    # -- what handlers call ----------------------------------------------------

    async def channel(self, channel_id: str, create: bool) -> ChannelBuffer | None:
        """The channel's buffer, synchronised with the broker; None when it does not exist.

        With `create`, a missing channel is created. Raises BrokerUnavailable
        when the broker does not answer within `broker_timeout`.
        """
        buffer = self.buffers.get(channel_id)
        if buffer is None:
            buffer = self.buffers[channel_id] = ChannelBuffer(channel_id, presence=self._touch)
            self._peak = max(self._peak, len(self.buffers))
            self._idle.add(channel_id, buffer.idle_since + self.config.topic_linger)
            self._unready[channel_id] = None
            self._subscribe(channel_id)
        if not buffer.ready:
            waiting = self._synced.get(channel_id)
            if waiting is None:
                waiting = self._synced[channel_id] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(waiting), self.config.broker_timeout)
            except TimeoutError:
                raise BrokerUnavailable("no snapshot from the broker") from None
        if not buffer.exists and create:
            # Meanwhile the sync announcing the new channel is no gap: the
            # reply brings the channel as it is.
            buffer.refilling = True
            try:
                reply = await self.request(wire.Request(wire.SNAPSHOT, 0, channel_id, create=True))
            except BrokerUnavailable:
                buffer.refilling = False
                self._refill(buffer, None)
                raise
            if reply.snapshot is not None:
                self._load(buffer, reply.snapshot)
            else:
                buffer.refilling = False
                self._refill(buffer, None)
        return buffer if buffer.exists else None

    async def request(self, request: wire.Request) -> wire.Reply:
        """Send a control request (its id is assigned here) and await the broker's reply."""
        request_id = next(self._request_ids)
        frames = wire.encode_request(
            wire.Request(
                request.kind,
                request_id,
                request.channel_id,
                request.content_type,
                request.body,
                request.create,
            )
        )
        future: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            if not send_now(self._control, frames):
                raise BrokerUnavailable("control queue is full")
            return await asyncio.wait_for(future, self.config.broker_timeout)
        except TimeoutError:
            raise BrokerUnavailable(
                f"no reply from the broker at {self._links[self.choice.current][1]}"
            ) from None
        finally:
            self._replies.pop(request_id, None)

    def touch(self, buffer: ChannelBuffer) -> None:
        """The channel's held polls or latest request changed: tell the broker soon.

        At once after a quiet spell, so a publish right after a poll arrived
        already counts it; under load at most every PRESENCE_INTERVAL, since
        counts that change on every turn of the loop would otherwise cost a
        message to the broker per turn.
        """
        channel_id = buffer.channel_id
        self._dirty.add(channel_id)
        if buffer.waiters:
            self._present[channel_id] = buffer
        else:
            self._present.pop(channel_id, None)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            wait = self._flushed_at + PRESENCE_INTERVAL - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush_presence)
            else:
                loop.call_soon(self._flush_presence)

    # -- presence --------------------------------------------------------------

    def _flush_presence(self) -> None:
        self._flush_scheduled = False
        self._flushed_at = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, set()
        counts = {}
        for channel_id in dirty:
            buffer = self.buffers.get(channel_id)
            if buffer is not None:
                counts[channel_id] = (buffer.subscribers, buffer.requested)
        if counts:
            self._send_presence(counts, full=False)

    def _report_all(self) -> None:
        counts = {
            channel_id: (buffer.subscribers, buffer.requested)
            for channel_id, buffer in self._present.items()
        }
        self._send_presence(counts, full=True)

    def _send_presence(self, counts: dict[str, tuple[int, float]], full: bool) -> None:
        """Report `counts` in frames of at most `PRESENCE_BYTES` of channel ids each; a full
        report's first frame says it is full, and the frames after it add to it."""
        chunk: dict[str, tuple[int, float]] = {}
        size = 0
        for channel_id, figures in counts.items():
            # isascii() is a flag lookup: most ids need no encoding to be measured.
            length = len(channel_id) if channel_id.isascii() else len(channel_id.encode())
            cost = length + PRESENCE_ENTRY_BYTES
            if chunk and size + cost > PRESENCE_BYTES:
                self._report(wire.Presence(chunk, full))
                chunk, size, full = {}, 0, False
            chunk[channel_id] = figures
            size += cost
        if chunk or full:
            self._report(wire.Presence(chunk, full))

    def _report(self, presence: wire.Presence) -> None:
        if self._local is not None:
            self._local.report(presence)
        else:
            send_now(self._control, wire.encode_presence(presence))

    # -- topics ----------------------------------------------------------------

    def _subscribe(self, channel_id: str) -> None:
        topic = wire.topic(channel_id)
        resubscribing = channel_id in self._subscribed_at
        for events in self._events:
            events.subscribe(topic, resubscribing)
        self._subscribed_at[channel_id] = time.monotonic()

    def _unsubscribe(self, channel_id: str) -> None:
        if self._subscribed_at.pop(channel_id, None) is not None:
            for events in self._events:
                events.unsubscribe(wire.topic(channel_id))

    async def _sweep(self) -> None:
        """Once a second: report presence, resubscribe unanswered topics, drop idle ones."""
        while not self._stopping.is_set():
            await asyncio.sleep(SWEEP_INTERVAL)
            self._report_all()
            now = time.monotonic()
            wall_clock = time.time()
            silent = (
                self._last_heartbeat and now - self._last_heartbeat > self.config.broker_timeout
            )
            if silent and not self.broker_away:
                log.warning("no heartbeat from the broker at %s", self._broker_events)
                self.broker_away = True
                self._reconnect(self.choice.current)
            if self.choice.silent():
                # The vote: the requests of the resynchronisation go to the other broker.
                self._resynchronise("the broker went silent")
            dropped = 0
            for channel_id in self._idle.take_due(now, FORGET_BATCH):
                buffer = self.buffers.get(channel_id)
                if buffer is None:
                    continue
                due = self._next_look(buffer, now, wall_clock)
                if due is not None:
                    self._idle.add(channel_id, due)
                    continue
                del self.buffers[channel_id]
                self._unready.pop(channel_id, None)
                self._present.pop(channel_id, None)
                self._unsubscribe(channel_id)
                dropped += 1
            for channel_id in list(self._unready):
                buffer = self.buffers.get(channel_id)
                if buffer is None or buffer.ready:
                    del self._unready[channel_id]
                elif now - self._subscribed_at.get(channel_id, now) > RESUBSCRIBE_AFTER:
                    self._subscribe(channel_id)
            if len(self.buffers) * 4 < self._peak:
                self._shrink()
            if self.trimmer.forgot(dropped, len(self.buffers)):
                self.counters["memory_trims"] += 1

    def _next_look(self, buffer: ChannelBuffer, now: float, wall_clock: float) -> float | None:
        """None when the buffer is idle (nothing held, nothing asked, since interval polls
        hold nothing, and no first sync awaited, for the linger); else when to look again."""
        linger = self.config.topic_linger
        if buffer.waiters:
            return now + linger * IN_USE_RECHECK
        if buffer.channel_id in self._synced:
            return now + SWEEP_INTERVAL
        due = max(buffer.idle_since + linger, now + buffer.requested + linger - wall_clock)
        return None if due <= now else due

    def _shrink(self) -> None:
        """Copy the tables that fell to a quarter of their peak into tables of their size."""
        self.buffers = dict(self.buffers)
        self._subscribed_at = dict(self._subscribed_at)
        self._synced = dict(self._synced)
        self._unready = dict(self._unready)
        self._present = dict(self._present)
        self._peak = len(self.buffers)
        self.counters["tables_rebuilt"] += 1

    # -- receiving ---------------------------------------------------------------

    def _on_event(self, index: int, frames: list[bytes]) -> None:
        try:
            event = wire.decode_event(frames)
        except wire.WireError as error:
            self.counters["events_malformed"] += 1
            self._malformed.warning("events", "dropped a malformed event: %s", error)
            return
        self._take(index, event)

    def _take(self, index: int, event: wire.Event) -> None:
        """An event from link `index`, decoded (the local link hands it so)."""
        if isinstance(event, wire.Heartbeat):
            self._on_pair_heartbeat(index, event)
            return
        if not self.choice.accepts(index):
            return  # the broker of the pair this feed does not follow
        buffer = self.buffers.get(event.channel_id)
        if buffer is None:
            return  # a topic being unsubscribed
        if isinstance(event, wire.Message):
            if not buffer.apply(event):
                self._refill(buffer, f"message {event.id} follows {event.prev}, not {buffer.last}")
        elif isinstance(event, wire.Sync):
            if not buffer.ready:
                self._refill(buffer, None)
            elif not buffer.refilling and (
                event.exists != buffer.exists or event.last != buffer.last
            ):
                self._refill(buffer, self._gap(buffer, event))
        elif isinstance(event, wire.Deleted):
            buffer.delete()
            self.touch(buffer)
        if self.on_event is not None:
            self.on_event(buffer)

    def _on_pair_heartbeat(self, index: int, heartbeat: wire.Heartbeat) -> None:
        choice = self.choice
        current = choice.current
        if not choice.heard(index, heartbeat.active, heartbeat.pair_epoch):
            self.counters["older_epoch_heartbeats"] += 1
            return
        if choice.current != current:
            self._active_epoch = heartbeat.pair_epoch
            self._resynchronise(f"the broker at {self._links[index][0]} is active")
        elif index == current and heartbeat.active and heartbeat.pair_epoch != self._active_epoch:
            # The broker it voted for took over (or a pair's first heartbeat).
            first = self._active_epoch == 0
            self._active_epoch = heartbeat.pair_epoch
            if not first:
                self._resynchronise("the active broker began a new epoch")
        if index == choice.current:
            self._on_heartbeat(heartbeat)

    def _resynchronise(self, why: str) -> None:
        """Refill every channel from the broker the feed now follows; requests to the one
        it left give up at once, and their callers ask again."""
        self.counters["broker_switches"] += 1
        log.warning("%s; resynchronising %d channels", why, len(self.buffers))
        for future in self._replies.values():
            if not future.done():
                future.set_exception(BrokerUnavailable(why))
        for buffer in self.buffers.values():
            if buffer.ready:
                self._refill(buffer, None)
        for channel_id, buffer in self.buffers.items():
            if not buffer.ready:
                self._subscribe(channel_id)

    def _on_heartbeat(self, heartbeat: wire.Heartbeat) -> None:
        self._last_heartbeat = time.monotonic()
        if self.broker_away:
            log.info("the broker at %s is back", self._broker_events)
            self.broker_away = False
        if heartbeat.epoch != self.broker_epoch:
            if self.broker_epoch is not None:
                self.counters["broker_restarts"] += 1
                log.info("the broker restarted; channels resynchronise")
            self.broker_epoch = heartbeat.epoch

    def _on_reply(self, index: int, frames: list[bytes]) -> None:
        if not self.choice.accepts(index):
            return
        try:
            reply = wire.decode_reply(frames)
        except wire.WireError as error:
            self.counters["control_malformed"] += 1
            self._malformed.warning("control", "dropped a malformed control reply: %s", error)
            return
        future = self._replies.get(reply.request_id)
        if future is not None and not future.done():
            future.set_result(reply)

    # -- snapshots -------------------------------------------------------------

    @staticmethod
    def _gap(buffer: ChannelBuffer, sync: wire.Sync) -> str | None:
        """Why a sync that disagrees with the buffer means lost messages; None when it cannot."""
        if sync.last is None:
            # The broker's channel never held a message: made since, or
            # forgotten once empty. What the buffer still holds past its
            # timeout is no loss either.
            buffer.expire(time.time())
            if not buffer.held:
                return None
        return f"broker's newest is {sync.last}, held {buffer.last}"

    def _refill(self, buffer: ChannelBuffer, gap: str | None) -> None:
        if buffer.refilling:
            return
        if gap is not None:
            self.counters["refills"] += 1
            log.info(
                "refilling channel %r after a gap (%d refills so far): %s",
                buffer.channel_id,
                self.counters["refills"],
                gap,
            )
        buffer.refilling = True
        asyncio.get_running_loop().create_task(self._fetch_snapshot(buffer))

    async def _fetch_snapshot(self, buffer: ChannelBuffer) -> None:
        channel_id = buffer.channel_id
        while self.buffers.get(channel_id) is buffer and not self._stopping.is_set():
            # A channel that has held polls exists for them: keep it so.
            request = wire.Request(wire.SNAPSHOT, 0, channel_id, create=bool(buffer.subscribers))
            try:
                reply = await self.request(request)
            except BrokerUnavailable:
                # Not at once: a request refused without waiting would spin the loop.
                await asyncio.sleep(REFILL_RETRY)
                continue
            if reply.snapshot is not None:
                self._load(buffer, reply.snapshot)
                return

    def _load(self, buffer: ChannelBuffer, snapshot: wire.Snapshot) -> None:
        complete = buffer.load(snapshot)
        waiting = self._synced.pop(buffer.channel_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        if not complete:
            self._refill(buffer, "live messages after the snapshot do not follow it")
