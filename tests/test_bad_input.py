"""Bad input gets its documented 4xx with a reason, and the process keeps serving."""

from __future__ import annotations

import socket

import httpx
import pytest
import zmq

from broker.wire import MAX_CHANNEL_ID_BYTES, PublishPacker
from edge.protocol import IF_MODIFIED_SINCE, IF_NONE_MATCH, PUSH_SECRET
from tests.client import fresh, path, publish, walk
from tests.processes import BROKER_LINE, Process, eventually

Server = tuple[Process, str]


def still_serving(base: str) -> None:
    channel = fresh("alive")
    publish(base, channel, "still here")
    assert walk(base, channel, 1) == [b"still here"]


def assert_refused(response: httpx.Response, status: int, reason_part: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert reason_part in response.text


@pytest.mark.parametrize(
    "headers",
    [
        {IF_NONE_MATCH: "not-a-number"},
        {IF_NONE_MATCH: "12abc", IF_MODIFIED_SINCE: "Thu, 01 Jan 2026 00:00:00 GMT"},
        {IF_MODIFIED_SINCE: "yesterday"},
        {IF_MODIFIED_SINCE: "Thu, 99 Foo 2026 99:99:99 GMT"},
    ],
    ids=["tag-word", "tag-suffix", "date-word", "date-garbage"],
)
def test_malformed_validators_get_400_with_a_reason(
    server: Server, headers: dict[str, str]
) -> None:
    _, base = server
    channel = fresh("validators")
    publish(base, channel, "x")
    response = httpx.get(base + path("updates", channel), headers=headers)
    assert_refused(response, 400, next(iter(headers)))
    still_serving(base)


def test_overlong_channel_id_gets_400(server: Server) -> None:
    _, base = server
    channel = "c" * (MAX_CHANNEL_ID_BYTES + 1)
    assert_refused(httpx.get(base + path("updates", channel)), 400, "longer than")
    assert_refused(
        httpx.post(base + path("send-update", channel), content=b"x"), 400, "longer than"
    )
    # Exactly at the limit is fine; multi-byte characters count as bytes.
    at_limit = "c" * MAX_CHANNEL_ID_BYTES
    publish(base, at_limit, "fits")
    assert walk(base, at_limit, 1) == [b"fits"]
    assert_refused(httpx.get(base + path("updates", "é" * 513)), 400, "longer than")
    still_serving(base)


def test_channel_id_with_nul_or_invalid_utf8_gets_400(server: Server) -> None:
    _, base = server
    assert_refused(httpx.get(base + "/updates/a%00b"), 400, "NUL")
    assert_refused(httpx.get(base + "/updates/a%ffb"), 400, "UTF-8")
    still_serving(base)


def test_oversize_body_gets_413(server: Server) -> None:
    _, base = server
    limit = 2 * 1024 * 1024
    channel = fresh("oversize")
    response = httpx.post(base + path("send-update", channel), content=b"x" * (limit + 1))
    assert_refused(response, 413, "larger than")

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield b"y" * (limit // 2)

    chunked = httpx.post(base + path("send-update", channel), content=chunks())
    assert_refused(chunked, 413, "larger than")
    assert httpx.get(base + path("send-update", channel)).status_code == 404
    publish(base, channel, b"z" * limit)
    still_serving(base)


@pytest.mark.parametrize(
    ("location", "method", "allow"),
    [
        ("updates", "POST", "GET, OPTIONS"),
        ("updates", "BREW", "GET, OPTIONS"),
        ("send-update", "PATCH", "GET, PUT, POST, DELETE"),
        ("send-update", "BREW", "GET, PUT, POST, DELETE"),
    ],
)
def test_unknown_method_gets_405_with_allow(
    server: Server, location: str, method: str, allow: str
) -> None:
    _, base = server
    response = httpx.request(method, base + path(location, fresh("method")))
    assert_refused(response, 405, method)
    assert response.headers["Allow"] == allow
    still_serving(base)


def test_publisher_location_refuses_untrusted_callers_with_403(server: Server) -> None:
    _, base = server
    channel = fresh("guarded")
    url = base + path("guarded", channel)
    assert_refused(httpx.post(url, content=b"x"), 403, "not allowed")
    assert_refused(
        httpx.post(url, content=b"x", headers={PUSH_SECRET: "wrong"}), 403, "not allowed"
    )
    trusted = httpx.post(url, content=b"x", headers={PUSH_SECRET: "s3cret"})
    assert trusted.status_code == 202


def test_garbage_on_the_http_port_does_not_stop_the_server(server: Server) -> None:
    _, base = server
    host, port = base.removeprefix("http://").rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"\x00\xff NOT HTTP AT ALL\r\n\r\n")
        raw.recv(1024)
    still_serving(base)


def test_malformed_frames_on_the_broker_ingress_are_dropped_and_counted(server: Server) -> None:
    process, base = server
    ingress = process.wait_for(BROKER_LINE).group("ingress")
    context = zmq.Context()
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 1000)
        dealer.connect(ingress)
        dealer.send_multipart([b"garbage"])
        dealer.send_multipart([b"\x81\xa1v\x09", b"wrong version"])
        pack = PublishPacker()
        dealer.send(pack("", b"empty channel id", None, b"tester", 0, 0))
        channel = fresh("after-garbage")
        dealer.send(pack(channel, b"valid", "text/plain", b"tester", 0, 0))
        dealer.close()
    finally:
        context.term()
    assert walk(base, channel, 1) == [b"valid"]
    eventually(
        lambda: "dropped a malformed frame on ingress (3 so far)" in process.output,
        10,
        "the third malformed frame to be counted",
    )
    still_serving(base)
