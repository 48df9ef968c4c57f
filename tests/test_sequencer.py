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


def test_one_trim_drops_what_the_count_and_the_timeout_exceed_and_raises_the_floor(
    clock: Clock,
) -> None:
    seq = sequencer(clock, max_messages=3, min_messages=1, timeout=10)
    clock.now = 5_000.0
    old = [seq.publish("c", None, bytes([n])).id for n in range(3)]
    clock.now = 5_008.0
    kept = seq.publish("c", None, b"new").id
    # The count drops the first; at 5,011 the timeout drops the other two, not the newest.
    clock.now = 5_011.0
    seq.expire()
    snapshot = seq.snapshot("c", create=False)
    assert [m.id for m in snapshot.messages] == [kept]
    assert snapshot.floor == old[2]


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


# -- forgetting idle channels ----------------------------------------------------

LINGER = 60.0


def unused(channel_id: str) -> bool:
    return False


def forget_all(seq: Sequencer, in_use=unused) -> list[str]:  # type: ignore[no-untyped-def]
    forgotten: list[str] = []
    while batch := seq.forget_idle(LINGER, in_use):
        forgotten += [channel.channel_id for channel in batch]
    return forgotten


def test_an_empty_channel_nobody_uses_is_forgotten_once_the_linger_has_passed(
    clock: Clock,
) -> None:
    seq = sequencer(clock)
    seq.create("c")
    clock.now += LINGER - 1
    assert forget_all(seq) == []
    clock.now += 2
    assert forget_all(seq) == ["c"]
    assert "c" not in seq and len(seq) == 0


def test_a_channel_is_kept_while_it_holds_messages_and_forgotten_a_linger_after_they_expired(
    clock: Clock,
) -> None:
    seq = sequencer(clock, timeout=10)
    seq.publish("c", None, b"a")
    clock.now += 2 * LINGER
    assert forget_all(seq) == []  # its message did not expire: expire() was not called
    seq.expire()
    clock.now += LINGER - 1
    assert forget_all(seq) == []  # empty for less than the linger
    clock.now += 2
    assert forget_all(seq) == ["c"]


def test_a_channel_that_keeps_its_messages_is_never_forgotten(clock: Clock) -> None:
    seq = sequencer(clock, timeout=0)
    seq.publish("c", None, b"a")
    clock.now += 100 * LINGER
    seq.expire()
    assert forget_all(seq) == []
    assert "c" in seq


def test_a_publish_or_a_snapshot_within_the_linger_keeps_the_channel(clock: Clock) -> None:
    seq = sequencer(clock, timeout=1)
    seq.create("published")
    seq.create("snapshotted")
    clock.now += LINGER - 5
    seq.publish("published", None, b"a")
    seq.snapshot("snapshotted", create=False)
    clock.now += 10
    seq.expire()
    assert forget_all(seq) == []
    clock.now += LINGER
    seq.expire()
    assert sorted(forget_all(seq)) == ["published", "snapshotted"]


def test_a_channel_in_use_is_kept_and_forgotten_a_linger_after_it_no_longer_is(
    clock: Clock,
) -> None:
    seq = sequencer(clock)
    seq.create("c")
    used = {"c"}
    clock.now += LINGER + 1
    assert forget_all(seq, used.__contains__) == []
    used.clear()
    clock.now += LINGER / 2
    assert forget_all(seq, used.__contains__) == []  # looked at again a linger after
    clock.now += LINGER
    assert forget_all(seq, used.__contains__) == ["c"]


def test_a_forgotten_channel_made_again_issues_ids_after_all_it_had_when_the_clock_stepped_back(
    clock: Clock,
) -> None:
    seq = sequencer(clock, timeout=1)
    clock.now = 9_000
    last = [seq.publish("c", None, b"x").id for _ in range(3)][-1]
    clock.now += 2
    seq.expire()
    clock.now += LINGER + 1
    assert forget_all(seq) == ["c"]
    clock.now = 8_000  # the clock set back by more than the linger
    again = seq.publish("c", None, b"y")
    assert again.id > last
    assert again.prev is None


def test_one_watermark_stands_for_every_forgotten_or_deleted_channel(clock: Clock) -> None:
    seq = sequencer(clock, timeout=1)
    clock.now = 9_000
    newest = max(seq.publish(f"c{n}", None, b"x").id for n in range(1_000))
    seq.publish("deleted", None, b"x")
    deleted = seq.delete("deleted")
    assert deleted is not None and deleted.last is not None
    clock.now += LINGER + 2
    seq.expire()
    assert len(forget_all(seq)) == 1_000
    # Nothing per name is left: neither the channels nor a tombstone each.
    assert len(seq) == 0
    assert seq.watermark == max(newest, deleted.last)
    clock.now = 9_000
    assert seq.publish("brand-new", None, b"y").id > max(newest, deleted.last)


def test_a_clock_set_back_restarts_the_linger_instead_of_holding_channels_until_it_catches_up(
    clock: Clock,
) -> None:
    seq = sequencer(clock)
    clock.now = 9_000
    seq.create("c")
    clock.now = 5_000
    assert forget_all(seq) == []
    clock.now += LINGER + 1
    assert forget_all(seq) == ["c"]


def test_forgetting_looks_at_a_bounded_number_of_channels_per_call(clock: Clock) -> None:
    seq = sequencer(clock)
    for n in range(30):
        seq.create(f"c{n}")
    clock.now += LINGER + 1
    assert len(seq.forget_idle(LINGER, unused, batch=10)) == 10
    assert len(seq) == 20


def test_a_forgotten_channel_stays_forgotten_across_a_restart_and_its_ids_still_increase(
    tmp_path: Path, clock: Clock
) -> None:
    first = sequencer(clock, timeout=1)
    history = History(tmp_path / "history")
    history.load(first, Publishers())
    clock.now = 9_000
    last = first.publish("gone", None, b"x")
    history.published(last)
    history.published(first.publish("kept", None, b"y"))
    clock.now += 2
    first.expire()
    clock.now += LINGER + 1
    first.publish("kept", None, b"z")  # kept is used again; gone is not
    forgotten = first.forget_idle(LINGER, unused)
    assert [channel.channel_id for channel in forgotten] == ["gone"]
    history.forgotten(forgotten)
    history.close()

    for compacted in (False, True):
        # Restarted with the clock set back: only the watermark orders the new ids.
        clock.now = 5_000
        second = sequencer(clock, timeout=1)
        reopened = History(tmp_path / "history")
        reopened.load(second, Publishers())  # replays, then compacts
        reopened.close()
        assert "gone" not in second and "kept" in second
        assert second.watermark == last.id
        assert second.publish("gone", None, b"again").id > last.id
        if compacted:
            assert b"gone" not in (tmp_path / "history").read_bytes()


def test_the_channel_table_is_rebuilt_smaller_once_a_crowd_was_forgotten_not_for_a_few(
    clock: Clock,
) -> None:
    seq = sequencer(clock)
    for n in range(1_000):
        seq.create(f"crowd-{n}")
    clock.now += 2 * LINGER
    assert len(forget_all(seq, lambda channel_id: not channel_id.endswith("7"))) == 100
    assert seq.rebuilds == 0  # 900 of 1,000 held: a quarter of the peak is far
    clock.now += 2 * LINGER
    assert len(forget_all(seq)) == 900
    assert seq.rebuilds >= 1
    assert len(seq) == 0
    seq.create("after")
    assert "after" in seq
