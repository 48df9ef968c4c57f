"""The servers a benchmark run measures, each started and stopped by the run.

* embedded: `runpushserver` with no role, broker and edge in one process;
* cluster: a broker and an edge with `--workers` on the cores the load
  generator leaves free;
* cluster-curve: the same with CURVE on every ZeroMQ link;
* cluster-pair: the same with a standby pair of brokers, every message
  acknowledged once the backup holds it too;
* nchan: nginx with the Nchan module (Debian's libnginx-mod-nchan), one
  worker, the same buffer length and message timeout.

Each target also says how to publish to it (send_update for this project,
an HTTP POST for Nchan), which processes make it up (for memory and CPU,
by part where it has several), and how many channels it follows now.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import shutil
import signal
import string
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from broker.curve import KeyLayout, create_key_files
from ops.launch import EDGE_LINE, Launcher, Process, eventually, free_port

NCHAN_CONFIG = Path(__file__).with_name("nchan.conf")
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Lines of each server process's output shown when a workload fails.
LAST_LINES = 30
# How often a running workload looks whether the target's processes still run (s).
WATCH_INTERVAL = 0.5

T = TypeVar("T")


# Nchan's own default for how long an empty channel is kept (nchan_channel_timeout).
NCHAN_CHANNEL_TIMEOUT = 5
METRICS_PATH = "/pushserver/metrics"
NCHAN_STATUS_PATH = "/nchan-status"
EDGE_CHANNELS = re.compile(r"^pushserver_edge_channels (\S+)$", re.MULTILINE)
EDGE_PROCESS = re.compile(r'^pushserver_edge_process\{pid="(\d+)"\}', re.MULTILINE)
NCHAN_CHANNELS = re.compile(r"^channels: (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Limits:
    max_messages: int
    message_timeout: int
    long_poll_timeout: int = 25
    # Seconds an idle channel is remembered (this project's `channel_linger`,
    # Nchan's nchan_channel_timeout); None leaves each server's default.
    channel_linger: int | None = None
    # Nchan keeps channels and messages in shared memory of a fixed size;
    # this project's store has no such bound, so Nchan gets what a run needs.
    nchan_memory_mib: int = 128


def descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += descendants(int(child))
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        # A process that ended since its pid was listed holds nothing.
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def write_calls(pids: list[int]) -> int:
    """The write system calls the processes made (`syscw`: write and writev, which the
    servers' sockets are written with), to tell a server that batches from one that
    writes each delivery on its own."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("syscw:"):
                    total += int(line.split()[1])
    return total


@dataclass
class Target(ABC):
    name: str
    folder: Path
    limits: Limits
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def root_pids(self) -> list[int]: ...

    @abstractmethod
    def last_words(self) -> str:
        """What the server's processes said last, and how they ended: for a failed run."""

    @abstractmethod
    def exited(self) -> list[str]:
        """The server's processes that have ended, with their exit status."""

    def pids(self) -> list[int]:
        return [pid for root in self.root_pids() for pid in descendants(root)]

    def parts(self) -> dict[str, list[int]]:
        """The processes of each part whose memory is reported on its own."""
        return {"server": self.pids()}

    def subscriber_path(self, channel_id: str) -> str:
        return f"/updates/{channel_id}"

    def stream_path(self, channel_id: str) -> str:
        """Where an EventSource stream of the channel is opened: this project's subscriber
        location itself, which streams when the request's Accept asks for it."""
        return f"/updates/{channel_id}"

    def websocket_path(self, channel_id: str) -> str:
        """Where a WebSocket of the channel is opened: the subscriber location again,
        which answers the upgrade."""
        return f"/updates/{channel_id}"

    def interval_path(self, channel_id: str) -> str:
        """An interval-poll location: 304 at once when nothing is held, never a wait."""
        return f"/poll/{channel_id}"

    def publisher_path(self, channel_id: str) -> str:
        return f"/send-update/{channel_id}"

    def publisher_url(self, channel_id: str) -> str:
        return f"http://{self.host}:{self.port}{self.publisher_path(channel_id)}"

    def subscribers(self, channel_id: str) -> int:
        response = httpx.get(
            self.publisher_url(channel_id), headers={"Accept": "application/json"}, timeout=10
        )
        if response.status_code != 200:
            return 0
        return int(response.json()["subscribers"])

    def get(self, path: str) -> tuple[int, str]:
        """One GET on a connection of its own (so edge workers on one port take turns).

        http.client rather than httpx: these are asked hundreds of times in
        a workload, and the load generator's CPU is part of what it reports.
        """
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def channel_known(self, channel_id: str) -> bool:
        """Whether the server still has the channel: its publisher location answers 200, not 404."""
        return self.get(self.publisher_path(channel_id))[0] == 200

    @abstractmethod
    def followed_channels(self) -> int | None:
        """The channels the server's subscriber side holds now; None when it cannot tell."""

    @abstractmethod
    def publish(self, channel_id: str, body: bytes) -> None: ...

    @abstractmethod
    def settle(self) -> None:
        """Return once everything this thread published is the server's."""


class PushServerTarget(Target):
    """This project: publishing goes through send_update, as a Django site's would."""

    launcher: Launcher
    processes: list[Process]
    send_update: Callable[..., None]
    send_error: type[Exception]

    edge_processes: int = 1

    def push_server(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "store": {
                "type": "memory",
                "min_messages": 0,
                "max_messages": self.limits.max_messages,
                "message_timeout": self.limits.message_timeout,
            },
            "locations": [
                {"type": "subscriber"},
                {"type": "subscriber", "url": r"/poll/([^/]+)", "polling": "interval"},
                {"type": "publisher"},
            ],
            "long_poll_timeout": self.limits.long_poll_timeout,
            "max_connections": 30_000,
        }
        linger = self.limits.channel_linger
        if linger is not None:
            settings["channel_linger"] = linger
            # The edge's own forgetting of a channel's topic, which exists already.
            settings["topic_linger"] = linger
        return settings

    def followed_channels(self) -> int | None:
        """The sum of every edge process's channel gauge, once each was heard from.

        Edge workers share a port, so each scrape, on a new connection, lands
        on one of them; a few tries reach them all.
        """
        heard: dict[str, int] = {}
        for _ in range(8 * self.edge_processes):
            text = self.get(METRICS_PATH)[1]
            channels, process = EDGE_CHANNELS.search(text), EDGE_PROCESS.search(text)
            if channels is None or process is None:
                return None
            heard[process.group(1)] = int(float(channels.group(1)))
            if len(heard) == self.edge_processes:
                return sum(heard.values())
        return None

    def use_for_sending(self, ingress: str, standby: dict[str, Any] | None = None) -> None:
        # Imported here, once Django is configured; kept, as a site's module would.
        from django.conf import settings

        from pushserver import PushServerError, sender
        from pushserver.utils import updates

        curve = self.push_server().get("curve")
        settings.PUSH_SERVER = {"broker": {"ingress": ingress}}
        if standby is not None:
            settings.PUSH_SERVER["standby"] = standby
        if curve is not None:
            settings.PUSH_SERVER["curve"] = curve
        sender.close()
        self.send_update = updates.send_update
        self.send_error = PushServerError

    def publish(self, channel_id: str, body: bytes) -> None:
        while True:
            try:
                self.send_update(channel_id, body.decode(), already_serialized=True)
                return
            except self.send_error as error:
                # A full queue is send_update's back-pressure: a publisher
                # faster than the broker waits, as a well-behaved one would.
                if "is full" not in str(error):
                    raise
                time.sleep(0.01)

    def settle(self) -> None:
        from pushserver import sender

        while sender.pending():
            time.sleep(0.001)

    def stop(self) -> None:
        from pushserver import sender

        sender.close()
        self.launcher.stop_all()

    def root_pids(self) -> list[int]:
        return [process.popen.pid for process in self.processes if process.popen.poll() is None]

    def exited(self) -> list[str]:
        return [
            f"{process.name} (exit status {process.popen.poll()})"
            for process in self.processes
            if process.popen.poll() is not None
        ]

    def last_words(self) -> str:
        return "\n".join(
            f"{process.name} (exit status {process.popen.poll()}):\n"
            + "\n".join(process.lines[-LAST_LINES:])
            for process in self.processes
        )


class Embedded(PushServerTarget):
    def start(self) -> None:
        self.launcher = Launcher(self.folder)
        endpoints = {
            name: f"tcp://127.0.0.1:{free_port()}" for name in ("ingress", "events", "control")
        }
        process = self.launcher.start(
            "embedded", {**self.push_server(), "broker": endpoints}, f"{self.host}:{self.port}"
        )
        process.wait_for(EDGE_LINE, timeout=60)
        self.processes = [process]
        self.use_for_sending(endpoints["ingress"])


class Cluster(PushServerTarget):
    workers: int = max(1, (os.cpu_count() or 2) - 1)

    def start(self) -> None:
        self.launcher = Launcher(self.folder)
        endpoints = {
            name: f"tcp://127.0.0.1:{free_port()}" for name in ("ingress", "events", "control")
        }
        settings = {**self.push_server(), "broker": endpoints}
        broker = self.launcher.start("broker", settings, "--role=broker")
        broker.wait_for("Broker listening", timeout=60)
        edge = self.launcher.start(
            "edge", settings, "--role=edge", f"{self.host}:{self.port}", f"--workers={self.workers}"
        )
        edge.wait_for(EDGE_LINE, timeout=60)
        self.processes = [broker, edge]
        self.edge_processes = self.workers
        self.use_for_sending(endpoints["ingress"])

    def parts(self) -> dict[str, list[int]]:
        broker, edge = (process.popen.pid for process in self.processes)
        return {"broker": descendants(broker), "edge": descendants(edge)}


class CurveCluster(Cluster):
    """The cluster with CURVE on every ZeroMQ link (keys made for the run): what
    encryption and the broker's allow-lists cost."""

    def push_server(self) -> dict[str, Any]:
        keys = self.folder / "keys"
        if not keys.exists():
            create_key_files(keys)
        return {**super().push_server(), "curve": KeyLayout(keys).setting()}


class PairCluster(Cluster):
    """The cluster with a standby pair of brokers: what replicating every message to the
    backup before it is acknowledged costs."""

    def start(self) -> None:
        self.launcher = Launcher(self.folder)
        ports: set[int] = set()
        while len(ports) < 8:
            ports.add(free_port())
        addresses = [f"tcp://127.0.0.1:{port}" for port in sorted(ports)]
        names = ("ingress", "events", "control")
        endpoints = dict(zip(names, addresses[:3], strict=True))
        standby = {**dict(zip(names, addresses[3:6], strict=True)), "peer": addresses[6:]}
        settings = {**self.push_server(), "broker": endpoints, "standby": standby}
        primary = self.launcher.start("primary", settings, "--role=broker")
        primary.wait_for("Broker listening", timeout=60)
        backup = self.launcher.start("backup", settings, "--role=broker", "--standby")
        backup.wait_for("copied the active broker's state", timeout=60)
        edge = self.launcher.start(
            "edge", settings, "--role=edge", f"{self.host}:{self.port}", f"--workers={self.workers}"
        )
        edge.wait_for(EDGE_LINE, timeout=60)
        self.processes = [primary, backup, edge]
        self.edge_processes = self.workers
        self.use_for_sending(endpoints["ingress"], standby)

    def parts(self) -> dict[str, list[int]]:
        primary, backup, edge = (process.popen.pid for process in self.processes)
        return {
            "broker": descendants(primary),
            "backup": descendants(backup),
            "edge": descendants(edge),
        }


class Nchan(Target):
    """nginx with the Nchan module, one worker, configured like the other targets."""

    process: subprocess.Popen[bytes] | None = None
    # One keep-alive connection per publishing thread: http.client is the
    # lightest HTTP publisher Python has, so Nchan's publish rate is not
    # understated by the client.
    connections: threading.local

    def start(self) -> None:
        ensure_nchan()
        prefix = self.folder / "nchan"
        for folder in ("logs", "tmp"):
            (prefix / folder).mkdir(parents=True, exist_ok=True)
        config = prefix / "nginx.conf"
        config.write_text(
            string.Template(NCHAN_CONFIG.read_text()).substitute(
                module=NCHAN_MODULE,
                port=self.port,
                max_messages=self.limits.max_messages,
                message_timeout=self.limits.message_timeout,
                long_poll_timeout=self.limits.long_poll_timeout,
                channel_timeout=self.limits.channel_linger or NCHAN_CHANNEL_TIMEOUT,
                shared_memory=self.limits.nchan_memory_mib,
            )
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [
                nginx,
                "-p",
                f"{prefix}/",
                "-c",
                str(config),
                "-g",
                f"daemon off; pid {prefix}/nginx.pid;",
            ],
            stdin=subprocess.DEVNULL,
        )

        def answering() -> bool:
            # An answer, not a connection: the master listens before its worker
            # has started, and memory read then would miss the worker's.
            try:
                return self.get(NCHAN_STATUS_PATH)[0] == 200
            except OSError:
                return False

        eventually(answering, 20, "nginx with Nchan to answer")
        self.connections = threading.local()

    def settle(self) -> None:
        return None  # an HTTP publish is the server's when its answer arrives

    def stream_path(self, channel_id: str) -> str:
        # A location of its own: Nchan picks a subscriber type per location.
        return f"/stream/{channel_id}"

    def websocket_path(self, channel_id: str) -> str:
        return f"/ws/{channel_id}"

    def followed_channels(self) -> int | None:
        found = NCHAN_CHANNELS.search(self.get(NCHAN_STATUS_PATH)[1])
        return None if found is None else int(found.group(1))

    def publish(self, channel_id: str, body: bytes) -> None:
        connection = getattr(self.connections, "http", None)
        if connection is None:
            connection = self.connections.http = http.client.HTTPConnection(self.host, self.port)
        connection.request(
            "POST", f"/send-update/{channel_id}", body, {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        assert response.status in (201, 202), response.status

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def root_pids(self) -> list[int]:
        return [] if self.process is None else [self.process.pid]

    def _status(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def exited(self) -> list[str]:
        status = self._status()
        return [] if status is None else [f"nginx (exit status {status})"]

    def last_words(self) -> str:
        log = self.folder / "nchan" / "logs" / "error.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return f"nginx (exit status {self._status()}):\n" + "\n".join(lines[-LAST_LINES:])


class TargetExited(Exception):
    """A server process ended while a workload ran."""


async def watched(target: Target, work: Awaitable[T]) -> T:
    """`work`, ended as soon as one of the target's processes does, not at its own timeout."""
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.wait({task}, timeout=WATCH_INTERVAL)
        gone = target.exited()
        if gone and not task.done():
            task.cancel()
            raise TargetExited(f"{', '.join(gone)} during the run")
    return task.result()


def ensure_nchan() -> None:
    """Install nginx and the Nchan module from Debian when they are missing."""
    if NCHAN_MODULE.exists() and shutil.which("nginx"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env)
    # nginx-light where no nginx is installed yet; the module fits any Debian nginx.
    packages = ["libnginx-mod-nchan"] + ([] if shutil.which("nginx") else ["nginx-light"])
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    subprocess.run([*sudo, *install], check=True, env=env)


TARGETS: dict[str, type[Target]] = {
    "embedded": Embedded,
    "cluster": Cluster,
    "cluster-curve": CurveCluster,
    "cluster-pair": PairCluster,
    "nchan": Nchan,
}
