"""The benchmark's own checks: its accounting catches what it must, and a quick run is clean."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from wsproto.connection import SERVER, Connection
from wsproto.events import Pong

from edge.config import SubscriberLocation
from edge.websocket import Accepted, handshake, message_frame, meta_header, notice_frame
from ops.bench import streams
from ops.bench.eventstream import ChunkedDecoder, EventStreamParser, ServerEvent
from ops.bench.ledger import (
    Catalog,
    Faults,
    Ledger,
    StreamLedger,
    Tally,
    channel_body,
    message_body,
    parse_event_id,
)
from ops.bench.loadgen import ResponseReader, run
from ops.bench.publishers import round_robin
from ops.bench.streams import NotAStream, Stream
from ops.bench.targets import Embedded, Limits, Target, TargetExited, watched
from ops.bench.workloads import Result
from ops.bench.wsclient import NOTICE, WebSocketProtocol
from ops.bench.wsmeta import MetaMessage, read_meta
from tests.processes import ROOT

# W3h, W6, W7 and W8 at sizes that only prove they run and account for everything:
# W8's wait for forgetting is cut to 2 s, so its memory figures mean nothing here.
TINY_NEW_WORKLOADS = [
    "--w7-sockets",
    "20",
    "--w7-messages",
    "200",
    "--w7-idle-sockets",
    "100",
    "--w7-hold",
    "0.5",
    "--w6-streams",
    "20",
    "--w6-messages",
    "200",
    "--w6-idle-streams",
    "100",
    "--w6-hold",
    "0.5",
    "--w3h-channels",
    "50",
    "--w3h-rounds",
    "3",
    "--w8-channels",
    "500",
    "--w8-message-timeout",
    "3",
    "--w8-linger",
    "1",
    "--w8-forget-wait",
    "2",
]


def ledger_of(seqs: list[int]) -> Ledger:
    ledger = Ledger()
    for seq in seqs:
        ledger.record(message_body(seq, 0.0), 1.0)
    return ledger


def test_a_complete_ordered_walk_has_no_faults() -> None:
    assert ledger_of([0, 1, 2, 3]).faults(4) == Faults()


def test_an_injected_loss_is_counted() -> None:
    assert ledger_of([0, 1, 3]).faults(4) == Faults(lost=1)


def test_an_injected_duplicate_is_counted() -> None:
    assert ledger_of([0, 1, 1, 2, 3]).faults(4) == Faults(duplicated=1)


def test_an_injected_reordering_is_counted() -> None:
    assert ledger_of([0, 2, 1, 3]).faults(4) == Faults(out_of_order=1)


def test_latency_is_measured_from_the_publish_time_in_the_body() -> None:
    ledger = Ledger()
    ledger.record(message_body(0, 10.0), 10.25)
    assert ledger.latencies == [0.25]


def tally_of(deliveries: list[tuple[int, int]], channels: int) -> Tally:
    """Each delivery as (channel polled, channel the message names)."""
    tally = Tally(channels)
    for polled, named in deliveries:
        tally.record(polled, channel_body(named, 0.0))
    return tally


def test_a_tally_of_every_channel_once_has_no_faults() -> None:
    assert tally_of([(0, 0), (1, 1), (2, 2)], 3).faults() == Faults()


def test_a_channel_never_delivered_is_counted_lost() -> None:
    assert tally_of([(0, 0), (2, 2)], 3).faults() == Faults(lost=1)


def test_a_channel_delivered_twice_is_counted_duplicated() -> None:
    assert tally_of([(0, 0), (1, 1), (1, 1)], 2).faults() == Faults(duplicated=1)


def test_a_message_of_another_channel_does_not_count_as_delivered() -> None:
    assert tally_of([(0, 0), (1, 0)], 2).faults() == Faults(lost=1)


class Answers(ResponseReader):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[int, bytes]] = []

    def answered(
        self, status: int, body: bytes, last_modified: bytes | None, etag: bytes | None
    ) -> None:
        self.got.append((status, body))


def test_chunked_and_sized_answers_are_framed_even_when_split_anywhere() -> None:
    stream = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nqueue\r\n3;x=y\r\nd: \r\n1\r\n1\r\n0\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"
    )
    for split in range(len(stream) + 1):
        answers = Answers()
        answers.data_received(stream[:split])
        answers.data_received(stream[split:])
        assert answers.got == [(201, b"queued: 1"), (202, b"ok")], split


# -- W6: the event-stream format and its ledger ------------------------------------


def parsed(pieces: list[bytes]) -> tuple[list[ServerEvent], EventStreamParser]:
    parser = EventStreamParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events, parser


def every_split(stream: bytes) -> list[list[bytes]]:
    """The stream in one piece, in two at every place, and a byte at a time."""
    splits = [[stream[:at], stream[at:]] for at in range(len(stream) + 1)]
    return [*splits, [stream[at : at + 1] for at in range(len(stream))]]


def test_events_are_read_the_same_however_the_stream_is_split() -> None:
    stream = (
        b"retry: 2500\n: keep-alive\n\n"
        b"id: 17:0\ndata: one\n\n"
        b"id: 17:1\r\nevent: quote\r\ndata: two\r\ndata:  lines\r\n\r\n"
        b"id: 18:0\rdata:three\r\r"
        b"data: no id of its own\n\n"
        b"id: 19:0\ndata: cut off by the end of the stream"
    )
    expected = [
        ServerEvent(b"17:0", True, b"message", b"one"),
        ServerEvent(b"17:1", True, b"quote", b"two\n lines"),
        ServerEvent(b"18:0", True, b"message", b"three"),
        ServerEvent(b"18:0", False, b"message", b"no id of its own"),
    ]
    for pieces in every_split(stream):
        events, parser = parsed(pieces)
        assert events == expected, pieces
        assert (parser.retry, parser.comments, parser.last_event_id) == (2500, 1, b"18:0")


def test_a_leading_bom_is_dropped_and_a_blank_data_line_still_dispatches() -> None:
    stream = b"\xef\xbb\xbfid: 1:0\ndata\n\nid: 1:1\ndata:\n\n"
    for pieces in every_split(stream):
        events, _ = parsed(pieces)
        assert [(e.last_event_id, e.data) for e in events] == [(b"1:0", b""), (b"1:1", b"")]


def test_an_event_without_data_is_not_dispatched_but_moves_the_last_id() -> None:
    events, parser = parsed([b"id: 5:0\n\nevent: x\n\n: c\nretry: soon\n\n"])
    assert events == []
    assert (parser.last_event_id, parser.retry, parser.comments) == (b"5:0", None, 1)


def test_an_id_holding_nul_is_ignored_and_unknown_fields_too() -> None:
    events, _ = parsed([b"id: 1:0\nfoo: bar\ndata: a\n\nid: 2\x00:0\ndata: b\n\n"])
    assert [(e.last_event_id, e.own_id, e.data) for e in events] == [
        (b"1:0", True, b"a"),
        (b"1:0", False, b"b"),
    ]


def test_a_chunked_stream_is_unframed_however_it_is_split() -> None:
    body = b"5\r\nid: 1\r\n3;ext=1\r\n:0\n\r\n0\r\n\r\n"
    for pieces in every_split(body):
        decoder = ChunkedDecoder()
        assert b"".join(decoder.feed(piece) for piece in pieces) == b"id: 1:0\n", pieces
        assert decoder.finished


def stream_ledger(
    events: list[tuple[bytes | None, int]], expected: int, catalog: Catalog | None = None
) -> StreamLedger:
    ledger = StreamLedger(catalog or Catalog(), expected)
    for event_id, seq in events:
        ledger.record(event_id, message_body(seq, 0.0))
    return ledger


def test_a_complete_stream_with_increasing_ids_has_no_faults() -> None:
    ledger = stream_ledger([(b"10:0", 0), (b"10:1", 1), (b"11:0", 2)], 3)
    assert ledger.faults() == Faults()
    assert ledger.received == 3


def test_a_stream_loss_a_repeat_and_a_reordering_are_each_counted() -> None:
    assert stream_ledger([(b"1:0", 0), (b"1:2", 2)], 3).faults() == Faults(lost=1)
    repeated = stream_ledger([(b"1:0", 0), (b"1:1", 1), (b"1:1", 1)], 2)
    # The repeat is also an id no newer than the last.
    assert repeated.faults() == Faults(duplicated=1, bad_ids=1)
    reordered = stream_ledger([(b"1:0", 0), (b"1:2", 2), (b"1:1", 1)], 3)
    assert reordered.faults() == Faults(out_of_order=1, bad_ids=1)


def test_an_event_without_its_own_id_or_with_a_malformed_one_is_a_bad_id() -> None:
    assert stream_ledger([(None, 0), (b"1:1", 1)], 2).faults() == Faults(bad_ids=1)
    assert stream_ledger([(b"1-0", 0), (b"x:1", 1)], 2).faults() == Faults(bad_ids=2)


def test_a_message_with_another_id_than_another_stream_saw_is_a_bad_id() -> None:
    catalog = Catalog()
    assert stream_ledger([(b"1:0", 0), (b"1:1", 1)], 2, catalog).faults() == Faults()
    other = stream_ledger([(b"1:0", 0), (b"1:5", 1)], 2, catalog)
    assert other.faults() == Faults(bad_ids=1)


def test_event_ids_order_as_pairs_not_as_text() -> None:
    assert parse_event_id(b"9:10") == (9, 10)
    assert parse_event_id(b"9:10") > parse_event_id(b"9:9")  # type: ignore[operator]
    assert parse_event_id(b"9") is None


# -- W7: ws+meta.nchan messages, and the WebSocket client on a real socket ------------


def test_a_meta_message_gives_its_id_content_type_and_data() -> None:
    assert read_meta(b"id: 17:0\ncontent-type: text/plain\n\nhello") == MetaMessage(
        b"17:0", b"text/plain", b"hello"
    )
    assert read_meta(b"id: 17:1\n\n") == MetaMessage(b"17:1", None, b"")


def test_only_the_first_blank_line_ends_a_meta_header() -> None:
    data = b"id: 9:9\n\nmore\n\n"
    assert read_meta(b"id: 1:0\n\n" + data) == MetaMessage(b"1:0", None, data)


def test_a_meta_header_that_never_ends_or_is_not_fields_is_no_message() -> None:
    assert read_meta(b"id: 1:0\n{}") is None
    assert read_meta(b"{} plain bytes\n\n") is None
    # An empty header, and a field another server adds: no id, and not data either.
    assert read_meta(b"\n{}") == MetaMessage(None, None, b"{}")
    assert read_meta(b"id: 1:0\nx-other: 1\n\n{}") == MetaMessage(b"1:0", None, b"{}")


def test_the_edges_meta_frames_are_read_back_as_they_were_made() -> None:
    body = message_body(3, 0.0)
    payload = message_frame(body, "application/json", "5:3")[2:]  # past the 2-byte header
    assert read_meta(payload) == MetaMessage(b"5:3", b"application/json", body)


Handler = Callable[[int, bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def upgrade(request: bytes, subprotocol: bool = True) -> bytes:
    """The edge's own answer to the client's handshake (edge.websocket.handshake)."""
    headers = [
        (name.strip(), value.strip())
        for name, _, value in (line.partition(b":") for line in request.split(b"\r\n")[1:])
        if name and (subprotocol or name.strip().lower() != b"sec-websocket-protocol")
    ]
    accepted = handshake("GET", "HTTP/1.1", headers, SubscriberLocation())
    assert isinstance(accepted, Accepted), accepted
    lines = "".join(f"{name}: {value}\r\n" for name, value in accepted.headers)
    return f"HTTP/1.1 101 Switching Protocols\r\n{lines}\r\n".encode()


def data_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    return struct.pack("!BB", (0x80 if final else 0) | opcode, len(payload)) + payload


async def websocket_exchange(handler: Handler, expected: int) -> Stream:
    """One W7 socket against an in-process server that `handler` plays, per connection."""
    served: list[asyncio.Task[None]] = []

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        try:
            await handler(len(served), request, reader, writer)
        finally:
            writer.close()

    def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(asyncio.get_running_loop().create_task(play(reader, writer)))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = Stream(
        "c", "/updates/c", StreamLedger(Catalog(), expected), expected, WebSocketProtocol
    )
    try:
        await streams.open_all("127.0.0.1", port, [stream])
        assert stream.done is not None
        await asyncio.wait_for(stream.done, 10)
    finally:
        streams.close_all([stream])
        # Each connection's part played to its end (it reads until the client closes).
        await asyncio.wait_for(asyncio.gather(*served), 10)
        server.close()
        await server.wait_closed()
    return stream


def test_a_websocket_checks_each_message_id_through_fragments_pings_and_notices() -> None:
    pongs: list[Pong] = []

    async def handler(
        _: int, request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert b"Sec-WebSocket-Protocol: ws+meta.nchan" in request
        second = meta_header("5:1", None) + message_body(1, 0.0)
        for piece in (
            upgrade(request),
            message_frame(message_body(0, 0.0), None, "5:0"),
            b"\x89\x00",  # a ping, which the client must answer
            notice_frame("pushserver-missed", "c", "5:0"),
            data_frame(0x1, second[:20], final=False),
            data_frame(0x0, second[20:]),
        ):
            writer.write(piece)
            await writer.drain()
        peer = Connection(SERVER)
        while not pongs:
            data = await reader.read(100)
            if not data:
                break
            peer.receive_data(data)
            pongs.extend(event for event in peer.events() if isinstance(event, Pong))

    stream = run(lambda: websocket_exchange(handler, 2))
    assert stream.ledger.faults() == Faults()
    assert (stream.last_event_id, stream.named[NOTICE], stream.opened) == (b"5:1", 1, 1)
    assert len(pongs) == 1


def test_a_websocket_closed_by_the_server_opens_again_from_its_last_id() -> None:
    targets: list[bytes] = []

    async def handler(
        connection: int, request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        targets.append(request.split(b" ")[1])
        writer.write(upgrade(request))
        seq = connection - 1
        writer.write(message_frame(message_body(seq, 0.0), None, f"5:{seq}"))
        if connection == 1:
            writer.write(b"\x88\x02" + struct.pack("!H", 1013))  # a slow reader's close
            await reader.read(100)  # the client's answer to the close
        await writer.drain()
        await reader.read()

    stream = run(lambda: websocket_exchange(handler, 2))
    assert stream.ledger.faults() == Faults()
    assert targets == [b"/updates/c", b"/updates/c?last_event_id=5%3A0"]
    assert (stream.reopened, stream.opened) == (1, 2)


def test_a_websocket_accepted_without_the_meta_subprotocol_fails_the_workload() -> None:
    async def handler(
        _: int, request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(upgrade(request, subprotocol=False))
        await writer.drain()
        await reader.read()

    with pytest.raises(NotAStream, match="not ws\\+meta.nchan"):
        run(lambda: websocket_exchange(handler, 1))


def test_each_channel_is_published_in_order_over_one_connection() -> None:
    paths = [f"/send-update/{n}" for n in range(5)]
    plans = [list(round_robin(paths, 3, 2, connection)) for connection in range(2)]
    for path in paths:
        carrying = [plan for plan in plans if any(p == path for p, _ in plan)]
        assert len(carrying) == 1
        assert [seq for p, seq in carrying[0] if p == path] == [0, 1, 2]
    assert sum(len(plan) for plan in plans) == 15


def test_the_targets_are_told_to_forget_idle_channels_when_a_workload_asks(
    tmp_path: Path,
) -> None:
    settings = Embedded("embedded", tmp_path, Limits(10, 10, channel_linger=5)).push_server()
    assert settings["channel_linger"] == 5
    assert "channel_linger" not in Embedded("embedded", tmp_path, Limits(10, 10)).push_server()


class Sleeper(Target):
    """A target whose one process is `sleep`: what the watch sees is a real exit."""

    def start(self) -> None:
        self.process = subprocess.Popen(["sleep", "600"])

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()

    def root_pids(self) -> list[int]:
        return [self.process.pid]

    def last_words(self) -> str:
        return ""

    def exited(self) -> list[str]:
        status = self.process.poll()
        return [] if status is None else [f"sleep (exit status {status})"]

    def followed_channels(self) -> int | None:
        return None

    def publish(self, channel_id: str, body: bytes) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        pass


def test_a_workload_ends_as_soon_as_a_server_process_does_not_at_its_own_timeout(
    tmp_path: Path,
) -> None:
    target = Sleeper("sleeper", tmp_path, Limits(10, 10))
    target.start()

    async def waits_long() -> Result:
        await asyncio.sleep(0.2)
        target.process.kill()
        await asyncio.sleep(600)  # as W6 waits for its deliveries
        raise AssertionError("the workload was not stopped")

    try:
        with pytest.raises(TargetExited, match=r"sleep \(exit status -9\) during the run"):
            run(lambda: asyncio.wait_for(watched(target, waits_long()), 60))
    finally:
        target.stop()


def test_a_quick_benchmark_of_this_project_delivers_everything(tmp_path: Path) -> None:
    report = tmp_path / "results.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.bench",
            "--quick",
            "--targets",
            "embedded",
            "--json",
            str(report),
            *TINY_NEW_WORKLOADS,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(report.read_text())["results"]
    assert {r["workload"] for r in results} == {
        "W1 latency",
        "W2 throughput",
        "W3 many channels",
        "W3h HTTP publishers",
        "W4 idle and burst",
        "W5 publish cost",
        "W6 EventSource",
        "W7 WebSocket",
        "W8 distinct channels",
    }
    for result in results:
        assert result["faults"] == {"lost": 0, "duplicated": 0, "out_of_order": 0, "bad_ids": 0}, (
            result
        )
    by_workload = {r["workload"]: r["figures"] for r in results}
    # Every message of W3h went by HTTP POST (its ledger is clean), at a measured cost.
    assert by_workload["W3h HTTP publishers"]["HTTP publishes/s"] > 0
    assert by_workload["W3h HTTP publishers"]["server CPU µs per publish"] > 0
    # Every stream had every event with its own id, and none was ended by the edge.
    assert by_workload["W6 EventSource"]["deliveries/s"] > 0
    assert by_workload["W6 EventSource"]["streams reopened"] == 0
    # The same over WebSockets: every frame's id read through ws+meta.nchan, none closed.
    assert by_workload["W7 WebSocket"]["deliveries/s"] > 0
    assert by_workload["W7 WebSocket"]["sockets reopened"] == 0
    w8 = by_workload["W8 distinct channels"]
    # The process was measured, and the edge's channel gauge read: the wait for forgetting needs it.
    assert w8["server MiB before"] > 0
    assert "channels followed after" in w8
    print(run.stdout)
