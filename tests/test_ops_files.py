"""The deployment files under ops/, each exercised: the load-balancer configs are
checked by nginx and HAProxy themselves and then run in front of a real edge;
the systemd units' commands are run as systemd would run them, and stopped
with their own signal within their own stop timeout."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from wsproto.events import CloseConnection

from edge.config import EdgeConfig
from edge.websocket import SUBPROTOCOL
from tests.client import Cursor, fresh, hold, info, path, poll, publish
from tests.processes import (
    ANY_PORT,
    BROKER_LINE,
    EDGE_LINE,
    ROOT,
    Launcher,
    Process,
    eventually,
    free_port,
)
from tests.websocket_client import Socket

OPS = ROOT / "ops"
NGINX_CONF = OPS / "nginx" / "pushserver.conf"
HAPROXY_CFG = OPS / "haproxy" / "haproxy.cfg"
BROKER_UNIT = OPS / "systemd" / "pushserver-broker.service"
EDGE_UNIT = OPS / "systemd" / "pushserver-edge@.service"
STANDBY_UNIT = OPS / "systemd" / "pushserver-standby.service"
# The edges' default long-poll timeout: the balancers must wait longer.
LONG_POLL_TIMEOUT = EdgeConfig().long_poll_timeout
# Seconds between a stream's keep-alive comments (issue 12): silence the balancers must outwait.
STREAM_KEEP_ALIVE = 15.0
# Debian installs both into /usr/sbin, which a non-root PATH may lack.
SBIN = "/usr/sbin"


def program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=SBIN)
    if found is None:
        pytest.fail(f"{name} is not installed: `make system-deps` (or apt-get install {name})")
    return found


def seconds(value: str) -> float:
    """A duration as nginx, HAProxy and systemd write it: 60, 60s, 2m, 500ms."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?", value.strip())
    assert match, f"not a duration: {value!r}"
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}[unit]


def without_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0].rstrip() for line in text.splitlines())


# -- nginx ---------------------------------------------------------------------


def nginx_block(text: str, opening: str) -> str:
    """The body of the first `opening { ... }` block (braces balanced), comments removed."""
    text = without_comments(text)
    start = re.search(re.escape(opening) + r"\s*\{", text)
    assert start, f"no `{opening} {{` block"
    depth, index = 1, start.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        index += 1
    return text[start.end() : index - 1]


def nginx_map(text: str, variables: str) -> dict[str, str]:
    """The entries of `map <variables> { ... }`: source -> value."""
    body = nginx_block(text, f"map {variables}")
    return dict(line.strip().rstrip(";").split() for line in body.splitlines() if line.strip())


def nginx_for(edges: list[str], port: int) -> str:
    """The config as the cluster launcher rewrites it: its own listen port and edges."""
    text = NGINX_CONF.read_text()
    upstream = re.search(r"upstream pushserver_edges\s*\{.*?\n\s*\}", text, re.S)
    assert upstream
    servers = re.compile(r"^(\s*)server\s+\S+:\d+[^;]*;\n", re.M)
    indent = servers.search(upstream.group()).group(1)  # type: ignore[union-attr]
    lines = "".join(f"{indent}server {edge} max_fails=1 fail_timeout=5s;\n" for edge in edges)
    body = servers.sub("", upstream.group(), count=0)
    body = body.replace("{", "{\n" + lines, 1)
    text = text[: upstream.start()] + body + text[upstream.end() :]
    return re.sub(r"(^\s*listen\s+)\d+;", rf"\g<1>{port};", text, flags=re.M)


def nginx_command(config: Path, prefix: Path, *extra: str, directives: str = "") -> list[str]:
    """nginx as the launcher runs it: pid and error log given with -g (nginx takes one -g)."""
    directives = f"pid {prefix / 'nginx.pid'}; error_log stderr; {directives}".strip()
    return [program("nginx"), "-c", str(config), "-p", f"{prefix}/", "-g", directives, *extra]


def test_the_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    result = subprocess.run(
        nginx_command(NGINX_CONF, tmp_path, "-t"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_nginx_config_round_robins_unbuffered_polls_and_hides_publishing() -> None:
    text = NGINX_CONF.read_text()
    code = without_comments(text)
    # Left to the command line, so the launcher and systemd can set them.
    for directive in ("daemon", "pid", "error_log"):
        assert not re.search(rf"^\s*{directive}\s", code, re.M), directive
    assert len(re.findall(r"^\s*upstream\s", code, re.M)) == 1
    upstream = nginx_block(text, "upstream pushserver_edges")
    assert re.findall(r"^\s*server\s+127\.0\.0\.1:(\d+)\b[^;]*;", upstream, re.M) == [
        "8011",
        "8012",
        "8013",
    ]
    assert re.search(r"^\s*keepalive\s+\d+;", upstream, re.M)
    for sticky in ("ip_hash", "hash", "sticky", "least_conn"):
        assert not re.search(rf"^\s*{sticky}\b", upstream, re.M), sticky
    listens = re.findall(r"^\s*listen\s+([^;]*);", code, re.M)
    assert listens and all(re.fullmatch(r"\d+", listen) for listen in listens), listens

    updates = nginx_block(text, "location /updates/")
    directives = {
        line.split(None, 1)[0]: line.split(None, 1)[1].rstrip(";")
        for line in (raw.strip() for raw in updates.splitlines())
        if line and not line.startswith("proxy_set_header")
    }
    assert directives["proxy_pass"] == "http://pushserver_edges"
    assert directives["proxy_http_version"] == "1.1"
    assert directives["proxy_buffering"] == "off"
    assert directives["gzip"] == "off"
    assert seconds(directives["proxy_read_timeout"]) > 2 * LONG_POLL_TIMEOUT
    assert seconds(directives["proxy_read_timeout"]) > 3 * STREAM_KEEP_ALIVE
    assert seconds(directives["proxy_send_timeout"]) > 3 * STREAM_KEEP_ALIVE
    assert directives["proxy_request_buffering"] == directives["proxy_cache"] == "off"
    assert "non_idempotent" not in directives["proxy_next_upstream"]
    headers = dict(
        line.strip().rstrip(";").split(None, 2)[1:]
        for line in updates.splitlines()
        if line.strip().startswith("proxy_set_header")
    )
    # Empty (upstream keep-alive) but for a WebSocket handshake, which gets `upgrade`.
    assert headers["Connection"] == "$pushserver_connection"
    assert headers["Upgrade"] == "$http_upgrade"
    assert nginx_map(text, "$http_upgrade $pushserver_connection") == {
        "default": "upgrade",
        '""': '""',
    }
    assert headers["Cookie"] == "$http_cookie"
    assert headers["Origin"] == "$http_origin"
    # Written by nginx, never the browser's own: the edges trust what nginx sends.
    assert headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Host"] == headers["Host"] == "$http_host"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Real-IP"] == "$remote_addr"
    for cleared in ("Forwarded", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Ssl"):
        assert headers[cleared] == '""', cleared

    # The publisher, the metrics and the passthrough answer 404 before any location
    # is chosen (server level), whatever proxying the rest does.
    internal = nginx_map(text, "$uri $pushserver_internal")
    assert internal == {
        "default": "0",
        "~*^/send-update(/|$)": "1",
        "~*^/pushserver(/|$)": "1",
        "~*^/passthrough(/|$)": "1",
    }
    server = nginx_block(text, "server")
    first_location = server.index("location ")
    guard = nginx_block(server, "if ($pushserver_internal)")
    assert guard.split() == ["return", "404;"]
    assert server.index("if ($pushserver_internal)") < first_location


# -- HAProxy -------------------------------------------------------------------


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """Section header -> its lines, comments and blank lines removed."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in without_comments(text).splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(line.strip())
    return sections


def haproxy_for(edges: list[str], port: int) -> str:
    """The config as the cluster launcher rewrites it: its own bind port and edges."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"(^\s*bind\s+[^\s:]*:)\d+", rf"\g<1>{port}", text, flags=re.M)
    backend = text.index("backend pushserver_edges")
    head, tail = text[:backend], text[backend:]
    servers = re.compile(r"^\s*server\s+\S+\s+\S+:\d+.*\n", re.M)
    first = servers.search(tail)
    assert first
    lines = "".join(f"    server edge{n} {edge} check\n" for n, edge in enumerate(edges, 1))
    tail = tail[: first.start()] + lines + servers.sub("", tail[first.start() :])
    return head + tail


def test_the_haproxy_config_passes_haproxy_c(tmp_path: Path) -> None:
    result = subprocess.run(
        [program("haproxy"), "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_the_haproxy_config_round_robins_outwaits_polls_and_hides_publishing() -> None:
    sections = haproxy_sections(HAPROXY_CFG.read_text())
    assert not any(line.split()[0] == "daemon" for line in sections["global"])
    defaults = sections["defaults"]
    assert "mode http" in defaults
    # It would add its X-Forwarded-For beside the browser's; the frontend writes its own.
    assert not any("forwardfor" in line for lines in sections.values() for line in lines)
    assert not any(line.startswith("option http-server-close") for line in defaults)
    assert not any(line.startswith("compression") for lines in sections.values() for line in lines)
    timeouts = {
        line.split()[1]: seconds(line.split()[2]) for line in defaults if line.startswith("timeout")
    }
    for side in ("server", "client"):
        assert timeouts[side] > 2 * LONG_POLL_TIMEOUT, side
        assert timeouts[side] > 3 * STREAM_KEEP_ALIVE, side
    # An upgraded WebSocket is governed by this one alone.
    assert timeouts["tunnel"] >= timeouts["server"]

    frontends = [name for name in sections if name.startswith("frontend ")]
    assert len(frontends) == 1
    frontend = sections[frontends[0]]
    binds = [line for line in frontend if line.startswith("bind ")]
    assert binds == ["bind 127.0.0.1:8080"]
    # The browser's forwarding headers are removed before this proxy writes its own.
    rules = [line for line in frontend if line.startswith("http-request ")]
    removed = [
        rules.index(f"http-request del-header {name}")
        for name in ("Forwarded", "X-Real-IP", "X-Forwarded- -m beg")
    ]
    written = {
        line.split()[2]: line.split(None, 3)[3]
        for line in rules
        if line.startswith("http-request set-header ")
    }
    assert written["X-Forwarded-For"] == "%[src]"
    assert written["X-Real-IP"] == "%[src]"
    assert written["X-Forwarded-Host"].startswith("%[req.hdr(host)]")
    assert written["X-Forwarded-Proto"].startswith("http")
    first_written = min(n for n, line in enumerate(rules) if "set-header X-" in line)
    assert max(removed) < first_written
    # The publisher, the metrics and the passthrough are denied on the decoded path,
    # before any backend is chosen; dot segments are refused before that.
    acls = {line.split()[1]: line.split(None, 2)[2] for line in frontend if line.startswith("acl ")}
    assert acls["pushserver_internal"] == (
        "path,url_dec -m reg -i '^/+(send-update|pushserver|passthrough)(/|$)'"
    )
    assert acls["pushserver_dot_segment"] == r"path,url_dec -m reg '(^|/)\.\.?(/|$)'"
    denies = [line for line in rules if line.startswith("http-request deny")]
    assert denies == [
        "http-request deny deny_status 400 if pushserver_dot_segment",
        "http-request deny deny_status 404 if pushserver_internal",
    ]
    assert rules.index(denies[-1]) < min(
        n for n, line in enumerate(rules) if line.startswith("http-request return")
    )
    assert not any(
        line.startswith("use_backend") for line in frontend[: frontend.index(denies[-1])]
    )

    backend = sections["backend pushserver_edges"]
    assert "balance roundrobin" in backend
    for sticky in ("cookie", "stick", "hash-type"):
        assert not any(line.startswith(sticky) for line in backend), sticky
    servers = [line.split() for line in backend if line.startswith("server ")]
    assert [server[1:3] for server in servers] == [
        ["edge1", "127.0.0.1:8011"],
        ["edge2", "127.0.0.1:8012"],
        ["edge3", "127.0.0.1:8013"],
    ]


# -- both balancers in front of a real edge ------------------------------------


class Passthrough(http.server.ThreadingHTTPServer):
    """Stands in for Django's passthrough view: records what the edge forwarded."""

    daemon_threads = True

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], str]] = []
        super().__init__(("127.0.0.1", 0), PassthroughHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/passthrough"


class PassthroughHandler(http.server.BaseHTTPRequestHandler):
    server: Passthrough
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        length = int(self.headers.get("Content-Length") or 0)
        form = self.rfile.read(length).decode()
        self.server.calls.append((dict(self.headers.items()), form))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def passthrough() -> Iterator[Passthrough]:
    server = Passthrough()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_nginx(launcher: Launcher, edges: list[str], port: int) -> Process:
    prefix = launcher.folder / "nginx"
    prefix.mkdir()
    config = prefix / "pushserver.conf"
    config.write_text(nginx_for(edges, port))
    return launcher.spawn("nginx", nginx_command(config, prefix, directives="daemon off;"))


def start_haproxy(launcher: Launcher, edges: list[str], port: int) -> Process:
    config = launcher.folder / "haproxy.cfg"
    config.write_text(haproxy_for(edges, port))
    return launcher.spawn("haproxy", [program("haproxy"), "-db", "-f", str(config)])


BALANCERS: dict[str, Callable[[Launcher, list[str], int], Process]] = {
    "nginx": start_nginx,
    "haproxy": start_haproxy,
}

ORIGIN = "http://site.example"


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
def test_the_balancer_serves_polls_from_the_edges_and_refuses_to_publish(
    launcher: Launcher, passthrough: Passthrough, balancer: str
) -> None:
    _, edge = launcher.embedded(
        long_poll_timeout=2,
        locations=(
            {
                "type": "subscriber",
                "url": r"/updates/([^/]+)",
                "allow_origin": [ORIGIN],
                "allow_credentials": True,
                "passthrough": passthrough.url,
            },
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
    )
    edge_host = edge.removeprefix("http://").rstrip("/")
    # An edge that is down: polls sent its way must be retried on the live one.
    down = f"127.0.0.1:{free_port()}"
    port = free_port()
    process = BALANCERS[balancer](launcher, [edge_host, down], port)
    launcher.processes.append(process)
    eventually(lambda: accepts(port) or process.popen.poll() is not None, 20, f"{balancer}")
    assert process.popen.poll() is None, process.output
    front = f"http://127.0.0.1:{port}"

    channel = fresh(f"through-{balancer}")
    publish(edge, channel, b"first")
    browser = {
        "Origin": ORIGIN,
        "Cookie": "sessionid=abc123",
        "Accept-Encoding": "gzip, deflate",
        # What the browser claims about itself must not reach Django.
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Host": "evil.example",
        "X-Real-IP": "203.0.113.8",
    }
    with httpx.Client(timeout=30) as client:
        direct = poll(client, edge, channel)
        # Round robin over a live and a dead edge: every poll is answered.
        for _ in range(4):
            response = poll(client, front, channel, headers=browser)
            assert response.status_code == 200, (response.status_code, process.output)
            assert response.content == b"first"
            # The validators pass untouched: no gzip, no weakened Etag.
            assert response.headers["Etag"] == direct.headers["Etag"]
            assert response.headers["Last-Modified"] == direct.headers["Last-Modified"]
            assert "Content-Encoding" not in response.headers
            assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        cursor = Cursor().advanced(response)

        # A held poll is answered through the balancer as soon as a message comes.
        held = hold(client, front, channel, cursor, headers=browser, counted_by=edge)
        started = time.monotonic()
        publish(edge, channel, b"second")
        response = held.result(10)
        assert response.status_code == 200 and response.content == b"second"
        assert time.monotonic() - started < 2
        # Nothing newer: the edge's 304 at long_poll_timeout, validators echoed.
        cursor = cursor.advanced(response)
        response = poll(client, front, channel, cursor, headers=browser)
        assert response.status_code == 304
        assert response.headers["Etag"] == cursor.etag

        # The publisher location and the metrics are not reachable from outside.
        for method, where in (
            ("POST", path("send-update", channel)),
            ("PUT", path("send-update", fresh("created"))),
            ("DELETE", path("send-update", channel)),
            ("GET", path("send-update", channel)),
            ("GET", "/pushserver/metrics"),
        ):
            refused = client.request(method, front + where, content=b"forged")
            assert refused.status_code in (403, 404), (method, where, refused.status_code)
        assert (info(edge, channel) or {}).get("messages") == 2

    # The edge told "Django" of the subscriber with the browser's cookie and address.
    # (The first poll, straight to the edge, was a subscriber too; it sent no cookie.)
    def through_balancer() -> list[tuple[dict[str, str], str]]:
        calls = [({k.lower(): v for k, v in h.items()}, form) for h, form in passthrough.calls]
        return [call for call in calls if "cookie" in call[0]]

    headers, form = eventually(through_balancer, 10, "a passthrough call")[0]
    assert "subscribe=1" in form
    assert headers["cookie"] == "sessionid=abc123"
    # The balancer's own view of the browser, then the edge's of the balancer.
    hops = [hop.strip() for hop in headers["x-forwarded-for"].split(",")]
    assert hops == ["127.0.0.1", "127.0.0.1"], hops
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{port}"
    assert process.stop(signal.SIGTERM, 10) is not None


# -- streams and WebSockets through both balancers ------------------------------


class StreamingUpstream(threading.Thread):
    """Stands in for an edge serving a stream and a WebSocket (those edges are written
    elsewhere): an event stream whose second event waits for the test's word, and a
    WebSocket handshake answered 101, then every byte echoed. Records each request head."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.heads: list[str] = []
        self.go_on = threading.Event()
        self.stopping = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def run(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return  # a health check's bare connection
                    head += chunk
            except OSError:
                return
            text = head.decode("latin-1")
            self.heads.append(text)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in text.split("\r\n")[1:])
            }
            if headers.get("upgrade", "").lower() == "websocket":
                self.tunnel(conn, headers["sec-websocket-key"])
            else:
                self.stream(conn)

    def stream(self, conn: socket.socket) -> None:
        def chunk(data: bytes) -> bytes:
            return b"%x\r\n%s\r\n" % (len(data), data)

        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk(b"id: 1:0\ndata: one\n\n")
        )
        if self.go_on.wait(20):
            conn.sendall(chunk(b"id: 1:1\ndata: two\n\n") + b"0\r\n\r\n")

    def tunnel(self, conn: socket.socket, key: str) -> None:
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        )
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def stop(self) -> None:
        self.stopping = True
        self.go_on.set()
        self.listener.close()


@pytest.fixture
def upstream() -> Iterator[StreamingUpstream]:
    server = StreamingUpstream()
    server.start()
    yield server
    server.stop()


def read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    while marker not in received:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {marker!r}: {received!r}"
        received += chunk
    return received


def start_balancer(launcher: Launcher, balancer: str, edges: list[str]) -> str:
    port = free_port()
    process = BALANCERS[balancer](launcher, edges, port)
    launcher.processes.append(process)
    eventually(lambda: accepts(port) or process.popen.poll() is not None, 20, balancer)
    assert process.popen.poll() is None, process.output
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
def test_the_balancer_hands_on_each_event_of_a_stream_as_it_comes(
    launcher: Launcher, upstream: StreamingUpstream, balancer: str
) -> None:
    front = start_balancer(launcher, balancer, [upstream.address])
    host, port = front.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /updates/news HTTP/1.1\r\nHost: {front}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        # The first event arrives while the upstream holds back the second: nothing
        # waits in a buffer for more.
        first = read_until(sock, b"data: one\n\n", 5)
        assert b"data: two" not in first
        upstream.go_on.set()
        read_until(sock, b"data: two\n\n", 5)
    (head,) = upstream.heads
    assert head.startswith("GET /updates/news HTTP/1.1\r\n")


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
def test_the_balancer_passes_a_websocket_upgrade_and_then_every_byte(
    launcher: Launcher, upstream: StreamingUpstream, balancer: str
) -> None:
    front = start_balancer(launcher, balancer, [upstream.address])
    host, port = front.split(":")
    key = base64.b64encode(b"0123456789abcdef").decode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /updates/news HTTP/1.1\r\nHost: {front}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nOrigin: http://site.example\r\n\r\n".encode()
        )
        answer = read_until(sock, b"\r\n\r\n", 5)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        # What follows is no longer HTTP: bytes both ways, as the edge sends them.
        sock.sendall(b"\x81\x05hello")
        assert read_until(sock, b"hello", 5).endswith(b"\x81\x05hello")
    (head,) = upstream.heads
    headers = {
        name.strip().lower(): value.strip().lower()
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:] if line)
    }
    assert head.startswith("GET /updates/news HTTP/1.1\r\n")
    assert headers["upgrade"] == "websocket"
    assert "upgrade" in headers["connection"]
    assert headers["sec-websocket-key"] == key.lower()


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
def test_a_websocket_through_the_balancer_reaches_a_real_edge_both_ways(
    launcher: Launcher, balancer: str
) -> None:
    _, edge = launcher.embedded(
        locations=(
            {
                "type": "subscriber",
                "url": r"/updates/([^/]+)",
                "allow_origin": [ORIGIN],
                "stream_keepalive": 0.3,
            },
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
    )
    front = "http://" + start_balancer(
        launcher, balancer, [edge.removeprefix("http://").rstrip("/")]
    )
    channel = fresh(f"socket-{balancer}")
    publish(edge, channel, "held")
    with Socket(front, path("updates", channel), [("Origin", ORIGIN)]) as ws:
        assert (ws.status, ws.subprotocol) == (101, SUBPROTOCOL)
        assert [m.body for m in ws.messages_of(1)] == [b"held"]
        publish(edge, channel, bytes(range(256)), "application/octet-stream")
        binary = ws.messages_of(2)[1]
        assert (binary.body, binary.text) == (bytes(range(256)), False)
        assert binary.meta[0]["content-type"] == "application/octet-stream"
        # The edge's pings come through and the answers go back: the socket stays.
        ws.read_some(1.2)
        assert ws.pings >= 2 and not ws.ended
        ws.send(CloseConnection(1000))
        assert ws.until_closed() == 1000


# -- systemd units -------------------------------------------------------------


def unit(file: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections of keys, each key possibly repeated."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in file.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service_command(service: dict[str, list[str]], instance: str) -> list[str]:
    """ExecStart as a test runs it: this Python, `-m django` for manage.py, %i filled in."""
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start.replace("%i", instance))
    assert argv[0].endswith("/bin/python"), argv
    assert argv[1].endswith("/manage.py"), argv
    return [sys.executable, "-m", "django", *argv[2:]]


def run_service(
    launcher: Launcher, file: Path, instance: str, push_server: dict[str, Any]
) -> Process:
    service = unit(file)["Service"]
    module = launcher.settings(push_server)
    env = launcher.environment(module)
    for assignment in service.get("Environment", []):
        name, _, value = assignment.partition("=")
        if name != "DJANGO_SETTINGS_MODULE":
            env[name] = value
    return launcher.spawn(file.name, service_command(service, instance), env)


def stop_as_systemd(process: Process, file: Path) -> float:
    """Stop with the unit's KillSignal; fails unless the process exits within TimeoutStopSec."""
    service = unit(file)["Service"]
    (kill_signal,) = service["KillSignal"]
    (timeout,) = service["TimeoutStopSec"]
    started = time.monotonic()
    assert process.stop(signal.Signals[kill_signal], seconds(timeout)) == 0, process.output
    return time.monotonic() - started


@pytest.mark.parametrize("file", [BROKER_UNIT, STANDBY_UNIT, EDGE_UNIT], ids=lambda file: file.name)
def test_the_units_declare_what_a_deployment_needs(file: Path) -> None:
    sections = unit(file)
    service = sections["Service"]
    assert "network.target" in " ".join(sections["Unit"]["After"])
    assert service["Restart"][0] in ("always", "on-failure")
    assert seconds(service["RestartSec"][0]) > 0
    assert service["KillSignal"] == ["SIGTERM"]
    # The graceful stop takes a few seconds (runner.STOP_GRACE is 5).
    assert seconds(service["TimeoutStopSec"][0]) >= 10
    assert service["LimitNOFILE"] == ["65536"]
    assert service["User"] and service["Group"]
    assert any(env.startswith("DJANGO_SETTINGS_MODULE=") for env in service["Environment"])
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    if "--role=broker" in service["ExecStart"][0]:
        # SIGHUP reads the allow-lists again; any other signal would stop a broker.
        assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def reload_as_systemd(process: Process, file: Path) -> None:
    """Send what the unit's ExecReload sends (`kill -SIG $MAINPID`)."""
    (exec_reload,) = unit(file)["Service"]["ExecReload"]
    kill, option, target = shlex.split(exec_reload)
    assert kill.endswith("/kill") and target == "$MAINPID", exec_reload
    process.popen.send_signal(signal.Signals["SIG" + option.lstrip("-")])


def test_the_broker_unit_runs_the_broker_reloads_and_stops_on_its_kill_signal(
    launcher: Launcher,
) -> None:
    process = run_service(launcher, BROKER_UNIT, "", {"broker": dict(ANY_PORT)})
    endpoints = process.wait_for(BROKER_LINE).groupdict()
    assert all(endpoint.startswith("tcp://127.0.0.1:") for endpoint in endpoints.values())
    # Without CURVE there is nothing to read again: said, and the broker serves on.
    reload_as_systemd(process, BROKER_UNIT)
    process.wait_for("CURVE is off")
    assert process.popen.poll() is None
    assert stop_as_systemd(process, BROKER_UNIT) < 10


def test_the_edge_unit_serves_its_instance_port_and_stops_gracefully(
    launcher: Launcher,
) -> None:
    assert "127.0.0.1:%i" in unit(EDGE_UNIT)["Service"]["ExecStart"][0]
    _, endpoints = launcher.broker()
    port = free_port()
    process = run_service(
        launcher, EDGE_UNIT, str(port), {"broker": endpoints, "long_poll_timeout": 60}
    )
    url = process.wait_for(EDGE_LINE).group("url")
    assert url == f"http://127.0.0.1:{port}"
    channel = fresh("unit")
    publish(url, channel, b"hello")
    with httpx.Client(timeout=30) as client:
        response = poll(client, url, channel)
        assert response.status_code == 200 and response.content == b"hello"
        # A poll held when systemd stops the edge is answered 304 at once.
        cursor = Cursor().advanced(response)
        held = hold(client, url, channel, cursor)
        took = stop_as_systemd(process, EDGE_UNIT)
        answer = held.result(5)
    assert answer.status_code == 304
    assert answer.headers["Etag"] == cursor.etag
    assert took < 10
