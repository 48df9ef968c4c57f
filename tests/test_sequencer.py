"""The broker's id and history rules, with the clock under the test's control."""

from __future__ import annotations

from pathlib import Path

from broker.history import History
from broker.publishers import Publishers
from broker.sequencer import Sequencer
from broker.wire import Limits, MessageId
from tests.clock import Clock


def sequencer(
    clock: Clock, max_messages: int = 100, min_messages: int = 0, timeout: float = 10
) -> Sequencer:
    return Sequencer(Limits(max_messages, min_messages, timeout), clock)


def test_first_ids_are_never_earlier_than_the_second_after_start(clock: Clock) -> None:
    seq = sequencer(clock)
    assert seq.publish("c", None, b"a").id == MessageId(1_001, 0)
    assert seq.publish("c", None, b"b").id == MessageId(1_001, 1)


def test_tags_count_within_a_second_and_restart_at_zero(clock: Clock) -> None:
    seq = sequencer(clock)
    clock.now = 2_000.1
    ids = [seq.publish("c", None, b"x").id for _ in range(3)]
    clock.now = 2_001.0
    ids.append(seq.publish("c", None, b"x").id)
    assert ids == [
        MessageId(2_000, 0),
        MessageId(2_000, 1),
        MessageId(2_000, 2),
        MessageId(2_001, 0),
    ]


def test_each_message_names_the_previous_one(clock: Clock) -> None:
    seq = sequencer(clock)
    first = seq.publish("c", None, b"a")
    second = seq.publish("c", None, b"b")
    other = seq.publish("d", None, b"c")
    assert first.prev is None
    assert second.prev == first.id
    assert other.prev is None


def test_ids_keep_increasing_when_the_clock_steps_back(clock: Clock) -> None:
    seq = sequencer(clock)
    clock.now = 3_000
    before = seq.publish("c", None, b"a").id
    clock.now = 2_990
    after = seq.publish("c", None, b"b").id
    assert after > before


def test_a_channel_deleted_and_made_again_in_the_same_second_continues_its_ids(
    clock: Clock,
) -> None:
    seq = sequencer(clock)
    clock.now = 4_000
    old = seq.publish("c", None, b"a").id
    seq.delete("c")
    new = seq.publish("c", None, b"b")
    assert new.id > old
    assert new.prev is None


def test_a_restarted_broker_issues_ids_after_every_id_of_the_previous_run(clock: Clock) -> None:
    clock.now = 5_000.9
    previous = sequencer(clock)
    clock.now = previous.first_time + 0.1  # the broker waits for its first second
    last = previous.publish("c", None, b"a").id
    clock.now += 0.1
    restarted = sequencer(clock)
    assert restarted.publish("c", None, b"b").id > last


def test_max_messages_drops_the_oldest_and_raises_the_floor(clock: Clock) -> None:
    seq = sequencer(clock, max_messages=2)
    ids = [seq.publish("c", None, bytes([n])).id for n in range(4)]
    snapshot = seq.snapshot("c", create=False)
    assert [m.id for m in snapshot.messages] == ids[2:]
    assert snapshot.floor == ids[1]
    assert snapshot.last == ids[3]


def test_live_messages_carry_the_floor_once_something_was_dropped(clock: Clock) -> None:
    seq = sequencer(clock, max_messages=1)
    first = seq.publish("c", None, b"a")
    second = seq.publish("c", None, b"b")
    assert first.floor is None
    assert second.floor == first.id


def test_messages_expire_after_the_timeout_but_min_messages_stay(clock: Clock) -> None:
    seq = sequencer(clock, min_messages=1, timeout=10)
    clock.now = 6_000
    seq.publish("c", None, b"a")
    seq.publish("c", None, b"b")
    clock.now = 6_011
    seq.expire()
    snapshot = seq.snapshot("c", create=False)
    assert [m.body for m in snapshot.messages] == [b"b"]


def test_message_timeout_zero_keeps_messages_until_max_messages(clock: Clock) -> None:
    seq = sequencer(clock, timeout=0)
    seq.publish("c", None, b"a")
    clock.now += 10_000
    seq.expire()
    assert len(seq.snapshot("c", create=False).messages) == 1


def test_snapshot_of_a_missing_channel_creates_it_only_when_asked(clock: Clock) -> None:
    seq = sequencer(clock)
    assert not seq.snapshot("c", create=False).exists
    assert "c" not in seq and seq.get("c") is None
    assert seq.snapshot("c", create=True).exists
    assert "c" in seq and seq.get("c") is not None


def test_deleting_returns_the_channel_as_it_was_and_forgets_it(clock: Clock) -> None:
    seq = sequencer(clock)
    published = seq.publish("c", None, b"a")
    deleted = seq.delete("c")
    assert deleted is not None
    assert [m.id for m in deleted.messages] == [published.id]
    assert deleted.last == published.id
    assert "c" not in seq and len(seq) == 0
    assert seq.delete("c") is None


def test_history_survives_a_restart_with_ids_links_and_limits(tmp_path: Path, clock: Clock) -> None:
    first = sequencer(clock, max_messages=2)
    history = History(tmp_path / "history")
    history.load(first, Publishers())
    messages = []
    for seq, body in enumerate((b"a", b"b", b"c")):
        message = first.publish("kept", "text/plain", body)
        history.published(message, (b"publisher", seq))
        messages.append(message)
    first.create("empty")
    history.created("empty")
    first.publish("gone", None, b"x")
    history.published(first.get("gone").messages[-1])  # type: ignore[union-attr]
    first.delete("gone")
    history.deleted("gone")
    history.close()

    clock.now += 5
    second = sequencer(clock, max_messages=2)
    reopened = History(tmp_path / "history")
    publishers = Publishers()
    reopened.load(second, publishers)
    reopened.close()
    # Repeats of what the first run sequenced are still recognised.
    assert publishers.last(b"publisher") == 2
    snapshot = second.snapshot("kept", create=False)
    assert [m.body for m in snapshot.messages] == [b"b", b"c"]
    assert snapshot.last == messages[-1].id
    assert snapshot.floor == messages[0].id
    assert second.get("empty") is not None
    assert second.get("gone") is None
    follow_up = second.publish("kept", None, b"d")
    assert follow_up.prev == messages[-1].id
    assert follow_up.id > messages[-1].id


def test_a_torn_last_record_is_ignored(tmp_path: Path, clock: Clock) -> None:
    first = sequencer(clock)
    history = History(tmp_path / "history")
    history.load(first, Publishers())
    history.published(first.publish("c", None, b"whole"))
    history.close()
    with (tmp_path / "history").open("ab") as torn:
        torn.write(b"\x96\xa1m")  # a record cut off after its first bytes
    second = sequencer(clock)
    reopened = History(tmp_path / "history")
    assert reopened.load(second, Publishers()) == 2  # the version and the whole message
    reopened.close()
    assert [m.body for m in second.snapshot("c", create=False).messages] == [b"whole"]
