"""W8: a million distinct channels, one message and one poll each, then forgotten or not.

A site that gives every user, document or job its own channel creates
channels without end; the servers must forget the idle ones or grow
until they die. This workload runs on a target started for it alone,
with a short `message_timeout` and `channel_linger` (`w8_limits`), and
reports each part's resident memory before, at the peak and once the
channels had time to be forgotten. The trap is the wait: "forgotten"
cannot be seen inside the broker, so the run waits until the edge's
channel gauge reads 0 and the broker had `message_timeout` +
`channel_linger` and a few sweeps' grace, never longer than
`w8_forget_wait` after the last poll, then says what was still known.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

from ops.bench.ledger import Tally, channel_body
from ops.bench.memory import MemorySampler
from ops.bench.targets import Limits, Target
from ops.bench.walker import Walk, walk_all
from ops.bench.workloads import Meter, Result, Sizes, channel, publish_in_thread

# Past message_timeout + channel_linger, the sweeps that forget (about once
# a second in both servers) have had this long to run.
FORGET_GRACE = 3.0
# Channels asked about at the end, spread over the run, to see whether the
# broker (Nchan: its store) still knows them.
PROBES = 100
# A run with no poll answered for this long has failed.
STALLED_AFTER = 60.0
# Batches published and not yet polled, at most: with `w8_batch` small, a
# message is polled about a second after it was published even at 1,000
# polls a second, well within message_timeout.
AHEAD = 2
# Nchan's shared memory for W8. It holds only the channels of the last
# message_timeout + linger seconds, under 600 bytes each as measured here,
# so its default of 128 MiB would do; this leaves room for a faster publisher.
NCHAN_MEMORY_MIB = 512


def w8_limits(sizes: Sizes) -> Limits:
    return Limits(
        max_messages=10,
        message_timeout=sizes.w8_message_timeout,
        channel_linger=sizes.w8_linger,
        nchan_memory_mib=NCHAN_MEMORY_MIB,
    )


async def w8_distinct_channels(target: Target, sizes: Sizes) -> Result:
    meter = Meter(target)
    prefix = channel("w8")
    count = sizes.w8_channels
    memory = MemorySampler(target.parts)
    tally = Tally(count)
    room = threading.Semaphore(AHEAD)
    walk = Walk(lambda index: target.interval_path(f"{prefix}-{index}"), tally, room.release)
    loop = asyncio.get_running_loop()
    stopping = threading.Event()

    def publish() -> None:
        try:
            for start in range(0, count, sizes.w8_batch):
                while not room.acquire(timeout=1.0):
                    if stopping.is_set():
                        return
                batch = range(start, min(count, start + sizes.w8_batch))
                for index in batch:
                    target.publish(f"{prefix}-{index}", channel_body(index, time.time()))
                target.settle()
                loop.call_soon_threadsafe(walk.add, batch)
        except Exception as error:
            loop.call_soon_threadsafe(walk.failed, error)

    started = time.time()
    thread = publish_in_thread(publish)
    try:
        await walk_all(target.host, target.port, walk, sizes.w8_connections, STALLED_AFTER)
    except BaseException:
        memory.stop()
        raise
    finally:
        stopping.set()
        await asyncio.to_thread(thread.join)
    polled = time.time()
    memory.sample()
    forgot_after = await asyncio.to_thread(wait_until_forgotten, target, polled, sizes)
    after = memory.stop()
    followed = target.followed_channels()
    probed = [f"{prefix}-{index}" for index in range(0, count, max(1, count // PROBES))]
    known = sum(await asyncio.to_thread(lambda: [target.channel_known(c) for c in probed]))
    figures = {"channels/s, published and polled": count / (polled - started)}
    figures.update(memory.figures(after))
    if followed is not None:
        figures["channels followed after"] = followed
    if forgot_after is not None:
        figures["s until none followed"] = forgot_after
    figures["% of probed still known after"] = 100 * known / len(probed)
    print(
        f"W8 on {target.name}: the oldest message delivered was polled "
        f"{walk.oldest_found:.1f} s after its batch was published; {walk.retries} polls asked "
        f"again after a 5xx; connections the server closed, by the last status answered on "
        f"them: {dict(walk.closed_by_server)}; the pollers waited for the publisher "
        f"{walk.longest_wait:.1f} s at most",
        file=sys.stderr,
    )
    if walk.not_delivered:
        print(
            f"W8 on {target.name}: not delivered, by status: {dict(walk.not_delivered)}; the "
            f"youngest was polled {walk.youngest_missed:.1f} s after its batch was published",
            file=sys.stderr,
        )
    return meter.finish(Result("W8 distinct channels", target.name, figures, tally.faults()))


def wait_until_forgotten(target: Target, since: float, sizes: Sizes) -> float | None:
    """Seconds from `since` until the target followed no channel, None if not within the bound.

    Returns once that was seen and the broker had its time to forget, or
    at the bound, `w8_forget_wait` seconds after `since`.
    """
    bound = since + sizes.w8_forget_wait
    broker_had_time = since + sizes.w8_message_timeout + sizes.w8_linger + FORGET_GRACE
    forgot_after = None
    while True:
        now = time.time()
        if forgot_after is None and target.followed_channels() == 0:
            forgot_after = now - since
        if (forgot_after is not None and now >= broker_had_time) or now >= bound:
            return forgot_after
        time.sleep(0.25)
