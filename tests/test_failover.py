"""A standby pair of brokers under faults, with real processes on loopback: 3 edges behind
nginx, 300 long-poll clients on 10 channels, two publishers (this process, and one of its
own) calling `send_update` at 20 messages a second each. Each broker is a "host" with a
history file of its own. Every message `send_update` accepted must reach every client once,
in order, byte for byte, and no `send_update` call may raise, whichever broker is killed,
frozen or restarted."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq

from broker.curve import ClientFiles, apply_client, create_key_files, load_client_keys
from broker.throttled_log import LOG_LINES
from ops.cluster import Cluster
from tests.client import fresh
from tests.followers import StreamSubscriber
from tests.pollers import Subscriber
from tests.processes import Launcher, Process
from tests.stream import Fault, Schedule, StreamResult, finish, publish_stream

STORE = {"type": "memory", "min_messages": 0, "max_messages": 1000, "message_timeout": 300}
FAILOVER_TIMEOUT = 2.0
PEER_REFUSED = 'pushserver_broker_curve_refused_total{port="peer"}'
PEER_MALFORMED = 'pushserver_broker_malformed_frames_total{port="peer"}'


class TimedList(list[bytes]):
    """A subscriber's deliveries, each with the moment it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: bytes) -> None:
        self.times.append(time.monotonic())
        super().append(item)


@contextlib.contextmanager
def started_pair(tmp_path: Path) -> Iterator[Cluster]:
    """A pair of brokers, each a "host" with a history file of its own, 3 edges, nginx."""
    cluster = Cluster(
        tmp_path,
        edges=3,
        balancer="nginx",
        launcher=Launcher(tmp_path),
        standby=True,
        failover_timeout=FAILOVER_TIMEOUT,
        store=STORE,
        heartbeat_interval=0.5,
        # The sender's limit stays above a failover's pause.
        broker_unreachable_timeout=10,
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Cluster]:
    with started_pair(tmp_path) as cluster:
        yield cluster


def figure(url: str | None, name: str) -> float:
    assert url is not None
    text = httpx.get(url, timeout=5).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def kill_once_whole(pair: Cluster) -> Callable[[], None]:
    """A fault: kill -9 the primary as soon as it counts its backup again (not degraded)."""

    def kill() -> None:
        wait_for(
            lambda: figure(pair.metrics_url, "pushserver_broker_pair_degraded") == 0.0,
            10,
            "the backup to copy the active broker's state again",
        )
        pair.stop_broker(signal.SIGKILL)

    return kill


def synced(cluster: Cluster, metrics_url: str | None) -> bool:
    try:
        return figure(metrics_url, "pushserver_broker_pair_synced") == 1.0
    except httpx.HTTPError:
        return False


# A publisher process of its own: `send_update` at a steady rate, round robin over the
# channels in argv; each accepted body on a line of its output, a raise as RAISED.
PUBLISHER_SCRIPT = """
import sys, time, django
django.setup()
from pushserver.utils import updates
rate, duration, channels = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
start = time.monotonic()
for n in range(int(rate * duration)):
    channel = channels[n % len(channels)]
    body = '{"type":"process","channel":"%s","seq":%d}' % (channel, n)
    try:
        updates.send_update(channel, body, already_serialized=True)
    except Exception as error:
        print("RAISED", repr(error), flush=True)
        sys.exit(1)
    print("SENT", body, flush=True)
    time.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))
print("DONE", flush=True)
"""


def start_publisher(
    cluster: Cluster, launcher: Launcher, channels: list[str], rate: float, duration: float
) -> Process:
    module = launcher.settings(cluster.push_server)
    command = [sys.executable, "-c", PUBLISHER_SCRIPT, str(rate), str(duration), *channels]
    return launcher.spawn("publisher", command, launcher.environment(module))


def run(
    cluster: Cluster, faults: list[Fault], duration: float = 20, settle: float = 90
) -> tuple[StreamResult, list[float], list[float]]:
    """The stream with `faults`, from two publishers (this process and one of its own, 20
    messages a second each, over 5 channels each); returns the result, when each fault
    ran, and every delivery's time."""
    names = [fresh(f"pair{n}") for n in range(10)]
    ours, theirs = names[:5], names[5:]
    for name in names:
        assert httpx.put(f"{cluster.edge_urls[0]}/send-update/{name}").status_code == 200
    # Per channel 15 long-polls and 15 EventSource streams.
    subscribers: list[Subscriber | StreamSubscriber] = [
        kind([cluster.url], name, tolerate_errors=True, received=TimedList())
        for name in names
        for kind in (Subscriber, StreamSubscriber)
        for _ in range(15)
    ]
    schedule = Schedule(faults)

    async def main() -> dict[str, list[bytes]]:
        walks = [asyncio.create_task(s.walk(int(20 * duration) // 5)) for s in subscribers]
        publisher = start_publisher(cluster, cluster.launcher, theirs, 20, duration)
        schedule.start()
        sent = await asyncio.to_thread(publish_stream, cluster, ours, 20, duration)
        await schedule.join()
        await asyncio.to_thread(publisher.popen.wait, duration + 30)
        lines = list(publisher.lines)
        assert "DONE" in lines and not any(line.startswith("RAISED") for line in lines), (
            publisher.output[-3000:]
        )
        for line in lines:
            if line.startswith("SENT "):
                body = line[len("SENT ") :]
                sent.setdefault(body.split('"channel":"')[1].split('"')[0], []).append(
                    body.encode()
                )
        await finish(walks, settle)
        return sent

    sent = asyncio.run(main())
    schedule.check()
    times = sorted(t for s in subscribers for t in getattr(s.received, "times", []))
    return StreamResult(sent, subscribers, schedule.labels), schedule.times, times


def pause_after(fault_time: float, deliveries: list[float]) -> float:
    """The longest silence of every client together from shortly before `fault_time` on."""
    around = [t for t in deliveries if fault_time - 1 <= t <= fault_time + 30]
    gaps = [b - a for a, b in zip(around, around[1:], strict=False)]
    return max(gaps, default=0.0)


def active_epoch(cluster: Cluster) -> tuple[float, float]:
    return (
        figure(cluster.metrics_url, "pushserver_broker_pair_epoch"),
        figure(cluster.backup_metrics_url, "pushserver_broker_pair_epoch"),
    )


def test_the_active_broker_killed_with_its_disk_then_back_as_backup_and_killed_again_loses_nothing(
    pair: Cluster, tmp_path: Path
) -> None:
    wait_for(lambda: synced(pair, pair.backup_metrics_url), 20, "the backup's replica")

    def kill_primary_and_its_disk() -> None:
        pair.stop_broker(signal.SIGKILL)
        (tmp_path / "primary.history").unlink()

    def primary_back() -> None:
        pair.start_broker()
        wait_for(lambda: synced(pair, pair.metrics_url), 20, "the primary's catch-up")

    result, fault_times, deliveries = run(
        pair,
        faults=[
            (4, "kill -9 the primary (active), history file deleted", kill_primary_and_its_disk),
            (9, "start the primary again: it joins as backup", primary_back),
            (14, "kill -9 the backup (now active)", lambda: pair.stop_backup(signal.SIGKILL)),
        ],
        duration=22,
    )
    first, second = pause_after(fault_times[0], deliveries), pause_after(fault_times[2], deliveries)
    result.report(
        "pair: active killed twice",
        {"pause after the first kill (s)": f"{first:.2f}", "after the second": f"{second:.2f}"},
    )
    result.check()
    assert figure(pair.metrics_url, "pushserver_broker_pair_active") == 1.0


def test_the_backup_killed_under_load_leaves_the_primary_serving_alone(pair: Cluster) -> None:
    wait_for(lambda: synced(pair, pair.backup_metrics_url), 20, "the backup's replica")
    result, fault_times, deliveries = run(
        pair,
        faults=[(5, "kill -9 the backup (passive)", lambda: pair.stop_backup(signal.SIGKILL))],
        duration=12,
    )
    result.report(
        "pair: backup killed", {"pause (s)": f"{pause_after(fault_times[0], deliveries):.2f}"}
    )
    result.check()
    assert figure(pair.metrics_url, "pushserver_broker_pair_degraded") == 1.0


def test_a_frozen_backup_dropped_by_the_active_broker_copies_again_once_resumed_and_can_take_over(
    pair: Cluster,
) -> None:
    """Frozen past the failover time, the backup is dropped (the active broker acks alone);
    resumed, its replica from before is stale, and nothing but the active broker's word
    tells it so."""
    wait_for(lambda: synced(pair, pair.backup_metrics_url), 20, "the backup's replica")
    backup = pair.backup
    assert backup is not None
    degraded: list[float] = []

    def resume() -> None:
        degraded.append(figure(pair.metrics_url, "pushserver_broker_pair_degraded"))
        backup.popen.send_signal(signal.SIGCONT)

    result, fault_times, deliveries = run(
        pair,
        faults=[
            (3, "SIGSTOP the backup", lambda: backup.popen.send_signal(signal.SIGSTOP)),
            (3 + 2 * FAILOVER_TIMEOUT, "SIGCONT the backup", resume),
            (12, "kill -9 the primary once the backup copied again", kill_once_whole(pair)),
        ],
        duration=18,
    )
    result.report(
        "pair: backup frozen, resumed, then the active killed",
        {"pause after the kill (s)": f"{pause_after(fault_times[2], deliveries):.2f}"},
    )
    assert degraded == [1.0]
    result.check()
    assert figure(pair.backup_metrics_url, "pushserver_broker_pair_active") == 1.0


def test_a_frozen_active_broker_resumed_after_the_failover_steps_down_and_repeats_nothing(
    pair: Cluster,
) -> None:
    wait_for(lambda: synced(pair, pair.backup_metrics_url), 20, "the backup's replica")
    primary = pair.broker
    assert primary is not None

    def freeze() -> None:
        primary.popen.send_signal(signal.SIGSTOP)

    def resume() -> None:
        primary.popen.send_signal(signal.SIGCONT)

    result, fault_times, deliveries = run(
        pair,
        faults=[
            (4, "SIGSTOP the primary (active)", freeze),
            (4 + 3 * FAILOVER_TIMEOUT, "SIGCONT the primary", resume),
        ],
        duration=18,
    )
    result.report(
        "pair: active frozen past the failover time",
        {"pause (s)": f"{pause_after(fault_times[0], deliveries):.2f}"},
    )
    result.check()
    wait_for(lambda: synced(pair, pair.metrics_url), 20, "the old active's catch-up")
    assert figure(pair.metrics_url, "pushserver_broker_pair_active") == 0.0
    assert figure(pair.backup_metrics_url, "pushserver_broker_pair_active") == 1.0
    primary_epoch, backup_epoch = active_epoch(pair)
    assert backup_epoch > primary_epoch
    # An edge's HTTP publisher finds the new active broker too.
    channel = fresh("after")
    posted = httpx.post(f"{pair.edge_urls[0]}/send-update/{channel}", content=b'"x"', timeout=10)
    assert posted.status_code in (200, 201, 202), posted.text


def test_a_pair_with_curve_on_every_link_replicates_and_fails_over(tmp_path: Path) -> None:
    layout, _ = create_key_files(tmp_path / "keys")
    cluster = Cluster(
        tmp_path,
        edges=2,
        balancer="nginx",
        launcher=Launcher(tmp_path),
        standby=True,
        failover_timeout=FAILOVER_TIMEOUT,
        curve=layout.setting(),
        store=STORE,
        heartbeat_interval=0.5,
        broker_unreachable_timeout=10,
    )
    try:
        cluster.start()
        wait_for(lambda: synced(cluster, cluster.backup_metrics_url), 20, "a copy over CURVE")
        result, fault_times, deliveries = run(
            cluster,
            faults=[(4, "kill -9 the primary", lambda: cluster.stop_broker(signal.SIGKILL))],
            duration=10,
        )
        result.report(
            "pair with CURVE: active killed",
            {"pause (s)": f"{pause_after(fault_times[0], deliveries):.2f}"},
        )
        result.check()
        assert figure(cluster.backup_metrics_url, "pushserver_broker_pair_active") == 1.0
        assert figure(cluster.backup_metrics_url, PEER_REFUSED) == 0
    finally:
        cluster.stop()


def lone_pair(tmp_path: Path, **push_server: Any) -> Cluster:
    """A standby pair with one edge and no balancer, for what strangers do on the link."""
    return Cluster(
        tmp_path,
        edges=1,
        balancer=None,
        launcher=Launcher(tmp_path),
        standby=True,
        failover_timeout=FAILOVER_TIMEOUT,
        heartbeat_interval=0.5,
        **push_server,
    )


def test_a_stranger_without_the_brokers_key_is_refused_on_the_link(tmp_path: Path) -> None:
    layout, _ = create_key_files(tmp_path / "keys")
    cluster = lone_pair(tmp_path, curve=layout.setting())
    try:
        cluster.start()
        wait_for(lambda: synced(cluster, cluster.backup_metrics_url), 20, "a copy over CURVE")
        context = zmq.Context()
        try:
            # An edge's key, which opens events and control, does not open the link.
            stranger = context.socket(zmq.DEALER)
            stranger.setsockopt(zmq.LINGER, 0)
            keys = load_client_keys(
                ClientFiles(
                    Path(layout.setting()["broker_public_key"]),
                    Path(layout.setting()["edge_secret_key"]),
                )
            )
            apply_client(stranger, keys)
            stranger.connect(cluster.push_server["standby"]["peer"][0])
            wait_for(
                lambda: figure(cluster.metrics_url, PEER_REFUSED) >= 1,
                10,
                "the refusal",
            )
            stranger.close()
        finally:
            context.term()
        assert figure(cluster.metrics_url, "pushserver_broker_pair_active") == 1.0
    finally:
        cluster.stop()


def test_malformed_frames_on_the_link_port_are_counted_and_told_only_a_few_times(
    tmp_path: Path,
) -> None:
    """Without CURVE the link's port takes whoever reaches it; what they send wrong is
    dropped, counted, and logged a few times a minute, and the pair goes on."""
    cluster = lone_pair(tmp_path)
    bad = 4 * LOG_LINES
    try:
        cluster.start()
        wait_for(lambda: synced(cluster, cluster.backup_metrics_url), 20, "the backup's copy")
        context = zmq.Context()
        try:
            stranger = context.socket(zmq.DEALER)
            stranger.setsockopt(zmq.LINGER, 1000)
            stranger.connect(cluster.push_server["standby"]["peer"][0])
            for _ in range(bad):
                stranger.send(b"not a peer message")
            wait_for(lambda: figure(cluster.metrics_url, PEER_MALFORMED) >= bad, 10, "the count")
            stranger.close()
        finally:
            context.term()
        assert figure(cluster.metrics_url, PEER_MALFORMED) == bad
        assert cluster.broker is not None
        told = [line for line in cluster.broker.lines if "malformed frame on peer" in line]
        assert len(told) == LOG_LINES, told
        assert figure(cluster.metrics_url, "pushserver_broker_pair_active") == 1.0
        assert synced(cluster, cluster.backup_metrics_url)
    finally:
        cluster.stop()


def test_each_brokers_banner_names_its_role_and_the_backup_copies_at_start(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, edges=0, balancer=None, launcher=Launcher(tmp_path), standby=True)
    try:
        cluster.start()
        assert cluster.broker is not None and cluster.backup is not None
        assert "Broker role: primary of a standby pair" in cluster.broker.output
        assert "Broker role: backup of a standby pair" in cluster.backup.output
        wait_for(lambda: synced(cluster, cluster.backup_metrics_url), 20, "the backup's copy")
        assert figure(cluster.metrics_url, "pushserver_broker_pair_active") == 1.0
        assert figure(cluster.metrics_url, "pushserver_broker_pair_degraded") == 0.0
    finally:
        cluster.stop()


def test_standby_without_a_standby_setting_is_refused(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    try:
        for args, said in (
            (("--role=broker", "--standby"), "PUSH_SERVER['standby'] is not set"),
            (("--role=edge", "--standby"), "--standby is for --role=broker"),
        ):
            process = launcher.start("refused", {}, *args)
            assert process.popen.wait(60) != 0
            wait_for(lambda process=process, said=said: said in process.output, 10, said)
    finally:
        launcher.stop_all()
