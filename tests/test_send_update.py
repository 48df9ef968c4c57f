"""send_update against the real broker: in a thread of the test process, or as a process.

What a socket numbers, keeps and writes again is `broker.outbox`'s,
specified without sockets in test_outbox.py; these are the sockets,
threads and processes around it: threads, fork, interpreter exit, broker
restarts and kills, and the outage policy. The broker listens on fixed
ports, so stopping and starting it again on the same ports is how a broker
restart looks to a publisher; one test kills a broker process with
SIGKILL. Deliveries are observed as edges see them, on the broker's events
socket, or in a channel's snapshot when a restart may have cost a
subscriber some live messages. Timing assertions are upper bounds with
generous slack: they prove a call gave up, not how fast it did.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zmq
from django.core.serializers.json import DjangoJSONEncoder
from django.test.utils import override_settings

from broker import wire
from broker.throttled_log import LOG_LINES
from pushserver import PushServerError
from tests.brokers import (
    MAX_MESSAGES,
    MESSAGE_TIMEOUT,
    Events,
    ThreadBroker,
    fixed_endpoints,
    held,
    snapshot,
)
from tests.processes import ROOT, Launcher, eventually, free_port

# Small, so the tests that wait for a give-up stay short.
SEND_TIMEOUT = 0.3
UNREACHABLE_TIMEOUT = 0.5
EXIT_TIMEOUT = 0.2
# Shorter than a fresh socket's wait for its first connection, so a sender that
# never reached the broker gives up at its first call.
GIVES_UP_AT_ONCE = {"broker_unreachable_timeout": SEND_TIMEOUT / 10}
STORE = {
    "type": "memory",
    "min_messages": 0,
    "max_messages": MAX_MESSAGES,
    "message_timeout": MESSAGE_TIMEOUT,
}


def push_settings(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "broker": {"ingress": endpoint},
        "send_timeout": SEND_TIMEOUT,
        "broker_unreachable_timeout": UNREACHABLE_TIMEOUT,
        "exit_timeout": EXIT_TIMEOUT,
        **extra,
    }


@pytest.fixture
def configure() -> Iterator[Callable[..., None]]:
    """Point send_update at an endpoint; the sender starts afresh before and after."""
    from pushserver import sender

    overrides: list[override_settings] = []

    def apply(endpoint: str, ignore_errors: bool = False, **extra: Any) -> None:
        sender.close()
        override = override_settings(
            PUSH_SERVER=push_settings(endpoint, **extra), PUSH_SERVER_IGNORE_ERRORS=ignore_errors
        )
        override.enable()
        overrides.append(override)

    yield apply
    sender.close()
    for override in reversed(overrides):
        override.disable()


@pytest.fixture
def events(context: zmq.Context[zmq.Socket[bytes]], broker: ThreadBroker) -> Events:
    return Events(context, broker.endpoints["events"])


@pytest.fixture
def sending(broker: ThreadBroker, configure: Callable[..., None]) -> ThreadBroker:
    """send_update pointed at the broker."""
    configure(broker.ingress)
    return broker


@pytest.fixture
def free_endpoint() -> str:
    """An endpoint nothing listens on."""
    return f"tcp://127.0.0.1:{free_port()}"


def test_data_is_encoded_as_json_once_and_sent_as_application_json(
    sending: ThreadBroker, events: Events
) -> None:
    from pushserver.utils import updates

    events.subscribe("news")
    data = {
        "title": "naïve café",
        "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        "price": decimal.Decimal("1.50"),
    }
    updates.send_update("news", data)
    updates.send_update("news", {"n": 2})
    message = events.receive()
    assert message.channel_id == "news"
    assert message.content_type == updates.CONTENT_TYPE == "application/json"
    expected = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":")).encode()
    assert message.body == expected
    assert json.loads(message.body) == {
        "title": "naïve café",
        "when": "2024-05-01T12:30:00Z",
        "price": "1.50",
    }
    second = events.receive()
    assert second.body == b'{"n":2}'
    assert second.prev == message.id and message.id < second.id
    events.nothing_more()


def test_already_serialized_data_passes_through_untouched(
    sending: ThreadBroker, events: Events
) -> None:
    from pushserver.utils import updates

    events.subscribe("news")
    updates.send_update("news", '{"kept":  "as is" }', already_serialized=True)
    updates.send_update("news", b"[1, 2,\n3]", already_serialized=True)
    assert events.receive().body == b'{"kept":  "as is" }'
    assert events.receive().body == b"[1, 2,\n3]"


@pytest.mark.parametrize("channel_id", ["", "a\0b", "x" * (wire.MAX_CHANNEL_ID_BYTES + 1)])
def test_a_bad_channel_id_is_a_value_error_even_when_errors_are_ignored(
    sending: ThreadBroker, channel_id: str
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    with pytest.raises(ValueError, match="channel id"):
        updates.send_update(channel_id, {}, ignore_errors=True)
    assert sender.pending() == 0
    assert sending.counters["published"] == 0


def test_a_channel_id_that_is_not_a_str_is_a_type_error(sending: ThreadBroker) -> None:
    from pushserver.utils import updates

    with pytest.raises(TypeError, match="channel_id must be a str, got int"):
        updates.send_update(42, {})  # type: ignore[arg-type]


def test_eight_threads_sending_200_messages_each_arrive_complete_and_in_order(
    sending: ThreadBroker, events: Events
) -> None:
    from pushserver.utils import updates

    threads_count, per_thread = 8, 200
    events.subscribe(*(f"thread-{n}" for n in range(threads_count)))
    failures: list[BaseException] = []

    def send_many(thread_number: int) -> None:
        try:
            for sequence in range(per_thread):
                updates.send_update(f"thread-{thread_number}", [thread_number, sequence])
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=send_many, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    received: dict[int, list[int]] = {n: [] for n in range(threads_count)}
    for _ in range(threads_count * per_thread):
        message = events.receive()
        thread_number, sequence = json.loads(message.body)
        assert message.channel_id == f"thread-{thread_number}"
        received[thread_number].append(sequence)
    for thread in threads:
        thread.join()
    assert failures == []
    assert received == {n: list(range(per_thread)) for n in range(threads_count)}
    events.nothing_more()


def test_threads_that_end_do_not_leave_their_sockets_open(
    sending: ThreadBroker, events: Events
) -> None:
    from pushserver.utils import updates

    events.subscribe("per-request")

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    def send_from_a_new_thread(number: int) -> None:
        thread = threading.Thread(target=updates.send_update, args=("per-request", number))
        thread.start()
        thread.join()

    send_from_a_new_thread(0)  # a thread-per-request server, like runserver's
    before = open_files()
    for number in range(1, 100):
        send_from_a_new_thread(number)
    # Each socket holds a few descriptors; a leak would add hundreds. A socket
    # whose last ack has not arrived yet is kept until it has.
    eventually(lambda: open_files() - before < 30, what="ended threads' sockets to close")
    # Each thread is a publisher of its own, and order is kept per publisher:
    # the broker's ROUTER takes turns among connections, so two of these
    # messages waiting at once may be sequenced either way round.
    received = [json.loads(events.receive().body) for _ in range(100)]
    assert sorted(received) == list(range(100))


def test_a_forked_child_sends_on_a_socket_of_its_own(sending: ThreadBroker, events: Events) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    events.subscribe("fork")
    # The parent's socket exists before the fork: the child must not use it.
    updates.send_update("fork", "parent before")
    assert events.receive().body == b'"parent before"'
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        status = 1
        try:
            updates.send_update("fork", "child")
            sender.close()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert events.receive().body == b'"child"'
    updates.send_update("fork", "parent after")
    assert events.receive().body == b'"parent after"'
    events.nothing_more()


def test_with_nothing_listening_send_update_queues_then_raises_once_the_timeout_has_passed(
    configure: Callable[..., None], free_endpoint: str
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    configure(free_endpoint)
    started = time.monotonic()
    updates.send_update("news", {"n": 0})  # within the timeout: queued
    assert sender.pending() == 1
    errors: list[PushServerError] = []

    def refused() -> bool:
        try:
            updates.send_update("news", {})
        except PushServerError as error:
            errors.append(error)
            return True
        return False

    eventually(refused, timeout=5 * UNREACHABLE_TIMEOUT, what="send_update to give up")
    assert time.monotonic() - started >= UNREACHABLE_TIMEOUT
    assert "could not reach the push broker at" in str(errors[0])
    assert free_endpoint in str(errors[0])
    queued = sender.pending()
    with pytest.raises(PushServerError, match="could not reach the push broker at"):
        updates.send_update("news", {})  # a socket already known to be down: at once
    assert sender.pending() == queued  # refused, so nothing more waits to be sent later


def test_a_process_started_while_the_broker_is_away_queues_until_it_is_back(
    configure: Callable[..., None], context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    away = ThreadBroker(tmp_path / "history")
    configure(away.ingress, broker_unreachable_timeout=30)
    for number in range(6):
        updates.send_update("deploy", number)
    assert sender.pending() == 6
    away.start()
    try:
        expected = [str(n).encode() for n in range(6)]
        eventually(lambda: held(context, away, "deploy") == expected, what="all six, once")
        eventually(lambda: sender.pending() == 0, what="every ack")
    finally:
        away.stop()


def test_ignore_errors_swallows_the_error_with_a_warning(
    configure: Callable[..., None], free_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pushserver.utils import updates

    configure(free_endpoint, **GIVES_UP_AT_ONCE)
    with caplog.at_level(logging.WARNING, logger="pushserver"):
        updates.send_update("news", {}, ignore_errors=True)  # does not raise
    assert "could not reach the push broker" in caplog.text
    assert "'news'" in caplog.text


def test_the_ignore_errors_setting_swallows_the_error(
    configure: Callable[..., None], free_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pushserver.utils import updates

    configure(free_endpoint, ignore_errors=True, **GIVES_UP_AT_ONCE)
    with caplog.at_level(logging.WARNING, logger="pushserver"):
        updates.send_update("news", {})  # does not raise
    assert "could not reach the push broker" in caplog.text


def test_messages_sent_while_the_broker_restarts_arrive_once_and_in_order(
    sending: ThreadBroker, events: Events, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    events.subscribe("restart")
    updates.send_update("restart", 0)
    assert events.receive().body == b"0"
    sending.stop()
    eventually(lambda: not sender.broker_connected(), what="the sender to notice the broker left")
    for number in range(1, 6):
        updates.send_update("restart", number)
    sending.start()
    updates.send_update("restart", 6)
    # The subscriber may reconnect after the first of them went by; the
    # broker's history of the channel is what counts.
    expected = [str(n).encode() for n in range(7)]
    eventually(lambda: held(context, sending, "restart") == expected, what="all seven, once")
    eventually(lambda: sender.pending() == 0, what="every ack")


def test_messages_queued_during_an_outage_leave_without_another_send(
    sending: ThreadBroker, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    updates.send_update("flusher", "before")
    sending.stop()
    eventually(lambda: not sender.broker_connected(), what="the sender to notice the broker left")
    for number in range(5):
        updates.send_update("flusher", number)
    sending.start()
    # No send_update from here on: the sender's own thread delivers them.
    expected = [b'"before"', b"0", b"1", b"2", b"3", b"4"]
    eventually(lambda: held(context, sending, "flusher") == expected, what="the queued messages")


def test_a_broker_away_longer_than_the_unreachable_timeout_is_an_error(
    sending: ThreadBroker, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    updates.send_update("away", "first")
    sending.stop()
    eventually(lambda: not sender.broker_connected(), what="the sender to notice the broker left")
    noticed = time.monotonic()
    updates.send_update("away", "queued")  # away for less than the timeout: queued

    accepted = 0

    def refused() -> str | None:
        nonlocal accepted
        try:
            updates.send_update("away", "later")
        except PushServerError as exc:
            return str(exc)
        accepted += 1
        return None

    message = eventually(refused, timeout=10 * UNREACHABLE_TIMEOUT, what="a refusal")
    assert time.monotonic() - noticed >= UNREACHABLE_TIMEOUT
    assert f"could not reach the push broker at {sending.ingress} for" in message
    sending.start()
    eventually(lambda: sender.broker_connected(), what="the sender to reconnect")
    updates.send_update("away", "back")
    # Those accepted before the refusal are delivered; the refused one is not.
    expected = [b'"first"', b'"queued"', *[b'"later"'] * accepted, b'"back"']
    eventually(lambda: held(context, sending, "away") == expected, what="the accepted messages")


def test_a_thread_noticing_an_outage_late_does_not_restart_its_clock(
    sending: ThreadBroker,
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    def refused() -> str | None:
        try:
            updates.send_update("late", "main")
        except PushServerError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=1) as other_thread:
        updates.send_update("late", "main")
        other_thread.submit(updates.send_update, "late", "other").result()
        sending.stop()
        eventually(lambda: not sender.broker_connected(), what="the main thread to notice")
        eventually(refused, timeout=10 * UNREACHABLE_TIMEOUT, what="the main thread's refusal")
        # The other thread last looked while the broker was up; the outage is
        # still as old as the main thread found it.
        with pytest.raises(PushServerError, match="could not reach the push broker"):
            other_thread.submit(updates.send_update, "late", "other").result()


def test_a_queue_full_during_an_outage_is_an_error_naming_its_size(
    broker: ThreadBroker, configure: Callable[..., None]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    configure(broker.ingress, send_queue_size=5, broker_unreachable_timeout=60)
    updates.send_update("full", 0)
    broker.stop()
    eventually(lambda: not sender.broker_connected(), what="the sender to notice the broker left")
    with pytest.raises(PushServerError, match="the queue of 5 messages for the push broker"):
        for number in range(100):
            updates.send_update("full", number)
    assert sender.pending() == 5


def test_a_message_over_max_message_size_is_refused_and_never_queued(sending: ThreadBroker) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    with pytest.raises(ValueError, match="more than max_message_size"):
        updates.send_update("big", "x" * (4 * 1024 * 1024), ignore_errors=True)
    assert sender.pending() == 0


def test_pre_and_post_send_update_signals_fire_for_each_message_with_its_outcome(
    sending: ThreadBroker, events: Events, configure: Callable[..., None], free_endpoint: str
) -> None:
    from pushserver import signals
    from pushserver.utils import updates

    events.subscribe("signals")
    seen: list[tuple[str, dict[str, Any]]] = []

    def pre(**kwargs: Any) -> None:
        seen.append(("pre", kwargs))

    def post(**kwargs: Any) -> None:
        seen.append(("post", kwargs))

    signals.pre_send_update.connect(pre)
    signals.post_send_update.connect(post)
    try:
        updates.send_update("signals", {"n": 1})
        events.receive()
        configure(free_endpoint, **GIVES_UP_AT_ONCE)
        updates.send_update("signals", {"n": 2}, ignore_errors=True)
    finally:
        signals.pre_send_update.disconnect(pre)
        signals.post_send_update.disconnect(post)
    assert [(kind, kwargs["channel_id"], kwargs["data"]) for kind, kwargs in seen] == [
        ("pre", "signals", {"n": 1}),
        ("post", "signals", {"n": 1}),
        ("pre", "signals", {"n": 2}),
        ("post", "signals", {"n": 2}),
    ]
    assert seen[1][1]["error"] is None and seen[1][1]["already_serialized"] is False
    assert isinstance(seen[3][1]["error"], PushServerError)
    assert seen[0][1]["sender"] is updates


def test_asend_update_sends_from_a_coroutine(sending: ThreadBroker, events: Events) -> None:
    from pushserver.utils import updates

    events.subscribe("async")
    asyncio.run(updates.asend_update("async", {"from": "a coroutine"}))
    assert json.loads(events.receive().body) == {"from": "a coroutine"}


# -- a broker that lost messages it had acknowledged ------------------------


class StandIn:
    """A ROUTER where the broker's ingress would be, acknowledging only as the test says."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.route = b""

    def receive(self, timeout: float = 5.0) -> wire.Publish:
        if not self.socket.poll(round(timeout * 1000)):
            raise AssertionError(f"nothing arrived within {timeout} s")
        self.route, *frames = self.socket.recv_multipart()
        return wire.decode_publish(frames)

    def ack(self, publisher: bytes, seq: int, gap: bool = False) -> None:
        self.socket.send_multipart([self.route, *wire.encode_ack(wire.Ack(publisher, seq, gap))])


@pytest.fixture
def stand_in(context: zmq.Context[zmq.Socket[bytes]], configure: Callable[..., None]) -> StandIn:
    started = StandIn(context)
    configure(started.endpoint)
    return started


def test_a_broker_that_lost_acknowledged_messages_gets_the_queue_under_a_new_id_and_a_warning(
    stand_in: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox's rule (test_outbox.py), as the socket carries it out."""
    from pushserver import sender
    from pushserver.utils import updates

    for number in range(3):
        updates.send_update("lost", number)
    publisher = [stand_in.receive() for _ in range(3)][0].publisher
    stand_in.ack(publisher, 2)
    eventually(lambda: sender.pending() == 0, what="the ack")
    updates.send_update("lost", 3)
    updates.send_update("lost", 4)
    assert [stand_in.receive().seq for _ in range(2)] == [3, 4]
    # A broker whose history lost its tail: it holds only up to 1, so 3 is a
    # gap this sender can no longer fill (2 was acknowledged and dropped).
    with caplog.at_level(logging.WARNING, logger="pushserver"):
        stand_in.ack(publisher, 1, gap=True)
        again = [stand_in.receive(), stand_in.receive()]
    assert "under a new publisher id" in caplog.text
    renumbered = again[0].publisher
    assert renumbered != publisher and again[1].publisher == renumbered
    assert [(p.seq, p.body) for p in again] == [(0, b"3"), (1, b"4")]
    stand_in.ack(renumbered, 1)
    eventually(lambda: sender.pending() == 0, what="the ack under the new id")
    updates.send_update("lost", 5)
    following = stand_in.receive()
    assert (following.publisher, following.seq, following.body) == (renumbered, 2, b"5")


def test_malformed_acks_are_ignored_and_told_only_a_few_times_a_minute(
    stand_in: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    updates.send_update("garbled", 0)
    publish = stand_in.receive()
    with caplog.at_level(logging.WARNING, logger="pushserver"):
        for _ in range(4 * LOG_LINES):
            stand_in.socket.send_multipart([stand_in.route, b"not an ack"])
        stand_in.ack(publish.publisher, publish.seq)
        # The good ack came behind every bad one on the socket: all were read.
        eventually(lambda: sender.pending() == 0, what="the ack behind the malformed ones")
    told = [r for r in caplog.records if "ignored a malformed ack" in r.getMessage()]
    assert len(told) == LOG_LINES, [r.getMessage() for r in told]


def swallow_acks(monkeypatch: pytest.MonkeyPatch, broker: ThreadBroker) -> None:
    """The broker sequences what arrives but never acknowledges it, as one killed just after."""
    running = broker.broker
    assert running is not None

    def swallow() -> None:
        running._acks_scheduled = False
        running._acks.clear()

    monkeypatch.setattr(running, "_send_acks", swallow)


def test_messages_sequenced_but_never_acknowledged_are_not_sequenced_again_after_a_restart(
    sending: ThreadBroker, monkeypatch: pytest.MonkeyPatch, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    swallow_acks(monkeypatch, sending)
    for number in range(5):
        updates.send_update("unacked", number)
    eventually(lambda: sending.counters["published"] == 5, what="the five to be sequenced")
    assert sender.pending() == 5
    sending.stop()
    sending.start()  # a new broker, from the history file
    eventually(lambda: sender.pending() == 0, what="the new broker's acks")
    assert held(context, sending, "unacked") == [str(n).encode() for n in range(5)]
    assert sending.counters["ingress_repeats"] == 5
    assert sending.counters["published"] == 0


def test_without_a_history_file_unacknowledged_messages_are_sequenced_again(
    forgetful: ThreadBroker,
    configure: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """The documented cost of running without a history file: a repeat, never a loss."""
    from pushserver import sender
    from pushserver.utils import updates

    configure(forgetful.ingress)
    swallow_acks(monkeypatch, forgetful)
    for number in range(3):
        updates.send_update("again", number)
    eventually(lambda: forgetful.counters["published"] == 3, what="the three to be sequenced")
    forgetful.stop()
    forgetful.start()
    eventually(lambda: sender.pending() == 0, what="the new broker's acks")
    assert held(context, forgetful, "again") == [b"0", b"1", b"2"]
    assert forgetful.counters["published"] == 3


def test_a_connected_broker_that_does_not_acknowledge_fills_the_queue_at_its_size(
    broker: ThreadBroker, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks are taken in batches, yet the bound is the queue's size, counted exactly."""
    from pushserver import sender
    from pushserver.utils import updates

    configure(broker.ingress, send_queue_size=40)
    swallow_acks(monkeypatch, broker)
    for number in range(40):
        updates.send_update("unacknowledged", number)
    started = time.monotonic()
    with pytest.raises(PushServerError, match="the queue of 40 messages for the push broker"):
        updates.send_update("unacknowledged", 40)
    # It waited for acks up to send_timeout before refusing.
    assert SEND_TIMEOUT - 0.1 <= time.monotonic() - started < SEND_TIMEOUT + 1
    assert sender.pending() == 40


def test_a_long_burst_past_the_queue_size_arrives_once_and_in_order(
    broker: ThreadBroker, configure: Callable[..., None], events: Events
) -> None:
    """Many times `CHECK_EVERY` messages from one thread, waiting on acks for room."""
    from pushserver import sender
    from pushserver.utils import updates

    count = sender.CHECK_EVERY * 8 + 3
    configure(broker.ingress, send_queue_size=sender.CHECK_EVERY + 10)
    events.subscribe("burst")
    for number in range(count):
        updates.send_update("burst", number)
    assert [int(events.receive().body) for _ in range(count)] == list(range(count))
    events.nothing_more()
    eventually(lambda: sender.pending() == 0, what="every ack")


# -- a broker killed with SIGKILL under a steady stream -----------------------


def test_a_broker_killed_and_restarted_under_a_steady_stream_sequences_each_message_once(
    launcher: Launcher, configure: Callable[..., None], context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    endpoints = fixed_endpoints()
    broker_settings = {
        "broker": endpoints,
        "store": STORE,
        "history_file": str(launcher.folder / "history"),
    }
    first, _ = launcher.broker(**broker_settings)
    configure(endpoints["ingress"], send_timeout=0.5, broker_unreachable_timeout=30)
    stop = threading.Event()
    accepted: list[bytes] = []
    refused: list[str] = []

    def stream() -> None:
        number = 0
        while not stop.is_set():
            body = json.dumps({"n": number, "pad": "x" * 64}).encode()
            try:
                updates.send_update("killed", body, already_serialized=True)
                accepted.append(body)
            except PushServerError as exc:
                refused.append(str(exc))
            number += 1
            time.sleep(0.001)
        sender.close()  # as at the thread's process exit: waits for the last acks

    def sequenced() -> int:
        return len(snapshot(context, endpoints["control"], "killed"))

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        eventually(lambda: sequenced() >= 300, what="the stream to be under way")
        at_kill = len(accepted)
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(5)
        eventually(lambda: len(accepted) >= at_kill + 100, what="messages accepted while down")
        during_outage = len(accepted) - at_kill
        second, _ = launcher.broker(**broker_settings)
        at_restart = len(accepted)
        # Beyond what was accepted before it started: the new broker takes the stream.
        eventually(lambda: sequenced() > at_restart + 100, timeout=20, what="the stream again")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert refused == []
    eventually(lambda: sequenced() >= len(accepted), timeout=20, what="every message")
    messages = snapshot(context, endpoints["control"], "killed")
    assert [m.body for m in messages] == accepted  # each once, in the order sent
    ids = [m.id for m in messages]
    assert ids == sorted(set(ids))
    second.stop()
    stopped = re.search(r"broker stopped; (.*)", second.output)
    print(
        f"\nbroker killed under a stream: {len(accepted)} accepted, {len(messages)} sequenced, "
        f"{at_kill} before the kill, {during_outage} during the outage; "
        f"restarted broker's counters: {stopped.group(1) if stopped else second.output}"
    )


# -- interpreter exit --------------------------------------------------------

EXITING_PUBLISHER = textwrap.dedent(
    """
    import sys
    import django
    django.setup()
    from django.conf import settings
    from pushserver import sender
    from pushserver.utils import updates
    endpoint, exit_timeout, count, wait_for_go = sys.argv[1:]
    settings.PUSH_SERVER = {
        "broker": {"ingress": endpoint},
        "exit_timeout": float(exit_timeout),
        "send_queue_size": int(count) + 1,
    }
    updates.send_update("exit", "first")
    print("sent first", flush=True)
    if wait_for_go == "yes":
        sys.stdin.readline()
        while sender.broker_connected():
            pass
    for number in range(int(count)):
        updates.send_update("exit", [number, "padding" * 100])
    print("sent all", sender.pending(), flush=True)
    """
)


def start_exiting_publisher(
    endpoint: str, exit_timeout: float, count: int, wait_for_go: bool
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.django_settings",
    }
    arguments = [endpoint, str(exit_timeout), str(count), "yes" if wait_for_go else "no"]
    return subprocess.Popen(
        [sys.executable, "-c", EXITING_PUBLISHER, *arguments],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_messages_unacknowledged_at_interpreter_exit_are_delivered(
    broker: ThreadBroker, events: Events, processes: list[subprocess.Popen[str]]
) -> None:
    events.subscribe("exit")
    count = 20_000
    process = start_exiting_publisher(broker.ingress, 10.0, count, wait_for_go=False)
    processes.append(process)
    assert process.stdout is not None
    assert events.receive(timeout=30).body == b'"first"'
    assert process.stdout.readline() == "sent first\n"
    # The burst outruns the broker's acks, so part of it is still the
    # publisher's when it exits: the exit hook waits for those acks.
    sent_all = process.stdout.readline()
    assert sent_all.startswith("sent all ")
    numbers = [json.loads(events.receive(timeout=30).body)[0] for _ in range(count)]
    assert numbers == list(range(count))
    assert process.wait(timeout=30) == 0
    events.nothing_more()
    print(f"\nunacknowledged when the publisher began to exit: {sent_all.split()[-1]} of {count}")


def test_exit_never_hangs_on_messages_the_broker_cannot_take(
    broker: ThreadBroker, events: Events, processes: list[subprocess.Popen[str]]
) -> None:
    events.subscribe("exit")
    process = start_exiting_publisher(broker.ingress, EXIT_TIMEOUT, 50, wait_for_go=True)
    processes.append(process)
    assert process.stdout is not None and process.stdin is not None
    assert events.receive(timeout=30).body == b'"first"'
    assert process.stdout.readline() == "sent first\n"
    broker.stop()  # the broker goes away for good: the queued messages cannot leave
    process.stdin.write("go\n")
    process.stdin.flush()
    # Unacknowledged: the 50, and "first" too if its ack had not arrived yet.
    assert process.stdout.readline() in ("sent all 50\n", "sent all 51\n")
    started = time.monotonic()
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 5.0
