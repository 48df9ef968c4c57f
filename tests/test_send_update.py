"""send_update against real sockets: a PULL socket standing in for the broker, and the real broker.

The stand-in can be stopped and restarted on the same port, which is how a
broker restart looks to a publisher. Timing assertions are upper bounds
with generous slack: they prove a call gave up, not how fast it did.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import logging
import os
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
from pushserver import PushServerError
from tests.processes import eventually

ROOT = Path(__file__).resolve().parent.parent
# Small, so the tests that wait for a give-up stay short.
SEND_TIMEOUT = 0.3
UNREACHABLE_TIMEOUT = 0.5
EXIT_TIMEOUT = 0.2


class Receiver:
    """A PULL socket where the broker would be; stop() and start() act out a broker restart."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.context = context
        self.socket: zmq.Socket[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        sock = self.context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        if self.port == 0:
            self.port = sock.bind_to_random_port("tcp://127.0.0.1")
        else:
            # The old listener is closed by ZeroMQ's I/O thread; the port frees up shortly.
            def bound() -> bool:
                try:
                    sock.bind(self.endpoint)
                except zmq.ZMQError:
                    return False
                return True

            eventually(bound, what=f"port {self.port} to be free again")
        self.socket = sock

    def stop(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def receive(self, timeout: float = 5.0) -> wire.Publish:
        assert self.socket is not None
        if not self.socket.poll(round(timeout * 1000)):
            raise AssertionError(f"nothing arrived within {timeout} s")
        return wire.decode_publish(self.socket.recv_multipart())

    def nothing_more(self, wait: float = 0.2) -> bool:
        assert self.socket is not None
        return not self.socket.poll(round(wait * 1000))


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


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
def receiver(
    context: zmq.Context[zmq.Socket[bytes]], configure: Callable[..., None]
) -> Iterator[Receiver]:
    started = Receiver(context)
    started.start()
    configure(started.endpoint)
    yield started
    started.stop()


@pytest.fixture
def free_endpoint(context: zmq.Context[zmq.Socket[bytes]]) -> str:
    """An endpoint nothing listens on."""
    sock = context.socket(zmq.PULL)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


def test_data_is_encoded_as_json_once_and_sent_as_application_json(receiver: Receiver) -> None:
    from pushserver.utils import updates

    data = {
        "title": "naïve café",
        "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        "price": decimal.Decimal("1.50"),
    }
    updates.send_update("news", data)
    publish = receiver.receive()
    assert publish.channel_id == "news"
    assert publish.content_type == updates.CONTENT_TYPE == "application/json"
    expected = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":")).encode()
    assert publish.body == expected
    assert json.loads(publish.body) == {
        "title": "naïve café",
        "when": "2024-05-01T12:30:00Z",
        "price": "1.50",
    }


def test_already_serialized_data_passes_through_untouched(receiver: Receiver) -> None:
    from pushserver.utils import updates

    updates.send_update("news", '{"kept":  "as is" }', already_serialized=True)
    updates.send_update("news", b"[1, 2,\n3]", already_serialized=True)
    assert receiver.receive().body == b'{"kept":  "as is" }'
    assert receiver.receive().body == b"[1, 2,\n3]"


@pytest.mark.parametrize("channel_id", ["", "a\0b", "x" * (wire.MAX_CHANNEL_ID_BYTES + 1)])
def test_a_bad_channel_id_is_a_value_error_even_when_errors_are_ignored(
    receiver: Receiver, channel_id: str
) -> None:
    from pushserver.utils import updates

    with pytest.raises(ValueError, match="channel id"):
        updates.send_update(channel_id, {}, ignore_errors=True)
    assert receiver.nothing_more()


def test_a_channel_id_that_is_not_a_str_is_a_type_error(receiver: Receiver) -> None:
    from pushserver.utils import updates

    with pytest.raises(TypeError, match="channel_id must be a str, got int"):
        updates.send_update(42, {})  # type: ignore[arg-type]


def test_eight_threads_sending_200_messages_each_arrive_complete_and_in_order(
    receiver: Receiver,
) -> None:
    from pushserver.utils import updates

    threads_count, per_thread = 8, 200
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
        publish = receiver.receive()
        thread_number, sequence = json.loads(publish.body)
        assert publish.channel_id == f"thread-{thread_number}"
        received[thread_number].append(sequence)
    for thread in threads:
        thread.join()
    assert failures == []
    assert received == {n: list(range(per_thread)) for n in range(threads_count)}
    assert receiver.nothing_more()


def test_threads_that_end_do_not_leave_their_sockets_open(receiver: Receiver) -> None:
    from pushserver.utils import updates

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
    # Each socket holds a few descriptors; a leak would add hundreds.
    assert open_files() - before < 30
    assert [json.loads(receiver.receive().body) for _ in range(100)] == list(range(100))


def test_a_forked_child_sends_on_a_socket_of_its_own(receiver: Receiver) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    # The parent's socket exists before the fork: the child must not use it.
    updates.send_update("fork", "parent before")
    assert receiver.receive().body == b'"parent before"'
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
    assert receiver.receive().body == b'"child"'
    updates.send_update("fork", "parent after")
    assert receiver.receive().body == b'"parent after"'


def test_with_nothing_listening_send_update_raises_within_its_bound(
    configure: Callable[..., None], free_endpoint: str
) -> None:
    from pushserver.utils import updates

    configure(free_endpoint)
    for _ in range(2):  # the fresh socket's wait, then a socket already known to be down
        started = time.monotonic()
        with pytest.raises(PushServerError, match="could not reach the push broker at") as info:
            updates.send_update("news", {})
        assert time.monotonic() - started < 5 * SEND_TIMEOUT
        assert free_endpoint in str(info.value)


def test_ignore_errors_swallows_the_error_with_a_warning(
    configure: Callable[..., None], free_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pushserver.utils import updates

    configure(free_endpoint)
    with caplog.at_level(logging.WARNING, logger="pushserver"):
        updates.send_update("news", {}, ignore_errors=True)  # does not raise
    assert "could not reach the push broker" in caplog.text
    assert "'news'" in caplog.text


def test_the_ignore_errors_setting_swallows_the_error(
    configure: Callable[..., None], free_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pushserver.utils import updates

    configure(free_endpoint, ignore_errors=True)
    with caplog.at_level(logging.WARNING, logger="pushserver"):
        updates.send_update("news", {})  # does not raise
    assert "could not reach the push broker" in caplog.text


def test_messages_sent_while_the_broker_restarts_arrive_in_order(receiver: Receiver) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    updates.send_update("restart", 0)
    assert receiver.receive().body == b"0"
    receiver.stop()
    eventually(lambda: not sender.broker_connected(), what="the sender to notice the broker left")
    for number in range(1, 6):
        updates.send_update("restart", number)
    receiver.start()
    assert [receiver.receive().body for _ in range(5)] == [b"1", b"2", b"3", b"4", b"5"]
    updates.send_update("restart", 6)
    assert receiver.receive().body == b"6"


def test_a_broker_away_longer_than_the_unreachable_timeout_is_an_error(
    receiver: Receiver,
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    updates.send_update("away", "first")
    assert receiver.receive().body == b'"first"'
    receiver.stop()
    eventually(lambda: not sender.broker_connected(), what="the sender to notice the broker left")
    noticed = time.monotonic()
    updates.send_update("away", "queued")  # away for less than the timeout: queued

    def refused() -> str | None:
        try:
            updates.send_update("away", "refused")
        except PushServerError as exc:
            return str(exc)
        return None

    message = eventually(refused, timeout=10 * UNREACHABLE_TIMEOUT, what="a refusal")
    assert time.monotonic() - noticed >= UNREACHABLE_TIMEOUT
    assert f"could not reach the push broker at {receiver.endpoint} for" in message
    receiver.start()
    eventually(lambda: sender.broker_connected(), what="the sender to reconnect")
    updates.send_update("away", "back")
    bodies = [receiver.receive().body]
    while bodies[-1] != b'"back"':
        bodies.append(receiver.receive().body)
    assert bodies[0] == b'"queued"'


def test_a_thread_noticing_an_outage_late_does_not_restart_its_clock(
    receiver: Receiver,
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
        assert {receiver.receive().body, receiver.receive().body} == {b'"main"', b'"other"'}
        receiver.stop()
        eventually(lambda: not sender.broker_connected(), what="the main thread to notice")
        eventually(refused, timeout=10 * UNREACHABLE_TIMEOUT, what="the main thread's refusal")
        # The other thread last looked while the broker was up; the outage is
        # still as old as the main thread found it.
        with pytest.raises(PushServerError, match="could not reach the push broker"):
            other_thread.submit(updates.send_update, "late", "other").result()


def test_a_full_queue_is_an_error_naming_its_size(
    context: zmq.Context[zmq.Socket[bytes]], configure: Callable[..., None]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    stand_in = Receiver(context)
    stand_in.start()
    configure(stand_in.endpoint, send_queue_size=5, broker_unreachable_timeout=60)
    updates.send_update("full", 0)
    stand_in.receive()
    stand_in.stop()
    eventually(lambda: not sender.broker_connected(), what="the sender to notice the broker left")
    with pytest.raises(PushServerError, match="the queue of 5 messages for the push broker"):
        for number in range(100):
            updates.send_update("full", number)


def test_a_message_over_max_message_size_is_refused(receiver: Receiver) -> None:
    from pushserver.utils import updates

    with pytest.raises(PushServerError, match="more than max_message_size"):
        updates.send_update("big", "x" * (4 * 1024 * 1024))
    assert receiver.nothing_more()


def test_pre_and_post_send_update_signals_fire(
    receiver: Receiver, configure: Callable[..., None], free_endpoint: str
) -> None:
    from pushserver import signals
    from pushserver.utils import updates

    seen: list[tuple[str, dict[str, Any]]] = []

    def pre(**kwargs: Any) -> None:
        seen.append(("pre", kwargs))

    def post(**kwargs: Any) -> None:
        seen.append(("post", kwargs))

    signals.pre_send_update.connect(pre)
    signals.post_send_update.connect(post)
    try:
        updates.send_update("signals", {"n": 1})
        receiver.receive()
        configure(free_endpoint)
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


def test_asend_update_sends_from_async_code(receiver: Receiver) -> None:
    from pushserver.utils import updates

    asyncio.run(updates.asend_update("async", {"from": "a coroutine"}))
    assert json.loads(receiver.receive().body) == {"from": "a coroutine"}


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
    print("sent all", flush=True)
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


@pytest.fixture
def stand_in(context: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Receiver]:
    started = Receiver(context)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def test_messages_still_queued_at_interpreter_exit_are_delivered(
    stand_in: Receiver, processes: list[subprocess.Popen[str]]
) -> None:
    count = 20_000
    process = start_exiting_publisher(stand_in.endpoint, 10.0, count, wait_for_go=False)
    processes.append(process)
    assert process.stdout is not None
    assert stand_in.receive(timeout=30).body == b'"first"'
    # Not reading until the publisher is done fills the kernel's buffers, so
    # most of the burst is still in its socket when it exits: without the
    # exit hook that tail would die with the process.
    assert process.stdout.readline() == "sent first\n"
    assert process.stdout.readline() == "sent all\n"
    numbers = [json.loads(stand_in.receive(timeout=30).body)[0] for _ in range(count)]
    assert numbers == list(range(count))
    assert process.wait(timeout=30) == 0


def test_exit_never_hangs_on_messages_the_broker_cannot_take(
    stand_in: Receiver, processes: list[subprocess.Popen[str]]
) -> None:
    process = start_exiting_publisher(stand_in.endpoint, EXIT_TIMEOUT, 50, wait_for_go=True)
    processes.append(process)
    assert process.stdout is not None and process.stdin is not None
    assert stand_in.receive(timeout=30).body == b'"first"'
    assert process.stdout.readline() == "sent first\n"
    stand_in.stop()  # the broker goes away for good: the queued messages cannot leave
    process.stdin.write("go\n")
    process.stdin.flush()
    assert process.stdout.readline() == "sent all\n"
    started = time.monotonic()
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 5.0


def test_the_real_broker_sequences_what_send_update_sends(
    configure: Callable[..., None],
) -> None:
    from broker.config import BrokerConfig
    from broker.server import Broker
    from pushserver.utils import updates

    any_port = "tcp://127.0.0.1:*"
    ready = threading.Event()
    found: dict[str, Any] = {}

    async def serve() -> None:
        broker = Broker(BrokerConfig(ingress=any_port, events=any_port, control=any_port))
        found["broker"], found["endpoints"] = broker, broker.bind()
        found["loop"] = asyncio.get_running_loop()
        ready.set()
        await broker.run()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    events = ctx.socket(zmq.SUB)
    try:
        assert ready.wait(10)
        endpoints = found["endpoints"]
        events.connect(endpoints.events)
        events.subscribe(wire.topic("real"))
        # The broker answers a subscription with a sync marker: then it is listening.
        assert events.poll(10_000)
        assert isinstance(wire.decode_event(events.recv_multipart()), wire.Sync)
        configure(endpoints.ingress)
        updates.send_update("real", {"n": 1})
        updates.send_update("real", {"n": 2})
        messages: list[wire.Message] = []
        while len(messages) < 2:
            assert events.poll(10_000)
            event = wire.decode_event(events.recv_multipart())
            if isinstance(event, wire.Message):
                messages.append(event)
        assert [m.body for m in messages] == [b'{"n":1}', b'{"n":2}']
        assert messages[0].content_type == "application/json"
        assert messages[1].prev == messages[0].id and messages[0].id < messages[1].id
    finally:
        events.close(linger=0)
        ctx.term()
        if "loop" in found:
            found["loop"].call_soon_threadsafe(found["broker"].stop)
        thread.join(10)
