"""The edge's queue of when to look at each channel it follows (`edge.idle`), without sockets."""

from edge.idle import IdleQueue


def test_channels_come_out_soonest_first_and_only_once_due() -> None:
    queue = IdleQueue()
    queue.add("late", 30.0)
    queue.add("early", 10.0)
    queue.add("middle", 20.0)
    assert queue.take_due(5.0, 10) == []
    assert queue.take_due(20.0, 10) == ["early", "middle"]
    assert len(queue) == 1
    assert queue.take_due(100.0, 10) == ["late"]
    assert len(queue) == 0


def test_a_channel_queued_again_while_its_due_ones_are_handled_waits_for_a_later_sweep() -> None:
    queue = IdleQueue()
    queue.add("busy", 10.0)
    for channel_id in queue.take_due(10.0, 10):
        # Found in use: looked at again later, even if the time given is already past.
        queue.add(channel_id, 9.0)
    assert len(queue) == 1
    assert queue.take_due(10.0, 10) == ["busy"]


def test_a_sweep_looks_only_at_what_fell_due_however_many_channels_wait() -> None:
    queue = IdleQueue()
    for n in range(100_000):
        queue.add(f"channel-{n}", 1_000.0 + n)
    assert queue.take_due(1_002.0, 10) == ["channel-0", "channel-1", "channel-2"]
    assert len(queue) == 100_000 - 3


def test_a_crowd_falling_due_at_once_is_taken_a_batch_at_a_time_soonest_first() -> None:
    queue = IdleQueue()
    for n in range(5):
        queue.add(f"channel-{n}", float(n))
    assert queue.take_due(10.0, 2) == ["channel-0", "channel-1"]
    assert queue.take_due(10.0, 2) == ["channel-2", "channel-3"]
    assert queue.take_due(10.0, 2) == ["channel-4"]
