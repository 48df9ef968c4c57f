"""Starts real broker and edge processes through `manage.py runpushserver`.

Used by the local cluster launcher, the tests and the benchmarks. Each
process gets a settings module of its own, written into a folder, binds
port 0 (or `*` for ZeroMQ) unless told otherwise, and is known to be ready
when its banner names the addresses it really listens on. No fixed sleeps:
every wait polls a condition against a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BROKER_LINE = re.compile(
    r"Broker listening: ingress (?P<ingress>\S+), events (?P<events>\S+), control (?P<control>\S+)"
)
EDGE_LINE = re.compile(r"Edge listening on (?P<url>http://\S+?)/?$")
METRICS_LINE = re.compile(r"Broker metrics on (?P<url>http://\S+)")
ANY_PORT = {
    "ingress": "tcp://127.0.0.1:*",
    "events": "tcp://127.0.0.1:*",
    "control": "tcp://127.0.0.1:*",
}
# A broker started here shows its counters on an ephemeral loopback port.
ANY_METRICS_PORT = "127.0.0.1:0"

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


_handed_out: set[int] = set()
_handing_out = threading.Lock()
# (share, shares): this process hands out only the ports of its share.
_share = (0, 1)


def share_ports(share: int, shares: int) -> None:
    """Let this process hand out one of `shares` disjoint sets of ports, so that
    processes picking ports side by side (parallel test workers) never pick the same."""
    global _share
    if not 0 <= share < shares:
        raise ValueError(f"share {share} is not one of {shares}")
    _share = (share, shares)


def free_port() -> int:
    """A TCP port free right now, for a server that must restart on the same port.

    The kernel may offer a port it offered before while nobody has bound it
    yet, so a cluster picking its ports one by one could give two parts the
    same one: a port is never handed out twice by one process, nor one of
    another process's share (`share_ports`).
    """
    share, shares = _share
    with _handing_out:
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port: int = probe.getsockname()[1]
            # Halved first: the kernel offers bind(0) mostly ports of one parity.
            if port not in _handed_out and (port // 2) % shares == share:
                _handed_out.add(port)
                return port


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:
            for line in self.popen.stdout:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def found() -> re.Match[str] | None:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.output}")
            return None

        return eventually(found, timeout, f"{regex.pattern!r} from {self.name}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; fails when it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
                raise AssertionError(f"{self.name} ignored signal {sig}:\n{self.output}") from None
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


# Settings for a site that only runs the push server.
MINIMAL_SETTINGS = """\
SECRET_KEY = {secret!r}
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "pushserver",
]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}}
ROOT_URLCONF = __name__
urlpatterns = []
USE_TZ = True
"""


class Launcher:
    """Writes settings modules and starts processes; stops everything it started.

    Settings modules import `base` when given (a project's own settings),
    else they are a minimal site with only the push server installed.
    """

    def __init__(self, folder: Path, base: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.base = base
        self.processes: list[Process] = []

    def settings(self, push_server: dict[str, Any], **extra: Any) -> str:
        module = f"settings_{uuid.uuid4().hex[:12]}"
        if self.base is None:
            lines = [MINIMAL_SETTINGS.format(secret=uuid.uuid4().hex)]
        else:
            lines = [f"from {self.base} import *  # noqa: F403"]
        lines.append(f"PUSH_SERVER = {push_server!r}")
        lines += [f"{name} = {value!r}" for name, value in extra.items()]
        (self.folder / f"{module}.py").write_text("\n".join(lines) + "\n")
        return module

    def environment(self, module: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.folder), str(ROOT)])
        env["DJANGO_SETTINGS_MODULE"] = module
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def manage(self, module: str, *args: str) -> str:
        """Run a management command with the settings `module` and return its output."""
        result = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=self.folder,
            env=self.environment(module),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def start(self, name: str, push_server: dict[str, Any], *args: str, **extra: Any) -> Process:
        module = self.settings(push_server, **extra)
        return self.run(name, module, *args)

    def run(self, name: str, module: str, *args: str) -> Process:
        """Start `runpushserver` with an already written settings `module`."""
        command = [sys.executable, "-m", "django", "runpushserver", *args]
        return self.spawn(name, command, self.environment(module))

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Process:
        """Start any process (a balancer, a service unit's command) to be stopped with the rest."""
        popen = subprocess.Popen(
            command,
            cwd=self.folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        process = Process(name, popen)
        self.processes.append(process)
        return process

    def broker(self, **push_server: Any) -> tuple[Process, dict[str, str]]:
        """A broker on ephemeral ports, and its three endpoints; `metrics_url` has the fourth."""
        settings = {"broker": {**ANY_PORT, "metrics": ANY_METRICS_PORT}, **push_server}
        process = self.start("broker", settings, "--role=broker")
        match = process.wait_for(BROKER_LINE)
        return process, match.groupdict()

    def edge(self, endpoints: dict[str, str], **push_server: Any) -> tuple[Process, str]:
        settings = {"broker": dict(endpoints), **push_server}
        process = self.start("edge", settings, "--role=edge", "127.0.0.1:0")
        return process, process.wait_for(EDGE_LINE).group("url")

    def embedded(self, **push_server: Any) -> tuple[Process, str]:
        settings = {"broker": {**ANY_PORT, "metrics": ANY_METRICS_PORT}, **push_server}
        process = self.start("embedded", settings, "127.0.0.1:0")
        return process, process.wait_for(EDGE_LINE).group("url")

    @staticmethod
    def metrics_url(process: Process) -> str:
        """Where a broker (or an embedded server) started with metrics serves them."""
        return process.wait_for(METRICS_LINE).group("url")

    def stop_all(self) -> None:
        for process in self.processes:
            with contextlib.suppress(AssertionError):
                process.stop(timeout=5)
