"""The edge's HTTP/1.1 connections, spoken to byte by byte: pipelining, framing,
keep-alive rules and the refusals that come before any location."""

from __future__ import annotations

import socket
import struct
from typing import BinaryIO

import httpx
import pytest

from broker.throttled_log import LOG_LINES
from edge.connection import MALFORMED, header_lines
from edge.protocol import ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED
from tests.client import fresh, info, path, publish, wait_for_subscribers
from tests.conftest import PROTOCOL_SETTINGS
from tests.processes import Launcher, Process, eventually, free_port
from tests.raw_http import closed, connect, connection_events, get, raw, read_response

Server = tuple[Process, str]


def at_newest(headers: dict[str, str]) -> tuple[str, str]:
    """The validators of a poll that waits for the message after the one answered."""
    return (
        f"{IF_MODIFIED_SINCE}: {headers[LAST_MODIFIED.lower()]}",
        f"{IF_NONE_MATCH}: {headers[ETAG.lower()]}",
    )


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
        assert closed(stream)


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
        assert closed(stream)
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
        assert closed(stream)


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
        assert closed(stream)


def test_connection_close_is_honoured_after_the_answer(server: Server) -> None:
    _, base = server
    channel = fresh("close")
    publish(base, channel, "last words")
    with raw(base) as (sock, stream):
        sock.sendall(get(path("updates", channel), "Connection: close"))
        status, headers, body = read_response(stream)
        assert (status, body, headers["connection"]) == (200, b"last words", "close")
        assert closed(stream)


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


def test_an_upgrade_to_a_protocol_not_served_gets_an_ordinary_answer_and_the_connection_closes(
    server: Server,
) -> None:
    _, base = server
    channel = fresh("upgrade")
    publish(base, channel, "plain http")
    with raw(base) as (sock, stream):
        sock.sendall(
            get(path("updates", channel), "Connection: Upgrade", "Upgrade: h2c")
            # Not HTTP after the head: never read as a request.
            + get(path("updates", channel))
        )
        status, _, body = read_response(stream)
        assert (status, body) == (200, b"plain http")
        assert closed(stream)


def test_a_refused_websocket_handshake_is_answered_and_what_follows_its_head_is_never_read(
    server: Server,
) -> None:
    _, base = server
    with raw(base) as (sock, stream):
        sock.sendall(
            get(path("updates", fresh("no-key")), "Connection: Upgrade", "Upgrade: websocket")
            + get(path("updates", fresh("behind")))
        )
        status, _, body = read_response(stream)
        assert (status, body) == (400, b"Sec-WebSocket-Version is missing\n")
        assert closed(stream)


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
        assert closed(stream)


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
            assert closed(stream)
    finally:
        for sock, stream in held:
            stream.close()
            sock.close()
    again = eventually(lambda: admitted(base, channel), 5, "a place once the three left")
    again[1].close()
    again[0].close()


@pytest.fixture(scope="module")
def padded(module_launcher: Launcher) -> Server:
    """The protocol's edge with a passthrough location too; its Django is not there,
    which only costs a logged failure per poll."""
    passthrough = {
        "type": "subscriber",
        "url": r"/followed/([^/]+)",
        "passthrough": f"http://127.0.0.1:{free_port()}/passthrough",
    }
    locations = (*PROTOCOL_SETTINGS["locations"], passthrough)
    return module_launcher.embedded(**{**PROTOCOL_SETTINGS, "locations": locations})


# Optional whitespace after a value is not part of it (RFC 9110, section 5.5).
PADDING = " \t "


def padded_request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: edge{PADDING}"]
    lines += [header + PADDING for header in headers]
    lines.append(f"Content-Length: {len(body)}{PADDING}")
    return "\r\n".join([*lines, "", ""]).encode() + body


def test_trailing_whitespace_in_header_values_is_dropped_at_a_subscriber_location(
    padded: Server,
) -> None:
    process, base = padded
    channel = fresh("padded-poll")
    publish(base, channel, "padded")
    with raw(base) as (sock, stream):
        sock.sendall(
            padded_request("GET", path("private", channel), "Origin: http://allowed.example")
        )
        status, headers, body = read_response(stream)
    assert (status, body) == (200, b"padded")
    assert headers["access-control-allow-origin"] == "http://allowed.example"
    assert "Traceback" not in process.output


def test_trailing_whitespace_in_header_values_is_dropped_at_a_passthrough_location(
    padded: Server,
) -> None:
    process, base = padded
    channel = fresh("padded-passthrough")
    publish(base, channel, "passed")
    with raw(base) as (sock, stream):
        sock.sendall(padded_request("GET", path("followed", channel), "Origin: http://a.example"))
        status, _, body = read_response(stream)
    assert (status, body) == (200, b"passed")
    assert "Traceback" not in process.output


def test_trailing_whitespace_in_header_values_is_dropped_at_a_publisher_location(
    padded: Server,
) -> None:
    process, base = padded
    channel = fresh("padded-publish")
    with raw(base) as (sock, stream):
        sock.sendall(
            padded_request(
                "POST", path("send-update", channel), "Content-Type: text/html", body=b"<p>"
            )
        )
        assert read_response(stream)[0] == 202
        sock.sendall(get(path("updates", channel)))
        status, headers, body = read_response(stream)
    assert (status, headers["content-type"], body) == (200, "text/html", b"<p>")
    assert "Traceback" not in process.output


@pytest.mark.parametrize(
    ("target", "status", "body_part"),
    [("/pushserver/metrics", 200, b"pushserver_edge_"), ("/no-such", 404, b"no push location")],
    ids=["metrics", "unknown-path"],
)
def test_trailing_whitespace_in_header_values_is_dropped_on_other_paths(
    padded: Server, target: str, status: int, body_part: bytes
) -> None:
    process, base = padded
    with raw(base) as (sock, stream):
        sock.sendall(padded_request("GET", target, "Accept: text/plain", "X-Blank:"))
        answered, _, body = read_response(stream)
    assert answered == status
    assert body_part in body
    assert "Traceback" not in process.output


@pytest.mark.parametrize(
    ("location", "host_line", "reason"),
    [
        ("send-update", "Host: two words", "Invalid Host header"),
        ("no-such", "Host: two words", "Invalid Host header"),
        ("followed", "Host: a,b", "Multiple host headers"),
        ("send-update", "", "Missing Host header"),
    ],
    ids=["publisher", "unknown-path", "passthrough", "publisher-without-host"],
)
def test_a_request_the_application_cannot_read_gets_400_with_a_reason(
    padded: Server, location: str, host_line: str, reason: str
) -> None:
    process, base = padded
    request_line = f"GET {path(location, fresh('unreadable'))} HTTP/1.1"
    lines = [request_line, host_line] if host_line else [request_line]
    with raw(base) as (sock, stream):
        sock.sendall("\r\n".join([*lines, "", ""]).encode())
        status, headers, body = read_response(stream)
        assert status == 400
        assert headers["content-type"].startswith("text/plain")
        assert reason.encode() in body
        assert closed(stream)
    assert "Traceback" not in process.output


def test_what_is_logged_of_bad_requests_is_rate_limited_and_malformed_ones_are_counted(
    launcher: Launcher,
) -> None:
    process, base = launcher.embedded(**PROTOCOL_SETTINGS)
    before = connection_events(base).get(MALFORMED, 0)
    sent = LOG_LINES * 4
    with httpx.Client(timeout=10) as client:
        for _ in range(sent):
            with raw(base) as (sock, stream):
                sock.sendall(b"GET /updates/x HTTP/1.1\r\nHost: edge\r\nno colon here\r\n\r\n")
                assert read_response(stream)[0] == 400
            assert client.get(base + "/no-such-location").status_code == 404
    assert connection_events(base).get(MALFORMED, 0) - before == sent
    # Logged after all the others: once it is read, so are they.
    with raw(base) as (sock, stream):
        sock.sendall(get("/last", "X-Filler: " + "f" * 70_000))
        assert read_response(stream)[0] == 431
    process.wait_for("431 request head is larger")
    malformed = [line for line in process.lines if "400 malformed request" in line]
    assert len(malformed) == LOG_LINES, malformed
    not_found = [line for line in process.lines if "404 GET /no-such-location" in line]
    assert len(not_found) == LOG_LINES, not_found


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Note", "one\r\nSet-Cookie: forged")],
        [("Etag", "1"), ("X-Note", "bare\rreturn")],
        [("X-Note", "bare\nfeed"), ("Vary", "Accept")],
        [("X-Forged\r\nSet-Cookie", "x")],
    ],
)
def test_a_response_header_carrying_its_own_cr_or_lf_is_refused_never_written(
    headers: list[tuple[str, str]],
) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        header_lines(headers)


def test_response_headers_are_written_one_line_each_in_order() -> None:
    assert header_lines([]) == b""
    assert header_lines([("Etag", "7"), ("Vary", "Accept")]) == b"Etag: 7\r\nVary: Accept\r\n"
