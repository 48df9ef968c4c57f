"""Every connection owes what it started within a deadline: a request head, then its
body, each counted from when it was begun and not renewed by each byte. A client that
trickles its head or never sends the body it announced is answered 408, one that
sends nothing is closed, each is counted, and an edge filled to its connection cap
by such clients serves others again once their deadline has passed. A client that
takes none of its answer is dropped after the idle timeout, and the kernel gives up the
stream of one whose host vanished."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from typing import BinaryIO

import pytest

from edge.connection import (
    BODY_LATE,
    HEAD_LATE,
    OUTPUT_STALLED,
    OVER_CAPACITY,
    HTTPServer,
    Responder,
)
from edge.connection import Connection as HTTPConnection
from tests.client import fresh, path, publish
from tests.partition import Partition
from tests.processes import Launcher, Process, eventually
from tests.raw_http import (
    closed,
    connect,
    connection_events,
    get,
    open_connections,
    read_response,
)

Server = tuple[Process, str]
Connection = tuple[socket.socket, BinaryIO]

# Long enough to fill the cap and see a newcomer refused on a busy machine, short
# enough for a test; the trickle is far quicker, so a timer renewed by each byte
# would never run out.
DEADLINE = 2.0
TRICKLE_EVERY = 0.25
CAP = 5


@pytest.fixture(scope="module")
def strict(module_launcher: Launcher) -> Server:
    """An edge holding at most CAP connections, each owing heads and bodies within DEADLINE."""
    return module_launcher.embedded(
        max_connections=CAP,
        head_timeout=DEADLINE,
        body_timeout=DEADLINE,
        store={"type": "memory", "min_messages": 0, "max_messages": 10},
    )


def trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send `data` a byte at a time until it is all sent, the edge closes, or `stop`."""

    def run() -> None:
        for byte in data:
            try:
                sock.send(bytes([byte]))
            except OSError:
                return  # closed by the edge
            if stop.wait(TRICKLE_EVERY):
                return

    threading.Thread(target=run, daemon=True).start()


def admitted(base: str, stack: ExitStack) -> Connection | None:
    """A connection the edge took (it answered a request on it), or None if refused."""
    sock, stream = connect(base)
    stack.callback(sock.close)
    stack.callback(stream.close)
    try:
        sock.sendall(get("/no-such-location"))
        if read_response(stream)[0] == 404:
            return sock, stream
    except (AssertionError, OSError):
        pass
    return None


def served(base: str, channel: str) -> bool:
    try:
        sock, stream = connect(base)
    except OSError:
        return False
    with sock, stream:
        try:
            sock.sendall(get(path("updates", channel)))
            return read_response(stream)[::2] == (200, b"ready")
        except (AssertionError, OSError):
            return False  # refused at the cap


def test_late_heads_and_bodies_get_408_and_a_capped_edge_serves_again_after_the_deadline(
    strict: Server,
) -> None:
    process, base = strict
    channel = fresh("served")
    publish(base, channel, "ready")
    eventually(lambda: open_connections(base) == 1, 10, "only the metrics request to be open")
    before = connection_events(base)
    stop = threading.Event()
    with ExitStack() as stack:
        stack.callback(stop.set)
        late: list[Connection] = []
        # A kept-alive connection owes its next head from that head's first byte.
        kept = eventually(lambda: admitted(base, stack), 10, "a free place")
        trickle(kept[0], get(path("updates", fresh("trickled"))), stop)
        late.append(kept)
        # Heads whose announced bodies never come, at a subscriber and a publisher location.
        for method, location in (("GET", "updates"), ("POST", "send-update")):
            sock, stream = eventually(lambda: admitted(base, stack), 10, "a free place")
            sock.sendall(
                f"{method} {path(location, fresh('unsent'))} HTTP/1.1\r\nHost: edge\r\n"
                "Content-Length: 1000000\r\n\r\n".encode()
            )
            late.append((sock, stream))
        # A new connection owes its first head from its start.
        sock, stream = connect(base)
        stack.callback(sock.close)
        stack.callback(stream.close)
        trickle(sock, get(path("updates", fresh("trickled"))), stop)
        late.append((sock, stream))
        # One that sends nothing at all is closed with nothing to answer.
        silent, silent_stream = connect(base)
        stack.callback(silent.close)
        stack.callback(silent_stream.close)

        # At the cap, a newcomer is closed as it arrives.
        newcomer, newcomer_stream = connect(base)
        stack.callback(newcomer.close)
        stack.callback(newcomer_stream.close)
        assert closed(newcomer_stream)

        answers = [read_response(stream) for _, stream in late]
        assert [status for status, _, _ in answers] == [408] * len(late)
        assert all(b"did not arrive within 2 s" in body for _, _, body in answers), answers
        assert all(closed(stream) for _, stream in late)
        assert closed(silent_stream)
        eventually(lambda: served(base, channel), 10, "a connection served again")

    after = connection_events(base)
    assert after.get(HEAD_LATE, 0) - before.get(HEAD_LATE, 0) == 3
    assert after.get(BODY_LATE, 0) - before.get(BODY_LATE, 0) == 2
    assert after.get(OVER_CAPACITY, 0) > before.get(OVER_CAPACITY, 0)
    assert "Traceback" not in process.output


@contextlib.asynccontextmanager
async def serving(
    responder: Callable[[HTTPConnection], Responder], events: Counter[str], idle_timeout: float
) -> AsyncIterator[tuple[HTTPServer, tuple[str, int]]]:
    """The edge's HTTP server in this loop, on a loopback port, each request answered by
    a `responder` of its own; yields the server and its address."""
    server = HTTPServer(
        lambda connection, request: responder(connection),
        Counter(),
        events,
        max_connections=10,
        max_body_size=1024,
        idle_timeout=idle_timeout,
        head_timeout=30,
        body_timeout=30,
    )
    listening = socket.create_server(("127.0.0.1", 0))
    await server.serve([listening])
    try:
        yield server, listening.getsockname()
    finally:
        server.stop_accepting()
        await server.close_all()


class BigAnswer:
    """Answers any request with BIG_ANSWER bytes, all written at once."""

    def __init__(self, connection: HTTPConnection) -> None:
        self.connection = connection

    def body(self, chunk: bytes) -> None:
        pass

    def complete(self) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {BIG_ANSWER}\r\n\r\n".encode()
        self.connection.send(head + b"x" * BIG_ANSWER)
        self.connection.finish()

    def closed(self) -> None:
        pass


# More than loopback's socket buffers take, so the rest waits in the edge's own.
BIG_ANSWER = 16 * 1024 * 1024


def test_a_client_that_takes_none_of_its_answer_is_dropped_after_the_idle_timeout() -> None:
    events: Counter[str] = Counter()

    async def scenario() -> None:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        async with serving(BigAnswer, events, idle_timeout=0.5) as (server, address):
            try:
                await loop.sock_connect(client, address)
                await loop.sock_sendall(client, get("/anything"))
                deadline = loop.time() + 10
                while events[OUTPUT_STALLED] == 0 or server.connections:
                    assert loop.time() < deadline, "the unread connection was not dropped"
                    await asyncio.sleep(0.05)
            finally:
                client.close()

    asyncio.run(scenario())
    assert events == Counter({OUTPUT_STALLED: 1})


class Trickle:
    """Answers with a stream's head, then a comment every TRICKLE_EVERY seconds: output
    small enough to fit the kernel's buffers whether or not it is ever acknowledged."""

    def __init__(self, connection: HTTPConnection) -> None:
        self.connection = connection
        self.timer: asyncio.TimerHandle | None = None

    def body(self, chunk: bytes) -> None:
        pass

    def complete(self) -> None:
        self.connection.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        self._tick()

    def _tick(self) -> None:
        self.connection.send(b":\n\n")
        self.timer = asyncio.get_running_loop().call_later(TRICKLE_EVERY, self._tick)

    def closed(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def test_a_stream_whose_client_vanished_is_given_up_after_twice_the_idle_timeout() -> None:
    """A client whose host is gone acknowledges nothing, but a quiet stream's comments
    fit the kernel's buffer, so no output waits in the edge's: the kernel must give the
    connection up itself, and not after its own retries of a quarter of an hour."""
    events: Counter[str] = Counter()

    async def scenario() -> None:
        client = socket.socket()
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        async with serving(Trickle, events, idle_timeout=1.0) as (server, address):
            try:
                await loop.sock_connect(client, address)
                await loop.sock_sendall(client, get("/stream"))
                assert (await loop.sock_recv(client, 4096)).startswith(b"HTTP/1.1 200 OK")
                with Partition([client.getsockname()[1]]) as gone:
                    gone.cut()
                    deadline = loop.time() + 10
                    while server.connections:
                        assert loop.time() < deadline, "the vanished client's stream was kept"
                        await asyncio.sleep(0.05)
            finally:
                client.close()

    asyncio.run(scenario())
    assert OUTPUT_STALLED not in events  # the edge's own rule never saw it
