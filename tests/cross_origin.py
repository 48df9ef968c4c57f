"""A page on one origin, an edge on another, and a record of what the browser sent the edge.

The page and its scripts come from `page_server`, a small HTTP server on a
port of its own, so every request the page makes to the edge is
cross-origin and goes through CORS as it would from a real site. Between
the browser and the edge stands `RequestRecorder`, a TCP relay that passes
bytes through untouched and writes down each request head, preflights
included, which no browser API reports.

`restartable_edge` is the fixture for a page whose edge goes away under it:
a broker, the edge the page follows on a port that stays the same across a
stop and a start, and a second edge of the same broker that publishes
while the first is down. A module that uses it defines `page_origin` and
imports the fixture by name.

The trap in the recorder: it finds requests by the blank line that ends a
head, so it understands only requests without a body, which is all a
browser sends to a subscriber location (GET polls, OPTIONS preflights and
WebSocket handshakes; after a handshake, the browser's frames are masked
and short, and do not hold a blank line).
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.client import path
from tests.processes import EDGE_LINE, ROOT, Launcher, Process, free_port

# `make test` installs the pinned npm packages here (the Makefile's npm-deps).
NPM_MODULES = ROOT / "tests" / "npm" / "node_modules"
COOKIE = "cross_origin_page=1"


def npm_file(relative: str) -> Path:
    """A file of an npm package the Makefile installed, e.g. `nchan/NchanSubscriber.js`."""
    found = NPM_MODULES / relative
    assert found.is_file(), f"no {found}: run `make test`, which installs the tests' npm packages"
    return found


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    # Names lower-cased; a repeated header keeps its last value.
    headers: dict[str, str]


def parse_head(head: bytes) -> SeenRequest:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return SeenRequest(method, target, headers)


class RequestRecorder:
    """Relays connections from `port` to the edge at `upstream` and records each request."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._requests: list[SeenRequest] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._accepting = threading.Thread(target=self._accept, name="recorder", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str | None = None) -> list[SeenRequest]:
        with self._lock:
            seen = list(self._requests)
        return [request for request in seen if method is None or request.method == method]

    def start(self) -> None:
        self._accepting.start()

    def stop(self) -> None:
        """Stop accepting and close every connection the relay holds."""
        self._stopped.set()
        self._accepting.join(timeout=5)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            try:
                edge = socket.create_connection(self.upstream)
            except OSError:
                client.close()  # the browser sees the edge refuse, as it would without us
                continue
            for sock in (client, edge):
                # Chunks are passed on as they come: without this, Nagle's
                # algorithm and delayed ACKs add tens of ms to every request.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, edge]
            threading.Thread(target=self._pump, args=(client, edge, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(edge, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if requests:
                    pending += chunk
                    while b"\r\n\r\n" in pending:
                        head, pending = pending.split(b"\r\n\r\n", 1)
                        with self._lock:
                            self._requests.append(parse_head(head))
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def recording(upstream: tuple[str, int]) -> Iterator[RequestRecorder]:
    recorder = RequestRecorder(upstream)
    recorder.start()
    try:
        yield recorder
    finally:
        recorder.stop()


@contextlib.contextmanager
def page_server(files: dict[str, tuple[str, bytes]]) -> Iterator[str]:
    """Serves `files` (path -> (content type, body)) on a port of its own, setting `COOKIE`;
    yields the server's origin.

    The cookie has no port in it, so the browser also sends it to the edge
    on the same host, with every request made with credentials.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = files.get(self.path)
            if found is None:
                self.send_error(404)
                return
            content_type, body = found
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Set-Cookie", f"{COOKIE}; Path=/; SameSite=Lax")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the tests' output is for the tests

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def edge_for_page(launcher: Launcher, origin: str, **push_server: Any) -> str:
    """An embedded broker and edge whose subscriber location `/updates/` admits pages at
    `origin` with credentials; returns the edge's base URL."""
    _, base = launcher.embedded(
        store={"type": "memory", "max_messages": 1000, "message_timeout": 600},
        locations=(
            {
                "type": "subscriber",
                "url": r"/updates/([^/]+)",
                "allow_origin": [origin],
                "allow_credentials": True,
            },
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
        **push_server,
    )
    return base


class RestartableEdge(NamedTuple):
    start: Callable[[], None]  # the followed edge, again on its port
    stop: Callable[[], None]  # the followed edge, by SIGTERM
    followed: str  # the base URL of the edge the page follows
    publishing: str  # the base URL of the edge that publishes throughout


@pytest.fixture
def restartable_edge(launcher: Launcher, page_origin: str) -> Iterator[RestartableEdge]:
    """A broker, an edge the page follows on a port of its own (stop and start it with the
    two callables), and a second edge that publishes throughout."""
    cross_origin = {"allow_origin": [page_origin], "allow_credentials": True}
    settings = {
        "store": {"type": "memory", "max_messages": 1000, "message_timeout": 600},
        "long_poll_timeout": 2,
        "locations": (
            {"type": "subscriber", "url": r"/updates/([^/]+)", **cross_origin},
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
    }
    _, endpoints = launcher.broker(**settings)
    _, publishing = launcher.edge(endpoints, **settings)
    port = free_port()
    followed: list[Process] = []

    def start() -> None:
        process = launcher.start(
            "edge", {"broker": dict(endpoints), **settings}, "--role=edge", f"127.0.0.1:{port}"
        )
        process.wait_for(EDGE_LINE)
        followed.append(process)

    def stop() -> None:
        followed.pop().stop()

    start()
    yield RestartableEdge(start, stop, f"http://127.0.0.1:{port}", publishing)


def publish_all(base: str, channel_id: str, bodies: list[str]) -> None:
    """Publish `bodies` in order over one connection (a fresh client per message costs ~30 ms)."""
    with httpx.Client(timeout=10) as client:
        for body in bodies:
            response = client.post(
                base + path("send-update", channel_id),
                content=body.encode(),
                headers={"Content-Type": "text/plain"},
            )
            assert response.status_code in (201, 202), response.text


def upstream(base: str) -> tuple[str, int]:
    host, _, port = base.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


def page_with_scripts(*scripts: str) -> tuple[str, bytes]:
    tags = "".join(f'<script src="{script}"></script>' for script in scripts)
    return "text/html; charset=utf-8", f'<!doctype html><meta charset="utf-8">{tags}'.encode()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, as `tests.browser` drives it."""
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()
