"""An edge's channel buffer: following the broker's stream, noticing gaps, waking polls."""

from __future__ import annotations

from broker.wire import Limits, Message, MessageId, Snapshot
from edge.channels import ChannelBuffer, Held, Waiter

LIMITS = Limits(max_messages=3, min_messages=0, message_timeout=0)


def message(tag: int, prev: int | None, floor: int | None = None) -> Message:
    def at(t: int | None) -> MessageId | None:
        return None if t is None else MessageId(2_000_000_000, t)

    return Message(
        "c", MessageId(2_000_000_000, tag), at(prev), at(floor), None, f"m{tag}".encode()
    )


def loaded(*messages: Message, floor: Message | None = None) -> ChannelBuffer:
    buffer = ChannelBuffer("c")
    last = messages[-1].id if messages else None
    buffer.load(Snapshot("c", True, last, floor.id if floor else None, LIMITS, messages))
    return buffer


def bodies(buffer: ChannelBuffer) -> list[bytes]:
    return [held.message.body for held in buffer.held]


def test_a_message_following_the_newest_is_appended() -> None:
    buffer = loaded(message(0, None))
    assert buffer.apply(message(1, 0))
    assert bodies(buffer) == [b"m0", b"m1"]


def test_a_message_not_following_the_newest_is_a_gap() -> None:
    buffer = loaded(message(0, None))
    assert not buffer.apply(message(2, 1))
    assert bodies(buffer) == [b"m0"]


def test_a_message_already_held_is_ignored() -> None:
    buffer = loaded(message(0, None), message(1, 0))
    assert buffer.apply(message(1, 0))
    assert bodies(buffer) == [b"m0", b"m1"]


def test_messages_arriving_before_the_snapshot_are_applied_after_it() -> None:
    buffer = ChannelBuffer("c")
    assert buffer.apply(message(1, 0)) and buffer.apply(message(2, 1))
    assert bodies(buffer) == []  # nothing is served before the snapshot
    complete = buffer.load(
        Snapshot("c", True, message(1, 0).id, None, LIMITS, (message(0, None), message(1, 0)))
    )
    assert complete
    assert bodies(buffer) == [b"m0", b"m1", b"m2"]


def test_the_buffer_keeps_max_messages_and_reports_what_a_cursor_missed() -> None:
    buffer = loaded(message(0, None))
    for tag in range(1, 5):
        buffer.apply(message(tag, tag - 1))
    assert bodies(buffer) == [b"m2", b"m3", b"m4"]
    held, missed = buffer.find(message(0, None).id)
    assert held is not None and held.message.body == b"m2" and missed
    held, missed = buffer.find(message(1, 0).id)
    assert held is not None and held.message.body == b"m2" and not missed
    assert buffer.find(message(4, 3).id) == (None, False)


def test_a_live_message_carrying_a_floor_drops_what_the_broker_dropped() -> None:
    buffer = loaded(message(0, None), message(1, 0))
    assert buffer.apply(message(2, 1, floor=0))
    assert bodies(buffer) == [b"m1", b"m2"]


def test_waiting_polls_at_one_cursor_share_one_answer() -> None:
    buffer = loaded(message(0, None))
    got: list[tuple[Held | None, bool]] = []
    for _ in range(3):
        buffer.wait(Waiter(message(0, None).id, lambda h, m: got.append((h, m)), lambda: None))
    buffer.apply(message(1, 0))
    assert len(got) == 3 and len({id(h) for h, _ in got}) == 1
    held, missed = got[0]
    assert held is not None and held.message.body == b"m1" and not missed
    assert not buffer.waiters


def test_deleting_the_channel_answers_waiting_polls_with_nothing() -> None:
    buffer = loaded(message(0, None))
    got: list[tuple[Held | None, bool]] = []
    buffer.wait(Waiter(message(0, None).id, lambda h, m: got.append((h, m)), lambda: None))
    buffer.delete()
    assert got == [(None, False)]
    assert not buffer.exists and not buffer.held


class Follower:
    """A subscriber that stays, as a stream does: it takes every message after its cursor."""

    def __init__(self, cursor: MessageId | None) -> None:
        self.cursor = cursor
        self.got: list[tuple[bytes, bool]] = []
        self.ended = ""

    def offer(self, held: Held, missed: bool) -> bool:
        self.got.append((held.message.body, missed))
        self.cursor = held.id
        return True

    def deleted(self) -> None:
        self.ended = "deleted"

    def release(self) -> None:
        self.ended = "released"


def test_a_subscriber_that_stays_is_offered_every_new_message_in_order() -> None:
    buffer = loaded(message(0, None))
    follower = Follower(message(0, None).id)
    buffer.wait(follower)
    for tag in range(1, 4):
        buffer.apply(message(tag, tag - 1))
    assert follower.got == [(b"m1", False), (b"m2", False), (b"m3", False)]
    assert buffer.subscribers == 1


def test_subscribers_at_one_cursor_share_the_held_message_and_what_was_rendered_of_it() -> None:
    buffer = loaded(message(0, None))
    offered: list[Held] = []

    class Recorder(Follower):
        def offer(self, held: Held, missed: bool) -> bool:
            offered.append(held)
            return super().offer(held, missed)

    for _ in range(3):
        buffer.wait(Recorder(message(0, None).id))
    buffer.apply(message(1, 0))
    assert len(offered) == 3 and len({id(held) for held in offered}) == 1


def test_presence_is_told_whenever_who_waits_changes() -> None:
    told: list[int] = []
    buffer = loaded(message(0, None))
    buffer.presence = lambda changed: told.append(changed.subscribers)
    poll = Waiter(message(0, None).id, lambda h, m: None, lambda: None)
    follower = Follower(None)
    buffer.wait(poll)
    buffer.wait(follower)
    buffer.apply(message(1, 0))  # the poll is answered and leaves; the follower stays
    buffer.asked()
    buffer.forget(follower)
    assert told == [1, 2, 1, 1, 0]


def test_stopping_releases_every_subscriber_and_deleting_tells_each() -> None:
    buffer = loaded(message(0, None))
    followers = [Follower(None), Follower(None)]
    for follower in followers:
        buffer.wait(follower)
    assert buffer.release_all() == 2
    assert [follower.ended for follower in followers] == ["released", "released"]
    buffer.delete()
    assert [follower.ended for follower in followers] == ["deleted", "deleted"]
    assert buffer.subscribers == 0
