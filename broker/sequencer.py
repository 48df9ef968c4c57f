"""Gives each message its channel's next id and keeps each channel's bounded history.

Pure bookkeeping with no sockets, so its rules can be tested alone. The
trap is time: ids are built from the wall clock, and must still only ever
increase for a channel when the clock steps back, when a channel is
deleted and made again within one second, and when the broker restarts
having lost its memory. The first two are handled per channel; for the
last, a broker issues no id before the second after it started
(`first_time`; the server waits for it), which every id of a previous
run precedes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broker.wire import Limits, Message, MessageId, Snapshot


@dataclass(slots=True)
class Channel:
    channel_id: str
    messages: deque[Message] = field(default_factory=deque)
    # The newest id ever issued here, which the next message names as `prev`.
    last: MessageId | None = None
    # The newest id dropped from `messages` by the limits.
    floor: MessageId | None = None
    # Ids here must exceed this even when `last` is None: the last id of a
    # deleted channel of the same name.
    after: MessageId | None = None


class Sequencer:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self.first_time = int(clock()) + 1
        self._channels: dict[str, Channel] = {}
        self._tombstones: dict[str, MessageId] = {}
        # (expiry time, channel id) in publish order: expiry is O(expired)
        # rather than a scan of every channel.
        self._expiries: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, channel_id: object) -> bool:
        return channel_id in self._channels

    def get(self, channel_id: str) -> Channel | None:
        return self._channels.get(channel_id)

    def channels(self) -> Iterable[Channel]:
        return self._channels.values()

    def create(self, channel_id: str) -> Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = Channel(channel_id, after=self._tombstones.pop(channel_id, None))
            self._channels[channel_id] = channel
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

    def publish(self, channel_id: str, content_type: str | None, body: bytes) -> Message:
        """Sequence a message and keep it; returns it as edges must receive it."""
        channel = self._channels.get(channel_id) or self.create(channel_id)
        now = self._clock()
        message = Message(
            channel_id, self._next_id(channel, now), channel.last, None, content_type, body
        )
        channel.last = message.id
        channel.messages.append(message)
        self._trim(channel, now)
        timeout = self.limits.message_timeout
        if timeout > 0:
            self._expiries.append((message.id.time + timeout, channel_id))
        floor = channel.floor
        if floor is None:
            return message
        return Message(channel_id, message.id, message.prev, floor, content_type, body)

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
            self._expiries.append(
                (message.id.time + self.limits.message_timeout, channel.channel_id)
            )

    def restore_channel(
        self, channel_id: str, last: MessageId | None, floor: MessageId | None
    ) -> None:
        channel = self.create(channel_id)
        if last is not None and (channel.last is None or last > channel.last):
            channel.last = last
        if floor is not None and (channel.floor is None or floor > channel.floor):
            channel.floor = floor

    def _trim(self, channel: Channel, now: float) -> None:
        messages = channel.messages
        limits = self.limits
        while len(messages) > limits.max_messages:
            channel.floor = messages.popleft().id
        if limits.message_timeout > 0:
            deadline = now - limits.message_timeout
            while len(messages) > limits.min_messages and messages[0].id.time <= deadline:
                channel.floor = messages.popleft().id

    def expire(self) -> None:
        """Drop messages older than `message_timeout` (call about once a second)."""
        now = self._clock()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, channel_id = expiries.popleft()
            channel = self._channels.get(channel_id)
            if channel is not None:
                self._trim(channel, now)
        current = int(now)
        for channel_id in [c for c, last in self._tombstones.items() if last.time < current]:
            del self._tombstones[channel_id]

    def delete(self, channel_id: str) -> Channel | None:
        """Forget the channel; returns it as it was. Its ids go on where it stopped."""
        channel = self._channels.pop(channel_id, None)
        if channel is None:
            return None
        newest = max(filter(None, (channel.last, channel.after)), default=None)
        if newest is not None:
            self._tombstones[channel_id] = newest
        return channel

    def snapshot(self, channel_id: str, create: bool) -> Snapshot:
        channel = self.create(channel_id) if create else self._channels.get(channel_id)
        if channel is None:
            return Snapshot(channel_id, False, None, None, self.limits, ())
        self._trim(channel, self._clock())
        return Snapshot(
            channel_id, True, channel.last, channel.floor, self.limits, tuple(channel.messages)
        )
