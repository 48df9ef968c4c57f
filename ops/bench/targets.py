"""The servers a benchmark run measures, each started and stopped by the run.

* embedded: `runpushserver` with no role, broker and edge in one process;
* cluster: a broker and an edge with `--workers` on the cores the load
  generator leaves free;
* nchan: nginx with the Nchan module (Debian's libnginx-mod-nchan), one
  worker, the same buffer length and message timeout.

Each target also says how to publish to it (send_update for this project,
an HTTP POST for Nchan) and which processes make it up, for memory and CPU.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ops.launch import EDGE_LINE, Launcher, Process, eventually, free_port

NCHAN_CONFIG = Path(__file__).with_name("nchan.conf")
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Limits:
    max_messages: int
    message_timeout: int
    long_poll_timeout: int = 25


def descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += descendants(int(child))
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
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

    def pids(self) -> list[int]:
        return [pid for root in self.root_pids() for pid in descendants(root)]

    def subscriber_path(self, channel_id: str) -> str:
        return f"/updates/{channel_id}"

    def publisher_url(self, channel_id: str) -> str:
        return f"http://{self.host}:{self.port}/send-update/{channel_id}"

    def subscribers(self, channel_id: str) -> int:
        response = httpx.get(
            self.publisher_url(channel_id), headers={"Accept": "application/json"}, timeout=10
        )
        if response.status_code != 200:
            return 0
        return int(response.json()["subscribers"])

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

    def push_server(self) -> dict[str, Any]:
        return {
            "store": {
                "type": "memory",
                "min_messages": 0,
                "max_messages": self.limits.max_messages,
                "message_timeout": self.limits.message_timeout,
            },
            "long_poll_timeout": self.limits.long_poll_timeout,
            "max_connections": 30_000,
        }

    def use_for_sending(self, ingress: str) -> None:
        # Imported here, once Django is configured; kept, as a site's module would.
        from django.conf import settings

        from pushserver import PushServerError, sender
        from pushserver.utils import updates

        settings.PUSH_SERVER = {"broker": {"ingress": ingress}}
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
        self.use_for_sending(endpoints["ingress"])


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

        def listening() -> bool:
            try:
                with socket.create_connection((self.host, self.port), 1):
                    return True
            except OSError:
                return False

        eventually(listening, 20, "nginx with Nchan to listen")
        self.connections = threading.local()

    def settle(self) -> None:
        return None  # an HTTP publish is the server's when its answer arrives

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


TARGETS: dict[str, type[Target]] = {"embedded": Embedded, "cluster": Cluster, "nchan": Nchan}
