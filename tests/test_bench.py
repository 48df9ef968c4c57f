"""The benchmark's own checks: its accounting catches what it must, and a quick run is clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ops.bench.ledger import Faults, Ledger, Tally, channel_body, message_body
from ops.bench.loadgen import ResponseReader
from ops.bench.publishers import round_robin
from ops.bench.targets import Embedded, Limits
from tests.processes import ROOT

# W3h and W8 at sizes that only prove they run and account for everything:
# W8's wait for forgetting is cut to 2 s, so its memory figures mean nothing here.
TINY_NEW_WORKLOADS = [
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
        "W8 distinct channels",
    }
    for result in results:
        assert result["faults"] == {"lost": 0, "duplicated": 0, "out_of_order": 0}, result
    by_workload = {r["workload"]: r["figures"] for r in results}
    # Every message of W3h went by HTTP POST (its ledger is clean), at a measured cost.
    assert by_workload["W3h HTTP publishers"]["HTTP publishes/s"] > 0
    assert by_workload["W3h HTTP publishers"]["server CPU µs per publish"] > 0
    w8 = by_workload["W8 distinct channels"]
    # The process was measured, and the edge's channel gauge read: the wait for forgetting needs it.
    assert w8["server MiB before"] > 0
    assert "channels followed after" in w8
    print(run.stdout)
