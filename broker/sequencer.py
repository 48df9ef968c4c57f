"""Gives each message its channel's next id and keeps each channel's bounded history.

Pure bookkeeping with no sockets, so its rules can be tested alone. The
trap is time: ids are built from the wall clock, and must still only ever
increase for a channel when the clock steps back, when a channel is
deleted or forgotten and made again, and when the broker restarts having
lost its memory. The first is handled per channel. For the second, one
watermark stands for every channel the broker no longer holds: the newest
id any of them had, which every channel made later starts after; one
value rather than a tombstone per name, so forgetting really frees
memory. For the last, a broker issues no id before the second after it
started (`first_time`; the server waits for it), which every id of a
previous run precedes, and the history file keeps the watermark for when
the clock was set back.

A channel that holds no message and nobody uses is forgotten after a
linger (`forget_idle`): a site with a channel per user or per object
would otherwise grow its broker without end.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broker.memory import fitted
from broker.wire import Limits, Message, MessageId, Snapshot

# Channels looked at per `forget_idle` call, so a million channels falling
# idle at once are forgotten over several turns of the loop rather than
# stalling it.
FORGET_BATCH = 20_000


@dataclass(slots=True)
class Channel:
    channel_id: str
    # A list, not a deque: an empty deque is 760 bytes, most of a channel that
    # holds one message, and trimming drops from the front in one slice.
    messages: list[Message] = field(default_factory=list)
    # The newest id ever issued here, which the next message names as `prev`.
    last: MessageId | None = None
    # The newest id dropped from `messages` by the limits.
    floor: MessageId | None = None
    # Ids here must exceed this even when `last` is None: the watermark of
    # channels no longer held when this one was made.
    after: MessageId | None = None
    # The sequencer's clock at the latest creation, publish or snapshot.
    touched: float = 0.0
    # Waiting in the queue of channels that may be forgotten.
    queued: bool = False
    # When it was queued there: found holding nothing.
    empty_since: float = 0.0


class Sequencer:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self.first_time = int(clock()) + 1
        self._channels: dict[str, Channel] = {}
        # The newest id of every channel deleted or forgotten.
        self.watermark: MessageId | None = None
        # Each message's id and channel id in publish order, until it expires:
        # expiry is O(expired) rather than a scan of every channel. Two deques of
        # objects the channel already holds, not a tuple and a float per message;
        # not the message itself, whose body the limits may already have dropped.
        self._expiry_ids: deque[MessageId] = deque()
        self._expiry_channels: deque[str] = deque()
        # Channels that held nothing when looked at, oldest `empty_since` first;
        # each at most once (`Channel.queued`).
        self._empty: deque[Channel] = deque()
        # The dict's size when last rebuilt: a dict never shrinks its table.
        self._peak = 0
        # How many times the table was rebuilt smaller.
        self.rebuilds = 0

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, channel_id: object) -> bool:
        return channel_id in self._channels

    def get(self, channel_id: str) -> Channel | None:
        return self._channels.get(channel_id)

    def held_id(self, channel_id: str) -> str | None:
        """`channel_id` as the very string this sequencer holds, or None when it holds no such
        channel: an equal string decoded from a message need not be kept alive."""
        channel = self._channels.get(channel_id)
        return None if channel is None else channel.channel_id

    def channels(self) -> Iterable[Channel]:
        return self._channels.values()

    def create(self, channel_id: str) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = Channel(channel_id, after=self.watermark, touched=self._clock())
            self._channels[channel_id] = channel
            self._peak = max(self._peak, len(self._channels))
            self._queue_if_empty(channel, channel.touched)
        return channel

    def _next_id(self, channel: Channel, now: float) -> MessageId:
        second = max(int(now), self.first_time)
        newest = channel.last
        after = channel.after
        if newest is None or (after is not None and after > newest):
            newest = after
        if newest is None or newest.time < second:
            return MessageId(second, 0)
        return MessageId(newest.time, newest.tag + 1)

    def publish(
        self, channel_id: str, content_type: str | None, body: bytes, event: str | None = None
    ) -> Message:
        """Sequence a message and keep it; returns it as edges must receive it."""
        channel = self._channels.get(channel_id) or self.create(channel_id)
        now = self._clock()
        channel.touched = now
        message = Message(
            channel_id, self._next_id(channel, now), channel.last, None, content_type, body, event
        )
        channel.last = message.id
        channel.messages.append(message)
        self._trim(channel, now)
        if self.limits.message_timeout > 0:
            self._expiry_ids.append(message.id)
            self._expiry_channels.append(channel.channel_id)
        floor = channel.floor
        if floor is None:
            return message
        return Message(channel_id, message.id, message.prev, floor, content_type, body, event)

    def restore(self, message: Message) -> None:
        """Keep a message sequenced by an earlier run, as it was (history replay)."""
        channel = self.create(message.channel_id)
        held = channel.messages
        if held and message.id <= held[-1].id:
            return
        held.append(message)
        if channel.last is None or message.id > channel.last:
            channel.last = message.id
        self._trim(channel, self._clock())
        if self.limits.message_timeout > 0:
            self._expiry_ids.append(message.id)
            self._expiry_channels.append(channel.channel_id)

    def restore_channel(
        self, channel_id: str, last: MessageId | None, floor: MessageId | None
    ) -> None:
        channel = self.create(channel_id)
        if last is not None and (channel.last is None or last > channel.last):
            channel.last = last
        if floor is not None and (channel.floor is None or floor > channel.floor):
            channel.floor = floor

    def restore_watermark(self, watermark: MessageId) -> None:
        self._raise_watermark(watermark)

    def _raise_watermark(self, newest: MessageId | None) -> None:
        if newest is not None and (self.watermark is None or newest > self.watermark):
            self.watermark = newest

    def _trim(self, channel: Channel, now: float) -> None:
        messages = channel.messages
        if not messages:
            return
        limits = self.limits
        drop = max(0, len(messages) - limits.max_messages)
        if limits.message_timeout > 0:
            deadline = now - limits.message_timeout
            while len(messages) - drop > limits.min_messages and messages[drop].id.time <= deadline:
                drop += 1
        if drop:
            channel.floor = messages[drop - 1].id
            del messages[:drop]
        if not messages:
            self._queue_if_empty(channel, now)

    def _queue_if_empty(self, channel: Channel, now: float) -> None:
        if not channel.queued and not channel.messages:
            channel.queued = True
            channel.empty_since = now
            self._empty.append(channel)

    def expire(self) -> None:
        """Drop messages older than `message_timeout` (call about once a second)."""
        now = self._clock()
        ids, channel_ids = self._expiry_ids, self._expiry_channels
        deadline = now - self.limits.message_timeout
        while ids and ids[0].time <= deadline:
            ids.popleft()
            channel = self._channels.get(channel_ids.popleft())
            if channel is not None:
                self._trim(channel, now)

    def forget_idle(
        self, linger: float, in_use: Callable[[str], bool], batch: int = FORGET_BATCH
    ) -> list[Channel]:
        """Forget channels that held no message for `linger` seconds, in which time they
        were not created, published to or snapshotted, and that are not `in_use`
        (subscribers, requests); returns them. Each is forgotten within twice the
        linger of its last use. At most `batch` channels are looked at per call.
        """
        now = self._clock()
        empty = self._empty
        forgotten: list[Channel] = []
        for _ in range(min(batch, len(empty))):
            channel = empty[0]
            since = channel.empty_since
            if since <= now and now - since < linger:
                break
            empty.popleft()
            channel.queued = False
            if self._channels.get(channel.channel_id) is not channel or channel.messages:
                continue  # gone already, or queued again once it is empty again
            if channel.touched > now:
                # The clock was set back: the linger starts again rather than
                # holding every channel until the clock has caught up.
                channel.touched = now
            if now - channel.touched < linger or in_use(channel.channel_id):
                self._queue_if_empty(channel, now)
                continue
            self._retire(channel)
            forgotten.append(channel)
        return forgotten

    def forget(self, channel_id: str, last: MessageId | None) -> None:
        """Forget the channel as `forget_idle` did (history replay); `last` was its newest id."""
        channel = self._channels.get(channel_id)
        if channel is not None:
            self._retire(channel)
        self._raise_watermark(last)

    def _retire(self, channel: Channel) -> None:
        del self._channels[channel.channel_id]
        self._raise_watermark(channel.last)
        self._raise_watermark(channel.after)
        channels = self._channels
        self._channels, self._peak = fitted(channels, self._peak)
        self.rebuilds += self._channels is not channels

    def delete(self, channel_id: str) -> Channel | None:
        """Forget the channel; returns it as it was. Its ids go on where it stopped."""
        channel = self._channels.get(channel_id)
        if channel is not None:
            self._retire(channel)
        return channel

    def snapshot(self, channel_id: str, create: bool) -> Snapshot:
        channel = self.create(channel_id) if create else self._channels.get(channel_id)
        if channel is None:
            return Snapshot(channel_id, False, None, None, self.limits, ())
        now = self._clock()
        channel.touched = now
        self._trim(channel, now)
        return Snapshot(
            channel_id, True, channel.last, channel.floor, self.limits, tuple(channel.messages)
        )
