"""A channel's messages as this edge holds them, and the subscribers waiting on it.

The buffer mirrors the broker's history of one channel: live messages are
appended when their `prev` is the newest id held, anything else is a gap
that the feed repairs from a snapshot. Each new message is handed to the
buffer's subscribers through one small interface, `Subscriber`: a waiting
poll (`Waiter`) takes one and leaves, a stream (`edge.stream`) stays. The
buffer tells its presence callback whenever who waits on it changes, so
whoever reports presence never reads the buffer's insides.

What a transport renders of a message (a poll's head, a stream's event)
is rendered once and kept on the `Held` beside the message, shared by
every subscriber that receives it; the transports fill those slots, so
this model knows nothing of HTTP. Not thread-safe: everything here runs
on the edge's event loop.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from broker.wire import Limits, Message, MessageId, Snapshot


@dataclass(eq=False, slots=True)
class Held:
    """A message as the edge holds it, with what transports rendered of it, once.

    `head` is the status line and headers of the poll's 200 that delivers
    it (`edge.subscriber`), `head_no_store` the same for a poll whose cursor
    was in its URL; `event` is the whole event of a one-channel stream and
    `event_body` what follows the `id:` line on any stream (`edge.stream`);
    `frame` and `meta_frame` are its WebSocket frames for a one-channel socket,
    plain and `ws+meta.nchan` (`edge.socket_subscriber`). Each is None until a
    subscriber first needs it.
    """

    message: Message
    head: bytes | None = None
    head_no_store: bytes | None = None
    event: bytes | None = None
    event_body: bytes | None = None
    frame: bytes | None = None
    meta_frame: bytes | None = None

    @property
    def id(self) -> MessageId:
        return self.message.id


class Subscriber(Protocol):
    """What a channel buffer hands its messages to: a waiting poll, a stream, a WebSocket.

    `cursor` is the newest message it has; the buffer offers it the first
    held message after that one.
    """

    @property
    def cursor(self) -> MessageId | None: ...

    def offer(self, held: Held, missed: bool) -> bool:
        """A message after the cursor (`missed`: some between were dropped); False when the
        subscriber wants no more, and the buffer forgets it."""

    def deleted(self) -> None:
        """The channel was deleted; the buffer has forgotten the subscriber."""

    def release(self) -> None:
        """The edge is stopping: end now."""


# Called with the message a waiting poll receives and whether messages
# between its cursor and that one were dropped; with None when the
# channel was deleted.
Deliver = Callable[[Held | None, bool], None]


@dataclass(eq=False, slots=True)
class Waiter:
    """A poll waiting for one message: the first after its cursor."""

    cursor: MessageId | None
    deliver: Deliver
    # Answers the poll with 304 at once: the edge is shutting down.
    release: Callable[[], None]

    def offer(self, held: Held, missed: bool) -> bool:
        self.deliver(held, missed)
        return False

    def deleted(self) -> None:
        self.deliver(None, False)


def _held_id(held: Held) -> MessageId:
    return held.message.id


def _no_presence(buffer: ChannelBuffer) -> None:
    return None


@dataclass(eq=False, slots=True)
class ChannelBuffer:
    channel_id: str
    held: list[Held] = field(default_factory=list)
    last: MessageId | None = None
    floor: MessageId | None = None
    limits: Limits | None = None
    exists: bool = False
    # Loaded from a snapshot at least once.
    ready: bool = False
    # A snapshot is on its way: live messages wait in `pending` meanwhile.
    refilling: bool = False
    # None while nothing waits, as for most channels most of the time.
    pending: list[Message] | None = None
    # Who waits on the channel: held polls, open streams. A dict as an ordered set:
    # an empty one is a quarter of an empty set, and most channels have no waiter.
    waiters: dict[Subscriber, None] = field(default_factory=dict)
    requested: float = 0.0
    idle_since: float = field(default_factory=time.monotonic)
    # Told whenever who waits here, or when the channel was last asked for, changed.
    presence: Callable[[ChannelBuffer], None] = _no_presence

    def find(self, cursor: MessageId | None) -> tuple[Held | None, bool]:
        """The message a poll at `cursor` receives, and whether it missed some."""
        self.expire(time.time())
        held = self.held
        if not held:
            return None, False
        if cursor is None:
            return held[0], False
        index = bisect.bisect_right(held, cursor, key=_held_id)
        if index == len(held):
            return None, False
        missed = index == 0 and self.floor is not None and cursor < self.floor
        return held[index], missed

    def expire(self, now: float) -> None:
        limits = self.limits
        if limits is None or limits.message_timeout <= 0:
            return
        held = self.held
        deadline = now - limits.message_timeout
        drop = 0
        keep_at_least = limits.min_messages
        while len(held) - drop > keep_at_least and held[drop].id.time <= deadline:
            drop += 1
        if drop:
            self._drop_first(drop)

    def _drop_first(self, count: int) -> None:
        dropped = self.held[count - 1].id
        del self.held[:count]
        if self.floor is None or dropped > self.floor:
            self.floor = dropped

    def _drop_through(self, floor: MessageId) -> None:
        count = bisect.bisect_right(self.held, floor, key=_held_id)
        if count:
            del self.held[:count]
        if self.floor is None or floor > self.floor:
            self.floor = floor

    def _trim(self) -> None:
        limits = self.limits
        if limits is not None and len(self.held) > limits.max_messages:
            self._drop_first(len(self.held) - limits.max_messages)
        self.expire(time.time())

    def apply(self, message: Message) -> bool:
        """Append a live message; False when it reveals a gap to refill."""
        if self.refilling or not self.ready:
            if self.pending is None:
                self.pending = []
            self.pending.append(message)
            return True
        last = self.last
        if last is not None and message.id <= last:
            return True  # already held through a snapshot
        if message.prev != last:
            return False
        self.exists = True
        self.last = message.id
        if message.floor is not None:
            self._drop_through(message.floor)
        self.held.append(Held(message))
        self._trim()
        self.wake()
        return True

    def load(self, snapshot: Snapshot) -> bool:
        """Adopt the broker's view of the channel; False when a gap remains."""
        self.limits = snapshot.limits
        self.exists = snapshot.exists
        if not snapshot.exists:
            self.held.clear()
            self.last = self.floor = None
        else:
            merged = {held.id: held for held in self.held}
            for message in snapshot.messages:
                if message.id not in merged:
                    merged[message.id] = Held(message)
            self.held = [merged[key] for key in sorted(merged)]
            self.last = snapshot.last
            if snapshot.floor is not None:
                self._drop_through(snapshot.floor)
            self._trim()
        self.ready = True
        self.refilling = False
        pending, self.pending = self.pending, None
        complete = pending is None or all(
            self.apply(message) for message in sorted(pending, key=lambda m: m.id)
        )
        self.wake()
        return complete

    def delete(self) -> None:
        """The channel was deleted: every subscriber is told so."""
        self.held.clear()
        self.pending = None
        self.last = self.floor = None
        self.exists = False
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters:
            waiter.deleted()
        self.idle_since = time.monotonic()
        self.presence(self)

    @property
    def subscribers(self) -> int:
        """How many wait on the channel now (its presence)."""
        return len(self.waiters)

    def release_all(self) -> int:
        """The edge is stopping: every subscriber ends now; returns how many there were."""
        waiters = list(self.waiters)
        for waiter in waiters:
            waiter.release()
        return len(waiters)

    def asked(self) -> None:
        """A subscriber asked for the channel just now."""
        self.requested = time.time()
        self.presence(self)

    def wait(self, waiter: Subscriber) -> None:
        self.waiters[waiter] = None
        self.presence(self)

    def forget(self, waiter: Subscriber) -> None:
        if waiter not in self.waiters:
            return
        del self.waiters[waiter]
        if not self.waiters:
            self.idle_since = time.monotonic()
        self.presence(self)

    def wake(self) -> None:
        if not self.waiters or not self.held:
            return
        # Subscribers at one cursor (most of them, on a busy channel) share one look-up,
        # and so one Held and what was rendered of it. One pass over a copy: an offer may
        # end other subscribers, or this one, and so change who waits.
        answers: dict[MessageId | None, tuple[Held | None, bool]] = {}
        left = False
        for waiter in list(self.waiters):
            cursor = waiter.cursor
            answer = answers.get(cursor)
            if answer is None:
                answer = answers[cursor] = self.find(cursor)
            held = answer[0]
            if held is not None and waiter in self.waiters and not waiter.offer(held, answer[1]):
                self.waiters.pop(waiter, None)
                left = True
        if left:
            if not self.waiters:
                self.idle_since = time.monotonic()
            self.presence(self)
