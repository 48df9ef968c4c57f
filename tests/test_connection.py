"""The edge's HTTP/1.1 connections, spoken to byte by byte: pipelining, framing,
keep-alive rules and the refusals that come before any location."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from urllib.parse import urlsplit

import pytest

from edge.protocol import ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED
from tests.client import fresh, info, path, publish, wait_for_subscribers
from tests.conftest import PROTOCOL_SETTINGS
from tests.processes import Launcher, Process, eventually

Server = tuple[Process, str]
Response = tuple[int, dict[str, str], bytes]


def connect(base: str) -> tuple[socket.socket, BinaryIO]:
    address = urlsplit(base)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    return sock, sock.makefile("rb")


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


def closed(sock: socket.socket, stream: BinaryIO) -> bool:
    """True when the edge closed the connection (reading gives end of file or a reset)."""
    try:
        return stream.read(1) == b""
    except ConnectionResetError:
        return True


def at_newest(headers: dict[str, str]) -> tuple[str, str]:
    """The validators of a poll that waits for the message after the one answered."""
    return (
        f"{IF_MODIFIED_SINCE}: {headers[LAST_MODIFIED.lower()]}",
        f"{IF_NONE_MATCH}: {headers[ETAG.lower()]}",
    )


def get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: edge", *headers, "", ""]
    return "\r\n".join(lines).encode()


def test_pipelined_requests_are_answered_in_order_even_behind_a_held_poll(
    server: Server,
) -> None:
    _, base = server
    channel = fresh("pipelined")
    first = publish(base, channel, "one")
    assert first.status_code == 202
    with raw(base) as (sock, stream):
        sock.sendall(get(path("updates", channel)))
        status, headers, body = read_response(stream)
        assert (status, body) == (200, b"one")
        # A poll that waits, then three that could be answered at once, in one write.
        sock.sendall(
            get(path("updates", channel), *at_newest(headers))
            + get(path("updates", channel))
            + get("/no-such-location")
            + get(path("poll", channel), *at_newest(headers))
        )
        wait_for_subscribers(base, channel, 1)
        publish(base, channel, "two")
        answers = [read_response(stream) for _ in range(4)]
    assert [(status, body) for status, _, body in answers[:2]] == [(200, b"two"), (200, b"one")]
    assert answers[2][0] == 404
    assert answers[3][:1] + answers[3][2:] == (200, b"two")


def test_a_request_head_over_64_kib_gets_431_and_the_connection_closes(server: Server) -> None:
    _, base = server
    with raw(base) as (sock, stream):
        sock.sendall(get(path("updates", fresh("big-head")), "X-Filler: " + "f" * 70_000))
        status, headers, body = read_response(stream)
        assert status == 431
        assert b"64 KiB" in body
        assert headers["connection"] == "close"
        assert closed(sock, stream)


def test_a_malformed_request_gets_400_with_a_reason_and_the_connection_closes(
    server: Server,
) -> None:
    _, base = server
    with raw(base) as (sock, stream):
        sock.sendall(b"GET /updates/x HTTP/1.1\r\nHost: edge\r\nno colon here\r\n\r\n")
        status, headers, body = read_response(stream)
        assert status == 400
        assert headers["content-type"].startswith("text/plain")
        assert b"malformed request" in body
        assert closed(sock, stream)
    publish(base, fresh("after-400"), "the edge still serves")


def test_an_unknown_method_reaches_its_location_and_the_connection_closes(
    server: Server,
) -> None:
    _, base = server
    with raw(base) as (sock, stream):
        sock.sendall(b"BREW /send-update/pot HTTP/1.1\r\nHost: edge\r\nContent-Length: 3\r\n\r\n")
        status, headers, _ = read_response(stream)
        assert status == 405
        assert headers["allow"] == "GET, PUT, POST, DELETE"
        assert closed(sock, stream)


def test_http_1_0_keeps_the_connection_only_when_it_asks_to(server: Server) -> None:
    _, base = server
    channel = fresh("http10")
    publish(base, channel, "old client")
    request = f"GET {path('updates', channel)} HTTP/1.0\r\n"
    with raw(base) as (sock, stream):
        sock.sendall(request.encode() + b"Connection: keep-alive\r\n\r\n")
        status, headers, body = read_response(stream)
        assert (status, body, headers["connection"].lower()) == (200, b"old client", "keep-alive")
        sock.sendall(request.encode() + b"\r\n")
        status, headers, body = read_response(stream)
        assert (status, body) == (200, b"old client")
        assert "connection" not in headers
        assert closed(sock, stream)


def test_connection_close_is_honoured_after_the_answer(server: Server) -> None:
    _, base = server
    channel = fresh("close")
    publish(base, channel, "last words")
    with raw(base) as (sock, stream):
        sock.sendall(get(path("updates", channel), "Connection: close"))
        status, headers, body = read_response(stream)
        assert (status, body, headers["connection"]) == (200, b"last words", "close")
        assert closed(sock, stream)


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: Server) -> None:
    _, base = server
    channel = fresh("expect")
    body = b"sent after 100"
    with raw(base) as (sock, stream):
        sock.sendall(
            f"POST {path('send-update', channel)} HTTP/1.1\r\nHost: edge\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert stream.readline() == b"\r\n"
        sock.sendall(body)
        status, _, _ = read_response(stream)
        assert status == 202
        sock.sendall(get(path("updates", channel)))
        assert read_response(stream)[2] == body


def test_a_chunked_publish_and_a_pipelined_poll_behind_it_are_both_served(
    server: Server,
) -> None:
    _, base = server
    channel = fresh("chunked")
    with raw(base) as (sock, stream):
        sock.sendall(
            f"POST {path('send-update', channel)} HTTP/1.1\r\nHost: edge\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".encode()
            + get(path("updates", channel))
        )
        assert read_response(stream)[0] == 202
        assert read_response(stream)[2] == b"hello world"


@pytest.fixture(scope="module")
def patient(module_launcher: Launcher) -> Server:
    """An edge whose polls wait a minute, so only the client leaving ends one sooner."""
    return module_launcher.embedded(**{**PROTOCOL_SETTINGS, "long_poll_timeout": 60})


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_leaving_a_held_poll_is_noticed_at_once(patient: Server, how: str) -> None:
    _, base = patient
    channel = fresh("leaving")
    publish(base, channel, "x")
    with raw(base) as (sock, stream):
        sock.sendall(get(path("updates", channel)))
        _, headers, _ = read_response(stream)
        sock.sendall(get(path("updates", channel), *at_newest(headers)))
        wait_for_subscribers(base, channel, 1)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    eventually(lambda: (info(base, channel) or {}).get("subscribers") == 0, 10, "the poll to end")


def test_an_upgrade_request_gets_an_ordinary_answer_and_the_connection_closes(
    server: Server,
) -> None:
    _, base = server
    channel = fresh("upgrade")
    publish(base, channel, "plain http")
    with raw(base) as (sock, stream):
        sock.sendall(
            get(path("updates", channel), "Connection: Upgrade", "Upgrade: websocket")
            + b"\x81\x05hello"
        )
        status, _, body = read_response(stream)
        assert (status, body) == (200, b"plain http")
        assert closed(sock, stream)


def test_a_body_over_the_size_limit_gets_413_wherever_it_is_sent(server: Server) -> None:
    _, base = server
    limit = 2 * 1024 * 1024  # PROTOCOL_SETTINGS' max_message_size
    with raw(base) as (sock, stream):
        sock.sendall(
            f"POST {path('updates', fresh('big-body'))} HTTP/1.1\r\nHost: edge\r\n"
            f"Content-Length: {2 * limit}\r\n\r\n".encode()
        )
        # Just past the limit, so nothing unread is left when the edge closes.
        sock.sendall(b"b" * (limit + 100))
        status, headers, body = read_response(stream)
        assert status == 413
        assert b"too large" in body
        assert headers["connection"] == "close"
        assert closed(sock, stream)


@pytest.fixture(scope="module")
def small(module_launcher: Launcher) -> Server:
    """An edge that holds at most three connections."""
    return module_launcher.embedded(**{**PROTOCOL_SETTINGS, "max_connections": 3})


def admitted(base: str, channel: str) -> tuple[socket.socket, BinaryIO] | None:
    """A connection that was served a poll and stays open, or None if the edge closed it."""
    sock, stream = connect(base)
    sock.sendall(get(path("updates", channel)))
    try:
        if read_response(stream)[0] == 200:
            return sock, stream
    except (AssertionError, ConnectionResetError):
        pass  # closed unanswered
    stream.close()
    sock.close()
    return None


def test_connections_beyond_max_connections_are_closed_and_the_edge_keeps_serving(
    small: Server,
) -> None:
    _, base = small
    channel = fresh("crowded")
    publish(base, channel, "room for three")
    # Connections just closed may count for a moment: each is retried until served.
    held = [eventually(lambda: admitted(base, channel), 5, "a free place") for _ in range(3)]
    try:
        with raw(base) as (sock, stream):
            sock.sendall(get(path("updates", channel)))
            assert closed(sock, stream)
    finally:
        for sock, stream in held:
            stream.close()
            sock.close()
    again = eventually(lambda: admitted(base, channel), 5, "a place once the three left")
    again[1].close()
    again[0].close()
