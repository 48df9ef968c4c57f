"""A channel's messages as this edge holds them, and the polls waiting on it.

The buffer mirrors the broker's history of one channel: live messages are
appended when their `prev` is the newest id held, anything else is a gap
that the feed repairs from a snapshot. Each message's response headers are
rendered once, when it arrives, and shared by every poll that receives it.
Not thread-safe: everything here runs on the edge's event loop.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.wire import Limits, Message, MessageId, Snapshot, content_type_problem
from edge.connection import render_head
from edge.protocol import (
    CACHE_CONTROL,
    ETAG,
    LAST_MODIFIED,
    VARY,
    VARY_VALUE,
    cache_control,
    http_date,
)


@dataclass(frozen=True, slots=True)
class Held:
    """A message with the head of the 200 that delivers it, rendered once.

    `head` is the status line and every header that depends on the message
    alone (validators, Content-Type, Content-Length); a response adds the
    lines that depend on the request (CORS, Date, Connection) and the body.
    """

    message: Message
    head: bytes

    @classmethod
    def of(cls, message: Message) -> Held:
        tag = message.id.tag
        headers = [
            (LAST_MODIFIED, http_date(message.id.time)),
            (ETAG, str(tag)),
            (CACHE_CONTROL, cache_control(tag)),
            (VARY, VARY_VALUE),
        ]
        content_type = message.content_type
        # The wire refuses one a header cannot carry; should one get here anyway, the
        # message goes out without it rather than with a forged or broken head.
        if content_type is not None and content_type_problem(content_type) is None:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(len(message.body))))
        return cls(message, render_head(200, headers))

    @property
    def id(self) -> MessageId:
        return self.message.id


# Called with the message a waiting poll receives and whether messages
# between its cursor and that one were dropped; with None when the
# channel was deleted.
Deliver = Callable[[Held | None, bool], None]


@dataclass(eq=False, slots=True)
class Waiter:
    cursor: MessageId | None
    deliver: Deliver
    # Answers the poll with 304 at once: the edge is shutting down.
    release: Callable[[], None]


def _held_id(held: Held) -> MessageId:
    return held.message.id


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
    pending: list[Message] = field(default_factory=list)
    waiters: set[Waiter] = field(default_factory=set)
    requested: float = 0.0
    idle_since: float = field(default_factory=time.monotonic)

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
        self.held.append(Held.of(message))
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
                    merged[message.id] = Held.of(message)
            self.held = [merged[key] for key in sorted(merged)]
            self.last = snapshot.last
            if snapshot.floor is not None:
                self._drop_through(snapshot.floor)
            self._trim()
        self.ready = True
        self.refilling = False
        pending, self.pending = self.pending, []
        complete = all(self.apply(message) for message in sorted(pending, key=lambda m: m.id))
        self.wake()
        return complete

    def delete(self) -> None:
        """The channel was deleted: every waiting poll is told so."""
        self.held.clear()
        self.pending.clear()
        self.last = self.floor = None
        self.exists = False
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            waiter.deliver(None, False)
        self.idle_since = time.monotonic()

    def wait(self, waiter: Waiter) -> None:
        self.waiters.add(waiter)

    def forget(self, waiter: Waiter) -> None:
        self.waiters.discard(waiter)
        if not self.waiters:
            self.idle_since = time.monotonic()

    def wake(self) -> None:
        if not self.waiters or not self.held:
            return
        answers: dict[MessageId | None, tuple[Held | None, bool]] = {}
        woken: list[tuple[Waiter, Held, bool]] = []
        for waiter in self.waiters:
            answer = answers.get(waiter.cursor)
            if answer is None:
                answer = answers[waiter.cursor] = self.find(waiter.cursor)
            held, missed = answer
            if held is not None:
                woken.append((waiter, held, missed))
        for waiter, held, missed in woken:
            self.waiters.discard(waiter)
            waiter.deliver(held, missed)
        if not self.waiters:
            self.idle_since = time.monotonic()
