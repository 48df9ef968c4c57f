"""HTTP/1.1 spoken byte by byte to an edge: requests written as they go on the wire,
responses read one at a time, and the edge's own figures (metrics, memory, sockets)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self
from urllib.parse import urlsplit

import httpx

from tests.test_metrics import samples

Response = tuple[int, dict[str, str], bytes]


def connect(base: str) -> tuple[socket.socket, BinaryIO]:
    address = urlsplit(base)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    return sock, sock.makefile("rb")


def open_socket(base: str, timeout: float = 10, receive_buffer: int | None = None) -> socket.socket:
    """A TCP socket connected to the edge at `base`, its receive buffer `receive_buffer`
    bytes if given."""
    address = urlsplit(base)
    assert address.hostname is not None and address.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if receive_buffer is not None:
        # Before connecting, so the window the edge is offered is this small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((address.hostname, address.port))
    return sock


class RawClient:
    """A test client on one raw socket, `sock`, closed when its `with` block ends."""

    sock: socket.socket

    def receive(self, timeout: float) -> bytes | None:
        """What arrives within `timeout` seconds: None if nothing did, b"" once the edge
        closed (or reset) the connection."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def raw(base: str) -> Iterator[tuple[socket.socket, BinaryIO]]:
    sock, stream = connect(base)
    try:
        yield sock, stream
    finally:
        stream.close()
        sock.close()


def read_response(stream: BinaryIO) -> Response:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int(stream.readline().strip(), 16):
            body += stream.read(size)
            stream.readline()
        stream.readline()
    return status, headers, body


def closed(stream: BinaryIO) -> bool:
    """True when the edge closed the connection (reading gives end of file or a reset)."""
    try:
        return stream.read(1) == b""
    except ConnectionResetError:
        return True


def get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: edge", *headers, "", ""]
    return "\r\n".join(lines).encode()


def figures(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The edge's metrics, each sample by name and labels."""
    response = httpx.get(base + "/pushserver/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text)


def connection_events(base: str) -> dict[str, float]:
    return {
        dict(labels)["event"]: value
        for (name, labels), value in figures(base).items()
        if name == "pushserver_edge_connection_events_total"
    }


def open_connections(base: str) -> float:
    """The edge's connections gauge; the request that reads it is one of them."""
    return figures(base)[("pushserver_edge_connections", ())]


def reset_peak_memory(pid: int) -> None:
    """Start VmHWM again from the resident size now (Linux's clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def close_wait_sockets(port: int) -> int:
    """Sockets on `port` the peer has closed and this host has not (TCP state CLOSE_WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "08":
                count += 1
    return count
