from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import httpx
import pytest
import zmq

from broker.curve import create_key_files
from ops import launch
from tests.brokers import ThreadBroker
from tests.clock import Clock
from tests.processes import Launcher, Process


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_settings")
    django.setup()
    # Parallel workers (pytest-xdist) pick ports side by side: each from its own share.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None:
        launch.share_ports(
            int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        )


@pytest.fixture
def clock() -> Clock:
    """Half a second into the Unix second 1,000, until the test moves it."""
    return Clock(1_000.5)


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context whose sockets are all closed, without linger, after the test."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ThreadBroker]:
    """The real broker in a thread, keeping a history file, so a restart keeps what it
    sequenced and which numbers each publisher sent."""
    started = ThreadBroker(tmp_path / "history")
    started.start()
    yield started
    started.stop()


@pytest.fixture
def forgetful() -> Iterator[ThreadBroker]:
    """The real broker in a thread without a history file: restarted, it knows no publisher."""
    started = ThreadBroker()
    started.start()
    yield started
    started.stop()


@pytest.fixture(params=[False, True], ids=["open", "curve"])
def links(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """PUSH_SERVER keys for a test that runs both ways: none (open ZeroMQ links), or
    CURVE on every link with keys made for the test (every part holds them all)."""
    if not request.param:
        return {}
    layout, _ = create_key_files(tmp_path / "keys")
    return {"curve": layout.setting()}


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    started = Launcher(tmp_path_factory.mktemp("processes"))
    yield started
    started.stop_all()


# One server for the protocol tests: a location of each kind the protocol has.
PROTOCOL_SETTINGS = {
    "store": {"type": "memory", "min_messages": 0, "max_messages": 10, "message_timeout": 60},
    "long_poll_timeout": 2,
    "max_message_size": 2 * 1024 * 1024,
    "locations": (
        {"type": "subscriber", "url": r"/updates/([^/]+)", "polling": "long"},
        {
            "type": "subscriber",
            "url": r"/private/([^/]+)",
            "allow_origin": ["http://allowed.example", "http://other.example"],
            "allow_credentials": True,
        },
        {"type": "subscriber", "url": r"/poll/([^/]+)", "polling": "interval"},
        {"type": "subscriber", "url": r"/strict/([^/]+)", "create_on_get": False},
        {"type": "subscriber", "url": r"/named/(?P<channel>[^/]+)"},
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
        {
            "type": "publisher",
            "url": r"/guarded/([^/]+)",
            "allow_from": ["192.0.2.0/24"],
            "secret": "s3cret",
        },
    ),
}


@pytest.fixture(scope="module")
def server(module_launcher: Launcher) -> tuple[Process, str]:
    """An embedded broker and edge speaking the protocol, and the edge's base URL."""
    return module_launcher.embedded(**PROTOCOL_SETTINGS)


@pytest.fixture(scope="module")
def base(server: tuple[Process, str]) -> str:
    """The base URL of that server's edge, for tests that need nothing else of it."""
    return server[1]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """One keep-alive connection to poll with, as a browser would."""
    with httpx.Client(timeout=30) as session:
        yield session


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes a test starts (with pipes); each is killed and reaped after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
