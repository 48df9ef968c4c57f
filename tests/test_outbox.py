"""What one sending socket numbers, keeps and writes again: acks, gaps, renumbering and
resends, decided without sockets and with the clock under the test's control."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from broker import wire
from broker.outbox import RESEND_AFTER, Outbox, Renumbered
from tests.clock import Clock


@pytest.fixture
def outbox(clock: Clock) -> Outbox:
    """An outbox on the test's clock (conftest.py)."""
    return Outbox(clock)


def queue(outbox: Outbox, *bodies: bytes) -> list[wire.Publish | None]:
    """Append one message per body; what each `append` returned to be written at once."""
    return [outbox.append("news", body, "application/json") for body in bodies]


def written(publishes: Iterable[wire.Publish | None]) -> list[tuple[int, int, bytes]]:
    """(seq, base, body) of each message handed out, in order."""
    return [(p.seq, p.base, p.body) for p in publishes if p is not None]


def ack(outbox: Outbox, seq: int, gap: bool = False) -> Renumbered | None:
    return outbox.on_ack(wire.Ack(outbox.identity, seq, gap))


# -- numbering and the first write ---------------------------------------------


def test_messages_are_numbered_from_zero_under_one_identity_of_sixteen_random_bytes(
    outbox: Outbox, clock: Clock
) -> None:
    publishes = queue(outbox, b"a", b"b", b"c")
    assert publishes == [
        wire.Publish("news", "application/json", body, outbox.identity, seq, 0)
        for seq, body in enumerate([b"a", b"b", b"c"])
    ]
    assert len(outbox.identity) == 16
    assert Outbox(clock).identity != outbox.identity


def test_each_message_names_the_oldest_the_broker_has_not_acknowledged_as_its_base(
    outbox: Outbox,
) -> None:
    assert written(queue(outbox, b"a", b"b", b"c")) == [(0, 0, b"a"), (1, 0, b"b"), (2, 0, b"c")]
    ack(outbox, 1)
    assert written(queue(outbox, b"d")) == [(3, 2, b"d")]


def test_a_message_is_handed_out_at_once_while_nothing_older_waits_to_be_written(
    outbox: Outbox,
) -> None:
    assert outbox.append("news", b"a", None) is not None
    outbox.unwrite()  # the socket could not take it
    assert outbox.append("news", b"b", None) is None  # behind "a"
    assert written(outbox.due()) == [(0, 0, b"a"), (1, 0, b"b")]
    assert written(queue(outbox, b"c")) == [(2, 0, b"c")]


def test_nothing_is_due_while_everything_written_waits_for_its_ack(outbox: Outbox) -> None:
    queue(outbox, b"a", b"b")
    assert list(outbox.due()) == []
    assert len(outbox.unacked) == 2


def test_a_message_handed_back_stays_due_with_everything_behind_it(outbox: Outbox) -> None:
    queue(outbox, b"a")
    outbox.unwrite()
    queue(outbox, b"b", b"c")
    due = outbox.due()
    assert written([next(due)]) == [(0, 0, b"a")]
    outbox.unwrite()  # refused again: the writer stops here
    assert written(outbox.due()) == [(0, 0, b"a"), (1, 0, b"b"), (2, 0, b"c")]
    assert list(outbox.due()) == []


# -- acks ------------------------------------------------------------------------


def test_an_ack_drops_every_message_up_to_its_number(outbox: Outbox) -> None:
    queue(outbox, b"0", b"1", b"2", b"3", b"4")
    assert ack(outbox, 2) is None
    assert (outbox.acked, written(outbox.unacked)) == (2, [(3, 0, b"3"), (4, 0, b"4")])
    ack(outbox, 1)  # older than one already taken: arrived late, changes nothing
    assert (outbox.acked, len(outbox.unacked)) == (2, 2)
    ack(outbox, 4)
    assert (outbox.acked, len(outbox.unacked)) == (4, 0)
    assert list(outbox.due()) == []


def test_an_ack_beyond_the_newest_number_counts_only_up_to_it(outbox: Outbox) -> None:
    queue(outbox, b"0", b"1")
    ack(outbox, 10)
    assert (outbox.acked, len(outbox.unacked)) == (1, 0)
    assert written(queue(outbox, b"2")) == [(2, 2, b"2")]
    assert list(outbox.due()) == []


def test_a_gap_ack_beyond_the_newest_number_leaves_the_next_message_written_at_once(
    outbox: Outbox,
) -> None:
    queue(outbox, b"0", b"1")
    ack(outbox, 10, gap=True)
    assert (outbox.acked, len(outbox.unacked)) == (1, 0)
    assert written(queue(outbox, b"2")) == [(2, 2, b"2")]


def test_an_ack_for_another_identity_changes_nothing(outbox: Outbox) -> None:
    queue(outbox, b"0", b"1")
    assert outbox.on_ack(wire.Ack(b"someone else's id", 1)) is None
    assert outbox.on_ack(wire.Ack(b"someone else's id", 0, gap=True)) is None
    assert (outbox.acked, len(outbox.unacked)) == (-1, 2)
    assert list(outbox.due()) == []


# -- what is written again ---------------------------------------------------------


def test_after_a_reconnection_everything_unacknowledged_is_written_again_oldest_first(
    outbox: Outbox,
) -> None:
    identity = outbox.identity
    queue(outbox, b"a", b"b", b"c")
    ack(outbox, 0)
    outbox.on_reconnect()
    again = list(outbox.due())
    # The oldest now says it is the oldest, so a broker that does not know this
    # publisher starts it there; the publisher keeps its identity.
    assert [(p.publisher, p.seq, p.base, p.body) for p in again] == [
        (identity, 1, 1, b"b"),
        (identity, 2, 0, b"c"),
    ]
    assert list(outbox.due()) == []


def test_an_ack_for_messages_not_yet_written_again_after_a_reconnection_skips_them(
    outbox: Outbox,
) -> None:
    queue(outbox, b"a", b"b", b"c")
    outbox.on_reconnect()
    ack(outbox, 1)  # sent by the broker before it saw the reconnection
    assert written(outbox.due()) == [(2, 2, b"c")]


@pytest.mark.parametrize("acknowledged_first", [False, True])
def test_a_gap_ack_has_everything_after_its_number_written_again_in_order(
    outbox: Outbox, acknowledged_first: bool
) -> None:
    queue(outbox, b"a", b"b", b"c")
    if acknowledged_first:
        ack(outbox, 0)
    assert ack(outbox, 0, gap=True) is None  # "1 never arrived": again after 0
    assert outbox.acked == 0
    assert written(outbox.due()) == [(1, 1, b"b"), (2, 0, b"c")]
    assert list(outbox.due()) == []


def test_a_gap_ack_at_a_number_not_written_yet_writes_nothing_twice(outbox: Outbox) -> None:
    queue(outbox, b"a", b"b")
    outbox.unwrite()  # "b" is not written
    ack(outbox, 0, gap=True)
    assert written(outbox.due()) == [(1, 1, b"b")]


def test_a_broker_that_does_not_know_the_publisher_gets_everything_from_the_oldest(
    outbox: Outbox,
) -> None:
    """As from a broker restarted without history that first saw a message written
    ahead of the oldest unacknowledged one."""
    identity = outbox.identity
    queue(outbox, b"a", b"b", b"c")
    ack(outbox, 0)
    assert ack(outbox, wire.UNKNOWN, gap=True) is None
    assert outbox.identity == identity
    assert written(outbox.due()) == [(1, 1, b"b"), (2, 0, b"c")]


def test_a_broker_that_does_not_know_the_publisher_before_any_ack_gets_everything(
    outbox: Outbox,
) -> None:
    queue(outbox, b"a", b"b")
    ack(outbox, wire.UNKNOWN, gap=True)
    assert written(outbox.due()) == [(0, 0, b"a"), (1, 0, b"b")]


def test_written_messages_unacknowledged_for_resend_after_are_written_again(
    outbox: Outbox, clock: Clock
) -> None:
    queue(outbox, b"a", b"b")
    clock.now += RESEND_AFTER
    assert list(outbox.due()) == []
    clock.now += 0.01
    assert written(outbox.due()) == [(0, 0, b"a"), (1, 0, b"b")]
    # Written again just now: the wait starts over.
    clock.now += RESEND_AFTER
    assert list(outbox.due()) == []


def test_an_ack_starts_the_resend_wait_over(outbox: Outbox, clock: Clock) -> None:
    queue(outbox, b"a", b"b")
    clock.now += RESEND_AFTER - 0.5
    ack(outbox, 0)
    clock.now += 1.0
    assert list(outbox.due()) == []
    clock.now += RESEND_AFTER
    assert written(outbox.due()) == [(1, 1, b"b")]


def test_the_resend_wait_of_a_message_after_an_idle_spell_starts_when_it_is_written(
    outbox: Outbox, clock: Clock
) -> None:
    queue(outbox, b"a")
    ack(outbox, 0)
    clock.now += 60.0  # nothing to send for a minute
    queue(outbox, b"b")
    clock.now += 1.0
    assert list(outbox.due()) == []
    clock.now += RESEND_AFTER
    assert written(outbox.due()) == [(1, 1, b"b")]


# -- a broker that lost what it acknowledged -----------------------------------------


def test_a_gap_below_what_was_acknowledged_renumbers_the_queue_under_a_new_identity(
    outbox: Outbox,
) -> None:
    """A broker whose history lost its tail holds only up to 1, so 3 is a gap this
    identity can no longer fill (2 was acknowledged and dropped)."""
    old = outbox.identity
    queue(outbox, b"0", b"1", b"2")
    ack(outbox, 2)
    queue(outbox, b"3", b"4")
    assert ack(outbox, 1, gap=True) == Renumbered(broker_holds=1, acknowledged=2, queued=2)
    new = outbox.identity
    assert new != old and len(new) == 16
    again = list(outbox.due())
    assert [(p.publisher, p.seq, p.base, p.body) for p in again] == [
        (new, 0, 0, b"3"),
        (new, 1, 0, b"4"),
    ]
    # Acks for the old identity no longer count; the new one's do.
    assert outbox.on_ack(wire.Ack(old, 4)) is None
    assert len(outbox.unacked) == 2
    ack(outbox, 1)
    assert len(outbox.unacked) == 0
    following = outbox.append("news", b"5", None)
    assert following is not None
    assert written([following]) == [(2, 2, b"5")]
    assert following.publisher == new


def test_a_message_keeps_its_key_and_its_wish_for_an_answer_whenever_it_is_repacked(
    outbox: Outbox,
) -> None:
    """Written again as the oldest (a new base), and renumbered under a new identity."""
    outbox.append("news", b"0", None, "key-0", True)
    outbox.append("news", b"1", None, None, False)
    outbox.append("news", b"2", None, None, True)
    outbox.append("news", b"3", None, "key-3", False)
    ack(outbox, 1)
    outbox.on_reconnect()
    marked = list(outbox.due())
    assert [(p.seq, p.base, p.key, p.reply) for p in marked] == [
        (2, 2, None, True),
        (3, 0, "key-3", False),
    ]
    assert ack(outbox, 0, gap=True) is not None
    renumbered = list(outbox.due())
    assert [(p.seq, p.body, p.key, p.reply) for p in renumbered] == [
        (0, b"2", None, True),
        (1, b"3", "key-3", False),
    ]


def test_writing_what_is_due_stops_at_the_first_message_the_socket_refuses(
    outbox: Outbox,
) -> None:
    for body in (b"a", b"b", b"c"):
        outbox.append("news", body, None)
    outbox.on_reconnect()
    taken: list[wire.Publish] = []

    def write(publish: wire.Publish) -> bool:
        if len(taken) == 1:
            return False
        taken.append(publish)
        return True

    outbox.write_due(write)
    assert written(taken) == [(0, 0, b"a")]
    assert written(outbox.due()) == [(1, 0, b"b"), (2, 0, b"c")]
