"""Flow control on the edge's connections: any number of pipelined requests answered
in order, one after another, and clients that pipeline without reading held to a
bounded amount of the edge's memory."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import pytest

from tests.client import fresh, path, publish
from tests.conftest import PROTOCOL_SETTINGS
from tests.processes import Launcher, Process, eventually, memory_kib
from tests.raw_http import (
    close_wait_sockets,
    connect,
    figures,
    get,
    open_connections,
    raw,
    read_response,
    reset_peak_memory,
)

Server = tuple[Process, str]

MESSAGE_SIZE = 1024 * 1024
HOARDERS = 3
PIPELINED = 100
# Generous: an answer in the transport's buffer and one being written, per connection.
MEMORY_BOUND_MIB = 64


def test_ten_thousand_pipelined_requests_on_one_connection_are_all_answered_in_order(
    server: Server,
) -> None:
    process, base = server
    channels = [fresh("pipelined") for _ in range(3)]
    for number, channel in enumerate(channels):
        publish(base, channel, f"message {number}")
    requests: list[bytes] = []
    expected: list[tuple[int, bytes]] = []
    for index in range(10_000):
        if index % 500 == 250:
            # A channel the edge does not follow yet: answered once the broker was asked.
            requests.append(get(path("poll", fresh("unfollowed"))))
            expected.append((304, b""))
        elif index % 1000 == 999:
            requests.append(get("/no-such-location"))
            expected.append((404, b"no push location here\n"))
        else:
            number = index % 3
            requests.append(get(path("updates", channels[number])))
            expected.append((200, f"message {number}".encode()))
    with raw(base) as (sock, stream):
        # Sent while the answers are read: an edge that reads on without bound would
        # not need that, one with flow control stops reading until answers are taken.
        sender = threading.Thread(target=sock.sendall, args=(b"".join(requests),))
        sender.start()
        answers = [read_response(stream)[::2] for _ in requests]
        sender.join()
    assert answers == expected
    assert "Traceback" not in process.output


@pytest.fixture
def lone(launcher: Launcher) -> Server:
    """An edge of its own, so its memory is only what the test does to it."""
    return launcher.embedded(**PROTOCOL_SETTINGS)


def test_clients_pipelining_big_answers_without_reading_hold_a_bounded_amount_of_memory(
    lone: Server,
) -> None:
    process, base = lone
    pid = process.popen.pid
    port = urlsplit(base).port
    assert port is not None
    channel = fresh("hoarded")
    message = b"m" * MESSAGE_SIZE
    publish(base, channel, message)
    with raw(base) as (sock, stream):
        sock.sendall(get(path("updates", channel)))
        assert read_response(stream)[2] == message
    idle = open_connections(base)
    answered_before = figures(base)[("pushserver_edge_responses_total", (("status", "200"),))]
    resident_before = memory_kib(pid, "VmRSS")
    reset_peak_memory(pid)

    hoarders = []
    for _ in range(HOARDERS):
        sock = socket.socket()
        # A small window, so the kernel does not take the answers in the client's stead.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(get(path("updates", channel)) * PIPELINED)
        hoarders.append((sock, sock.makefile("rb")))
    for _, stream in hoarders:
        assert stream.readline() == b"HTTP/1.1 200 OK\r\n"

    def answered() -> float:
        figure = figures(base)[("pushserver_edge_responses_total", (("status", "200"),))]
        return figure - answered_before

    eventually(lambda: answered() >= HOARDERS, 10, "an answer on every hoarding connection")
    peak = memory_kib(pid, "VmHWM")
    growth_mib = (peak - resident_before) / 1024
    print(
        f"edge RSS {resident_before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB "
        f"with {HOARDERS} clients each pipelining {PIPELINED} GETs of a "
        f"{MESSAGE_SIZE // 1024} KiB message unread: +{growth_mib:.1f} MiB; "
        f"{answered():.0f} of {HOARDERS * PIPELINED} answers written"
    )
    assert growth_mib < MEMORY_BOUND_MIB

    # Reading resumes the answers, in order and whole.
    first, first_stream = hoarders[0]
    first_stream.readline()
    while first_stream.readline() != b"\r\n":
        pass
    assert first_stream.read(MESSAGE_SIZE) == message
    for _ in range(PIPELINED - 1):
        status, _, body = read_response(first_stream)
        assert (status, body == message) == (200, True)

    for sock, stream in hoarders:
        stream.close()
        sock.close()
    eventually(lambda: open_connections(base) == idle, 10, "the hoarders' connections to close")
    eventually(lambda: close_wait_sockets(port) == 0, 10, "no connection left in CLOSE_WAIT")
    assert "Traceback" not in process.output


def test_connections_left_midway_through_a_pipeline_are_closed_by_the_edge(
    server: Server,
) -> None:
    process, base = server
    port = urlsplit(base).port
    assert port is not None
    idle = open_connections(base)
    for _ in range(3):
        sock, stream = connect(base)
        sock.sendall(get(path("poll", fresh("left"))) * 3000)
        # Past the 98th, where answering by recursion gave out; the rest is left unread.
        for _ in range(100):
            assert read_response(stream)[0] == 304
        stream.close()
        sock.close()
    eventually(lambda: open_connections(base) == idle, 10, "the left connections to close")
    eventually(lambda: close_wait_sockets(port) == 0, 10, "no connection left in CLOSE_WAIT")
    assert "Traceback" not in process.output
