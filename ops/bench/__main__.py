"""Benchmarks side by side with Nchan, in one run on one machine by one client.

    python -m ops.bench [--quick] [--targets embedded,cluster,cluster-curve,nchan]
                        [--workloads w1,...,w8]
                        [--json FILE]

Starts each target in turn, runs W1–W5 and W3h against it, stops it, then
starts it again for W6, again for W7, and with short timeouts for W8; then prints one table with
each figure's ratio to Nchan's and writes the JSON file. A run with a
single lost, duplicated or out-of-order delivery fails (exit status 1),
whatever its speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from ops.bench.forgetting import w8_distinct_channels, w8_limits
from ops.bench.loadgen import run
from ops.bench.targets import TARGETS, Limits, Target, watched
from ops.bench.workloads import (
    QUICK,
    Result,
    Sizes,
    w1_latency,
    w2_throughput,
    w3_channels,
    w3h_http_publishers,
    w4_idle_and_burst,
    w5_publish,
    w6_eventsource,
    w7_websocket,
)

# Figures where less is better; the ratio column reads the same either way:
# this project's figure over Nchan's.
LOWER_IS_BETTER = ("latency", "ms", "KiB", "MiB", "CPU", "÷ before")
# Targets compared with each other as well as with Nchan: CURVE on, CURVE off.
CURVE_PAIR = ("cluster-curve", "cluster")


def configure_django() -> None:
    """send_update needs Django settings; the bench is its own tiny site."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["pushserver"],
            PUSH_SERVER={},
            USE_TZ=True,
        )
        import django

        django.setup()


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


ASYNC_WORKLOADS = {
    "w1": w1_latency,
    "w2": w2_throughput,
    "w3": w3_channels,
    "w3h": w3h_http_publishers,
    "w4": w4_idle_and_burst,
    "w6": w6_eventsource,
    "w7": w7_websocket,
}
# W8 runs on a target of its own, started with short timeouts.
WORKLOADS = [*ASYNC_WORKLOADS, "w5", "w8"]
# Each on a target started for it alone, as W8: nginx and Python keep the memory
# an earlier workload's crowd freed and reuse it, so 5,000 idle streams opened
# after another crowd would weigh next to nothing (Nchan's read 0.00 KiB). W4's
# held polls likewise; and an edge handing back what it held for W3's channels
# once it forgot them, in the middle of W4's hold, made W4's figure negative.
ON_THEIR_OWN = ("w4", "w6", "w7")


@contextlib.contextmanager
def started(target: Target) -> Iterator[None]:
    """The target, running; when a workload fails, what its processes said last is shown."""
    target.start()
    try:
        yield
    except Exception:
        print(target.last_words(), file=sys.stderr)
        raise
    finally:
        target.stop()


def run_target(target: Target, sizes: Sizes, chosen: list[str]) -> list[Result]:
    async def workloads() -> list[Result]:
        return [
            await watched(target, workload(target, sizes))
            for name, workload in ASYNC_WORKLOADS.items()
            if name in chosen
        ]

    with started(target):
        results = run(workloads)
        if "w5" in chosen:
            results.append(w5_publish(target, sizes))
        return results


def run_w8(target: Target, sizes: Sizes) -> Result:
    with started(target):
        return run(lambda: watched(target, w8_distinct_channels(target, sizes)))


def cell(value: float) -> str:
    # Two decimals below 10: an after ÷ before of 1.24 must not read as 1.2.
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"


def table(results: list[Result], targets: list[str]) -> str:
    rows: dict[tuple[str, str], dict[str, float]] = {}
    cpu: dict[tuple[str, str], str] = {}
    for result in results:
        for figure, value in result.figures.items():
            rows.setdefault((result.workload, figure), {})[result.target] = value
        cpu[(result.workload, result.target)] = f"{result.server_cpu:.1f}/{result.client_cpu:.1f}"
    ours = [t for t in targets if t != "nchan"]
    header = ["workload", "figure", *targets]
    if "nchan" in targets:
        header += [f"{t} ÷ nchan" for t in ours]
    # What CURVE costs: the same cluster with it on, over the one without.
    curve_ratio = CURVE_PAIR[0] in targets and CURVE_PAIR[1] in targets
    if curve_ratio:
        header.append(f"{CURVE_PAIR[0]} ÷ {CURVE_PAIR[1]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (workload, figure), values in rows.items():
        cells = [workload, figure] + [cell(values[t]) if t in values else "–" for t in targets]
        if "nchan" in targets:
            for target in ours:
                nchan = values.get("nchan")
                cells.append(f"{values[target] / nchan:.2f}" if nchan and target in values else "–")
        if curve_ratio:
            on, off = (values.get(target) for target in CURVE_PAIR)
            cells.append(f"{on / off:.2f}" if on is not None and off else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "CPU seconds, server/load generator: "
        + "; ".join(f"{workload} {target} {figures}" for (workload, target), figures in cpu.items())
    )
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: about two minutes")
    parser.add_argument("--targets", default="embedded,cluster,nchan")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="e.g. w2,w4")
    parser.add_argument("--json", type=Path, default=Path("ops/bench/results.json"))
    for name, default in dataclasses.asdict(Sizes()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=None)
    options = parser.parse_args(argv)
    sizes = QUICK if options.quick else Sizes()
    overrides = {
        name: getattr(options, name)
        for name in dataclasses.asdict(sizes)
        if getattr(options, name) is not None
    }
    sizes = dataclasses.replace(sizes, **overrides)
    targets = [name.strip() for name in options.targets.split(",") if name.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {sorted(TARGETS)}")
    chosen = [name.strip().lower() for name in options.workloads.split(",") if name.strip()]
    if set(chosen) - set(WORKLOADS):
        parser.error(
            f"unknown workloads {sorted(set(chosen) - set(WORKLOADS))}; choose from {WORKLOADS}"
        )
    configure_django()
    raise_open_files()
    # Nothing may expire or be pushed out during a run: every subscriber must be
    # able to get every message, however far behind the server lets it fall.
    limits = Limits(
        max_messages=max(
            100,
            sizes.w2_messages,
            sizes.w3_rounds,
            sizes.w3h_rounds,
            sizes.w6_messages,
            sizes.w7_messages,
        ),
        message_timeout=3600,
    )
    folder = Path(tempfile.mkdtemp(prefix="pushserver-bench-"))
    results: list[Result] = []
    # A target that fails does not cost the figures of the others (W8 alone takes minutes).
    errors: list[str] = []
    started = time.time()
    try:
        for name in targets:
            print(f"running {name} …", file=sys.stderr, flush=True)
            try:
                shared = [w for w in chosen if w not in ON_THEIR_OWN and w != "w8"]
                if shared:
                    target = TARGETS[name](name, folder / name, limits)
                    results += run_target(target, sizes, shared)
                for alone in ON_THEIR_OWN:
                    if alone in chosen:
                        target = TARGETS[name](name, folder / f"{name}-{alone}", limits)
                        results += run_target(target, sizes, [alone])
                if "w8" in chosen:
                    target = TARGETS[name](name, folder / f"{name}-w8", w8_limits(sizes))
                    results.append(run_w8(target, sizes))
            except Exception as failure:
                traceback.print_exc()
                errors.append(f"{name}: {type(failure).__name__}: {failure}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    faults = [r for r in results if not r.faults.clean]
    report = table(results, targets)
    print(report)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
                "machine": machine(),
                "sizes": dataclasses.asdict(sizes),
                "results": [dataclasses.asdict(r) for r in results],
                "errors": errors,
            },
            indent=2,
        )
    )
    for result in faults:
        print(f"FAILED: {result.workload} on {result.target}: {result.faults}", file=sys.stderr)
    for failed in errors:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if faults or errors else 0


if __name__ == "__main__":
    sys.exit(main())
