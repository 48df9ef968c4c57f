"""The benchmark's own checks: its accounting catches what it must, and a quick run is clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ops.bench.ledger import Faults, Ledger, message_body
from tests.processes import ROOT


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
        "W4 idle and burst",
        "W5 publish cost",
    }
    for result in results:
        assert result["faults"] == {"lost": 0, "duplicated": 0, "out_of_order": 0}, result
    print(run.stdout)
