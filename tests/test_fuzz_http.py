"""A seeded fuzz of the edge's HTTP port: whatever a client sends, the edge answers
well-formed HTTP/1.1 (bad input with a 4xx, never a 500), leaks no connection,
logs no traceback, and goes on serving.

Cases are mutations of the requests each location takes (`tests.fuzzing`),
pipelined, split at random boundaries and sent with small pauses, against
one embedded server with short deadlines, so a request that is never
finished is answered 408 within a second or two. Each case but a few ends
with a request that asks the edge to close, so every connection is expected
to end by the edge's own doing; the rest hang up early or reset, as
browsers do. A failure names its seed and case number: the same seed
generates the same cases (``PUSHSERVER_FUZZ_SEED``, ``PUSHSERVER_FUZZ_SCALE``).
"""

from __future__ import annotations

import asyncio
import http.server
import random
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import zmq

from broker.wire import PublishPacker
from tests.client import fresh, publish, walk
from tests.conftest import PROTOCOL_SETTINGS
from tests.fuzzing import (
    BadResponse,
    HttpCase,
    ParsedRequests,
    count,
    heads_of,
    http_case,
    read_responses,
    seed,
)
from tests.processes import BROKER_LINE, Launcher, Process, eventually
from tests.raw_http import open_connections

SEED = seed(20261201)
CASES = count(2500)
# Connections open at once: enough that cases waiting out a deadline overlap.
CONCURRENCY = 48
# A case must be over by then: the head and body deadlines (1 s), a held poll
# (1 s) and the deadline sweep's quarter, with room for a busy machine.
CASE_LIMIT = 15.0
# A case whose last request swallowed the sentinel may end on a kept-alive
# connection, which the edge rightly leaves open: what came by then is judged.
QUIET_LIMIT = 3.0
TRACEBACK = "Traceback (most recent call last)"

CHANNELS = [f"fz-{n}" for n in range(8)]


class _Sink(http.server.BaseHTTPRequestHandler):
    """Stands in for Django's passthrough view: admits everyone, says nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def passthrough_sink() -> Iterator[str]:
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sink.server_address[1]}/passthrough/"
    sink.shutdown()
    sink.server_close()


def fuzz_settings(passthrough: str) -> dict[str, Any]:
    return {
        "store": {"type": "memory", "min_messages": 0, "max_messages": 20, "message_timeout": 600},
        "long_poll_timeout": 1,
        "head_timeout": 1,
        "body_timeout": 1,
        "max_message_size": 64 * 1024,
        # Every kind of location the protocol tests serve, and one that calls Django.
        "locations": (
            *PROTOCOL_SETTINGS["locations"],
            {"type": "subscriber", "url": r"/passthrough/([^/]+)", "passthrough": passthrough},
        ),
    }


@pytest.fixture(scope="module")
def fuzzed(module_launcher: Launcher, passthrough_sink: str) -> tuple[Process, str]:
    process, base = module_launcher.embedded(**fuzz_settings(passthrough_sink))
    for channel in CHANNELS:
        publish(base, channel, f"first of {channel}")
    return process, base


@dataclass
class Outcome:
    case: HttpCase
    received: bytes = b""
    closed_by_edge: bool = False
    reset: bool = False
    problems: list[str] = field(default_factory=list)


async def _send(writer: asyncio.StreamWriter, case: HttpCase) -> bool:
    """Write the case as its pieces; False when the edge closed before it was all sent."""
    try:
        for pause, piece in case.pieces:
            if pause:
                await asyncio.sleep(pause)  # part of the input: a client that trickles
            writer.write(piece)
            await writer.drain()
    except ConnectionError:
        return False
    return True


async def run_case(host: str, port: int, case: HttpCase) -> Outcome:
    outcome = Outcome(case)
    parsed = heads_of(case.data)
    must_close = case.hang_up_after is None and (parsed.ends_with_sentinel or parsed.error)
    reader, writer = await asyncio.open_connection(host, port)
    received = bytearray()
    sent_all = True
    try:
        limit = (
            None if case.hang_up_after is not None else CASE_LIMIT if must_close else QUIET_LIMIT
        )
        async with asyncio.timeout(limit):
            sender = asyncio.ensure_future(_send(writer, case))
            if case.hang_up_after is not None:
                sent_all = await sender
                await asyncio.sleep(case.hang_up_after)  # part of the input: a client leaving
                received += await _available(reader)
            else:
                while chunk := await reader.read(65536):
                    received += chunk
                outcome.closed_by_edge = True
                sent_all = await sender
    except TimeoutError:
        if must_close:
            outcome.problems.append(f"the edge neither finished nor closed within {CASE_LIMIT} s")
    except ConnectionError:
        outcome.reset = True
    finally:
        sock = writer.get_extra_info("socket")
        if case.reset and sock is not None and sock.fileno() >= 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
    outcome.received = bytes(received)
    # Bytes sent after the edge closed reset the connection, which may drop
    # the edge's last answer on the way in: the end is not to be judged then.
    judge(outcome, parsed, complete=outcome.closed_by_edge and sent_all and not outcome.reset)
    return outcome


async def _available(reader: asyncio.StreamReader) -> bytes:
    try:
        async with asyncio.timeout(0.001):
            return await reader.read(65536)
    except (TimeoutError, ConnectionError):
        return b""


def judge(outcome: Outcome, parsed: ParsedRequests, complete: bool) -> None:
    try:
        responses = read_responses(outcome.received, b"HEAD" in parsed.methods, complete)
    except BadResponse as error:
        outcome.problems.append(f"malformed response: {error}")
        return
    for response in responses:
        if response.status >= 500:
            outcome.problems.append(f"{response.status}: {response.body[:200]!r}")
    final = [r for r in responses if r.status >= 200]
    if len(final) > len(parsed.methods) + 1:
        outcome.problems.append(
            f"{len(final)} answers to {len(parsed.methods)} requests "
            f"(statuses {[r.status for r in final]})"
        )
    if parsed.error is None and len(final) == len(parsed.methods):
        # Every request answered: the nth answer is the nth request's.
        for method, response in zip(parsed.methods, final[:-1], strict=False):
            if method == b"HEAD" and response.body:
                outcome.problems.append(f"a HEAD answered {response.status} with a body")
    # The refusal of what llhttp could not read says llhttp's own reason, so it is told
    # apart from a request refused for what it says (a bad Host, say), which closes too.
    # (A head over the edge's limit is left out: this llhttp has no limit to count by.)
    unreadable = parsed.error not in (None, "upgrade") and bool(final)
    refused = unreadable and final[-1].body.startswith(
        f"malformed request: {parsed.error}".encode()
    )
    if refused and len(final) - 1 < parsed.completed:
        # What could not be read is refused after the answers owed to every request
        # read whole before it, never in place of one.
        outcome.problems.append("a refusal in place of an earlier request's answer")


async def fuzz(base: str, cases: list[HttpCase]) -> list[Outcome]:
    address = urlsplit(base)
    assert address.hostname is not None and address.port is not None
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(case: HttpCase) -> Outcome:
        async with limit:
            return await run_case(address.hostname or "", address.port or 0, case)

    return await asyncio.gather(*(one(case) for case in cases))


def report(outcomes: list[Outcome]) -> str:
    lines = [f"seed {SEED}:"]
    for outcome in outcomes[:15]:
        lines.append(f"  case {outcome.case.number}: {'; '.join(outcome.problems)}")
        lines.append(f"    sent {outcome.case.data[:400]!r}")
        lines.append(f"    got  {outcome.received[:400]!r}")
    return "\n".join(lines)


def assert_serving(process: Process, base: str) -> None:
    """Alive, no traceback, connections back to the one reading the gauge, and a
    publish reaches a poll, through the publisher location and through ingress."""
    assert process.popen.poll() is None, process.output[-5000:]
    eventually(lambda: open_connections(base) == 1, 15, "the connections gauge back at 1")
    channel = fresh("after-fuzz")
    publish(base, channel, "by HTTP")
    ingress = process.wait_for(BROKER_LINE).group("ingress")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 1000)
        dealer.connect(ingress)
        dealer.send(PublishPacker()(channel, b"by ingress", "text/plain", b"after-fuzz", 0, 0))
        dealer.close()
    finally:
        context.term()
    assert walk(base, channel, 2) == [b"by HTTP", b"by ingress"]
    tracebacks = [n for n, line in enumerate(process.lines) if TRACEBACK in line]
    assert not tracebacks, "\n".join(process.lines[tracebacks[0] - 3 : tracebacks[0] + 30])


def test_the_edge_answers_every_fuzzed_request_well_formed_and_keeps_serving(
    fuzzed: tuple[Process, str],
) -> None:
    process, base = fuzzed
    rng = random.Random(SEED)
    cases = [http_case(rng, number, CHANNELS) for number in range(CASES)]
    outcomes = asyncio.run(fuzz(base, cases))
    failed = [outcome for outcome in outcomes if outcome.problems]
    assert not failed, report(failed)
    # Most cases reached a location: the fuzz is not only refused at the parser.
    statuses = {
        r.status
        for o in outcomes
        for r in read_responses(o.received, b"HEAD" in heads_of(o.case.data).methods, False)
    }
    assert {200, 202, 304, 400, 404, 405, 408} <= statuses, sorted(statuses)
    assert_serving(process, base)


# -- regressions: what the fuzz found, on the protocol tests' server ---------------------


def exchange(base: str, request: bytes) -> bytes:
    """Send `request` in one write and read until the edge closes (or 5 s pass)."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=5) as raw:
        raw.sendall(request)
        return b"".join(iter(lambda: raw.recv(65536), b""))


def test_a_head_on_a_subscriber_location_gets_405_without_a_body(base: str) -> None:
    channel = fresh("head")
    publish(base, channel, "x")
    answer = exchange(
        base,
        f"HEAD /poll/{channel} HTTP/1.1\r\nHost: edge\r\n\r\n"
        f"GET /poll/{channel} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode(),
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 "), answer
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), answer


def test_a_malformed_request_pipelined_after_a_publish_does_not_take_the_publishs_answer(
    base: str,
) -> None:
    channel = fresh("pipelined")
    answer = exchange(
        base,
        f"POST /send-update/{channel} HTTP/1.1\r\nHost: edge\r\nContent-Length: 3\r\n\r\nabc"
        "GET /poll/x HTTP/1.1\r\nHo\x01st: edge\r\n\r\n".encode(),
    )
    # Today: a 400 for the second request arrives first, and nothing is published.
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n"), answer


def test_an_http10_request_saying_keep_alive_and_close_is_answered_and_closed(base: str) -> None:
    channel = fresh("close-wins")
    publish(base, channel, "x")
    answer = exchange(
        base,
        f"GET /poll/{channel} HTTP/1.0\r\nConnection: keep-alive\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert b"Connection: keep-alive" not in answer, answer


@pytest.mark.parametrize("location", ["poll", "updates"])
def test_an_if_modified_since_past_year_9999_gets_400(base: str, location: str) -> None:
    channel = fresh("far-future")
    publish(base, channel, "x")
    answer = exchange(
        base,
        f"GET /{location}/{channel} HTTP/1.1\r\nHost: edge\r\n"
        "If-Modified-Since: Fri, 31 Dec 9999 23:59:59 -2359\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
