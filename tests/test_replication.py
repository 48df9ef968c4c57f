"""What an active broker sends its standby and when it may acknowledge, with the clock in
the test's hands: batches, the ack rule, a standby's copy and tail, ids and repeats across a
failover."""

from __future__ import annotations

from pathlib import Path

from broker.history import (
    History,
    created_record,
    deleted_record,
    message_record,
    numbered_record,
    state_records,
)
from broker.idempotency import Keys
from broker.publishers import Publishers, Verdict
from broker.replication import (
    Backup,
    Replica,
    Replication,
    apply_frames,
    frames_of,
    take_over,
)
from broker.replication import Verdict as BatchVerdict
from broker.sequencer import Sequencer
from broker.wire import Limits, MessageId
from tests.clock import Clock

PUBLISHER = b"p" * 16
CONFIRM_TIMEOUT = 2.0


class Broker:
    """A broker's state without sockets: what the active writes, and what a standby applies."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sequencer = Sequencer(Limits(100, 0, 0), clock)
        self.publishers = Publishers(clock)
        self.keys = Keys(60.0, 1000)

    def publish(self, channel_id: str, body: bytes, seq: int) -> tuple[MessageId, bytes]:
        assert self.publishers.admit(PUBLISHER, seq, 0) is Verdict.NEW
        message = self.sequencer.publish(channel_id, None, body)
        return message.id, message_record(message, (PUBLISHER, seq))

    def apply(self, records: list[bytes]) -> None:
        apply_frames(frames_of(records), self.sequencer, self.publishers, self.keys)

    def held(self, channel_id: str) -> list[tuple[MessageId, MessageId | None, bytes]]:
        channel = self.sequencer.get(channel_id)
        assert channel is not None
        return [(m.id, m.prev, m.body) for m in channel.messages]


def joined(replication: Replication[str]) -> None:
    """A standby that asked for a copy and confirmed it."""
    number, _ = replication.begin_copy()
    replication.confirmed(number)
    assert replication.backup is Backup.JOINED


# -- the ack rule --------------------------------------------------------------


def test_without_a_standby_every_action_runs_at_once_and_the_pair_says_it_is_degraded(
    clock: Clock,
) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    replication.record(b"r")
    assert not replication.hold("ack 0")
    assert replication.close() is None  # nobody to send records to
    assert replication.degraded


def test_an_ack_waits_until_the_standby_confirms_the_batch_holding_its_message(
    clock: Clock,
) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    joined(replication)
    replication.record(b"m0")
    assert replication.hold("ack 0")
    batch = replication.close()
    assert batch is not None and batch.records == [b"m0"]
    replication.record(b"m1")
    replication.hold("ack 1")
    second = replication.close()
    assert second is not None and second.number == batch.number + 1
    assert replication.take_released() == []
    assert replication.lag() == (2, 0.0)
    assert replication.confirmed(batch.number) == ["ack 0"]
    assert replication.confirmed(second.number) == ["ack 1"]
    assert not replication.degraded


def test_a_confirmation_covers_every_batch_before_it(clock: Clock) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    joined(replication)
    numbers = []
    for n in range(3):
        replication.record(b"m")
        replication.hold(f"ack {n}")
        batch = replication.close()
        assert batch is not None
        numbers.append(batch.number)
    assert replication.confirmed(numbers[-1]) == ["ack 0", "ack 1", "ack 2"]


def test_the_ack_of_a_repeat_waits_for_the_newest_batch_sent(clock: Clock) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    joined(replication)
    replication.record(b"m0")
    replication.hold("ack 0")
    batch = replication.close()
    assert batch is not None
    replication.hold("ack 0 again")  # a repeat: no record of its own
    assert replication.close() is None
    assert replication.take_released() == []
    assert replication.confirmed(batch.number) == ["ack 0", "ack 0 again"]


def test_an_action_with_nothing_unconfirmed_before_it_is_released_at_the_close(
    clock: Clock,
) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    joined(replication)
    replication.hold("ack of a repeat")
    assert replication.close() is None
    assert replication.take_released() == ["ack of a repeat"]


def test_a_standby_that_stops_confirming_is_overdue_and_losing_it_releases_every_ack(
    clock: Clock,
) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    joined(replication)
    replication.record(b"m0")
    replication.hold("ack 0")
    replication.close()
    replication.record(b"m1")
    replication.hold("ack 1")  # still in the open batch
    clock.now += CONFIRM_TIMEOUT
    assert not replication.overdue()
    clock.now += 0.1
    assert replication.overdue()
    assert replication.lost() == ["ack 0", "ack 1"]
    assert replication.degraded and replication.backup is Backup.ABSENT
    assert replication.close() is None


def test_a_standby_copying_does_not_count_until_it_confirms_the_copy(clock: Clock) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    replication.record(b"before the standby")
    assert replication.close() is None
    number, released = replication.begin_copy()
    assert released == []
    assert replication.backup is Backup.COPYING and replication.degraded
    # The tail goes to the standby, but acks do not wait for it yet.
    replication.record(b"tail")
    assert not replication.hold("ack while copying")
    tail = replication.close()
    assert tail is not None and tail.number == number + 1
    assert replication.confirmed(number) == []
    assert replication.backup is Backup.JOINED
    replication.record(b"m")
    assert replication.hold("ack once joined")


def test_a_standby_asking_for_a_copy_again_no_longer_holds_acks_back(clock: Clock) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    joined(replication)
    replication.record(b"m0")
    replication.hold("ack 0")
    replication.close()
    _, released = replication.begin_copy()
    assert released == ["ack 0"]


def test_the_active_broker_counts_its_standby_from_the_copy_it_asked_for_until_it_is_lost(
    clock: Clock,
) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    assert not replication.counts_peer
    number, _ = replication.begin_copy()
    assert replication.counts_peer  # copying: what it asked for is on its way
    replication.confirmed(number)
    assert replication.counts_peer
    replication.lost()
    assert not replication.counts_peer


# -- the standby's side ----------------------------------------------------------


def test_a_replica_the_active_broker_no_longer_counts_asks_for_a_copy_again(
    clock: Clock,
) -> None:
    replica = Replica(1.0, clock)
    replica.on_copy(7, 3)
    assert not replica.on_active(counted=True)
    assert replica.synced and not replica.wants_copy()
    # The active broker dropped it (a broken link, a batch overdue) and went on alone;
    # no batch will show the gap, only its word.
    assert replica.on_active(counted=False)
    assert not replica.synced and replica.wants_copy()
    assert not replica.on_active(counted=False)  # dropped already: said once


def test_a_standby_applies_batches_in_order_and_asks_for_a_copy_after_a_missing_one(
    clock: Clock,
) -> None:
    replica = Replica(1.0, clock)
    assert replica.wants_copy()
    assert not replica.wants_copy()  # asked already
    assert replica.on_batch(7, 4) is BatchVerdict.NEED_COPY  # no copy yet
    replica.on_copy(7, 3)
    assert replica.synced
    assert replica.on_batch(7, 4) is BatchVerdict.APPLY
    assert replica.on_batch(7, 4) is BatchVerdict.OLD
    assert replica.on_batch(7, 6) is BatchVerdict.NEED_COPY
    assert not replica.synced
    clock.now += 1.0
    assert replica.wants_copy()


def test_a_standby_asks_for_a_copy_when_batches_come_from_another_epoch(clock: Clock) -> None:
    replica = Replica(1.0, clock)
    replica.on_copy(7, 3)
    assert replica.on_batch(8, 4) is BatchVerdict.NEED_COPY


def test_a_standby_rejoining_copies_the_state_then_applies_the_tail(clock: Clock) -> None:
    active = Broker(clock)
    for seq in range(5):
        active.publish("a", b"%d" % seq, seq)
    active.sequencer.create("empty")
    copy = list(state_records(active.sequencer, active.publishers, active.keys))
    tail = []
    for seq in range(5, 8):
        tail.append(active.publish("a", b"%d" % seq, seq)[1])
    tail.append(created_record("b"))
    active.sequencer.create("b")
    standby = Broker(clock)
    standby.apply(copy)
    standby.apply(tail)
    assert standby.held("a") == active.held("a")
    assert "empty" in standby.sequencer and "b" in standby.sequencer
    assert standby.publishers.last(PUBLISHER) == 7


def test_deletions_and_limits_reach_the_standby(clock: Clock) -> None:
    active = Broker(clock)
    records = [active.publish("a", b"x", 0)[1]]
    deleted = active.sequencer.delete("a")
    assert deleted is not None
    records.append(deleted_record("a"))
    standby = Broker(clock)
    standby.apply(records)
    assert "a" not in standby.sequencer
    # The channel made again continues after its deleted self, on the standby too.
    take_over(standby.sequencer, clock.now)
    assert standby.sequencer.publish("a", None, b"y").id > deleted.messages[-1].id
    limited = Broker(clock)
    limited.sequencer.limits = Limits(2, 0, 0)
    limited.apply([active.publish("c", b"%d" % n, n + 1)[1] for n in range(4)])
    assert [body for _, _, body in limited.held("c")] == [b"2", b"3"]


def test_the_replicated_ledger_recognises_a_publishers_repeats_after_failover(
    clock: Clock,
) -> None:
    active = Broker(clock)
    records = [active.publish("a", b"%d" % seq, seq)[1] for seq in range(5)]
    records.append(numbered_record(PUBLISHER, 5))  # a key's retry took number 5
    standby = Broker(clock)
    standby.apply(records)
    # The publisher missed the acks and sends 3, 4, 5 again, then 6.
    assert standby.publishers.admit(PUBLISHER, 3, 3) is Verdict.REPEAT
    assert standby.publishers.admit(PUBLISHER, 5, 3) is Verdict.REPEAT
    assert standby.publishers.admit(PUBLISHER, 6, 3) is Verdict.NEW


def test_ids_keep_increasing_across_a_failover_and_none_is_given_twice(clock: Clock) -> None:
    active = Broker(clock)
    records = [active.publish("a", b"%d" % seq, seq)[1] for seq in range(3)]
    standby = Broker(clock)
    standby.apply(records)
    # The active issues one more id that never reaches the standby, then dies.
    unreplicated, _ = active.publish("a", b"lost", 3)
    take_over(standby.sequencer, clock.now)
    after = standby.sequencer.publish("a", None, b"3")
    assert after.id > unreplicated > records_newest(standby, before=after.id)
    assert after.prev == records_newest(standby, before=after.id)
    # And again in the same second the old one stopped in, for a channel it never had.
    assert standby.sequencer.publish("new", None, b"x").id.time > int(clock.now)


def records_newest(broker: Broker, before: MessageId) -> MessageId:
    return max(mid for mid, _, _ in broker.held("a") if mid < before)


def test_a_frame_holds_whole_records_and_a_large_record_is_a_frame_of_its_own() -> None:
    records = [b"a" * 10, b"b" * 10, b"c" * 100, b"d" * 5]
    frames = list(frames_of(records, limit=25))
    assert frames == [b"a" * 10 + b"b" * 10, b"c" * 100, b"d" * 5]


def test_a_standby_with_a_history_file_keeps_what_it_applied(clock: Clock, tmp_path: Path) -> None:
    active = Broker(clock)
    records = [active.publish("a", b"%d" % seq, seq)[1] for seq in range(3)]
    standby = Broker(clock)
    history = History(tmp_path / "standby.history", standby.keys)
    history.rewrite(list(state_records(standby.sequencer, standby.publishers, standby.keys)))
    standby.apply(records)
    history.append(b"".join(records))
    history.close()
    restarted = Broker(clock)
    reopened = History(tmp_path / "standby.history", restarted.keys)
    reopened.load(restarted.sequencer, restarted.publishers)
    reopened.close()
    assert restarted.held("a") == active.held("a")
    assert restarted.publishers.last(PUBLISHER) == 2


def test_batches_in_flight_are_counted_until_confirmed(clock: Clock) -> None:
    replication: Replication[str] = Replication(CONFIRM_TIMEOUT, clock)
    joined(replication)
    numbers = []
    for _ in range(2):
        replication.record(b"m")
        batch = replication.close()
        assert batch is not None
        numbers.append(batch.number)
    replication.record(b"waiting")
    assert (replication.in_flight, replication.open_records) == (2, 1)
    replication.confirmed(numbers[0])
    assert replication.in_flight == 1
