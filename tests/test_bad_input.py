"""Bad input gets its documented 4xx with a reason, and the process keeps serving."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
import zmq

from broker.throttled_log import LOG_LINES
from broker.wire import (
    MAX_CHANNEL_ID_BYTES,
    ChannelInfo,
    Published,
    PublishPacker,
    decode_publish,
    encode_published,
)
from edge.protocol import IF_MODIFIED_SINCE, IF_NONE_MATCH, PUSH_SECRET
from tests.brokers import broker_figures
from tests.client import fresh, path, publish, walk
from tests.processes import BROKER_LINE, Launcher, Process, eventually
from tests.raw_http import figures


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
def test_malformed_validators_get_400_with_a_reason(base: str, headers: dict[str, str]) -> None:
    channel = fresh("validators")
    publish(base, channel, "x")
    response = httpx.get(base + path("updates", channel), headers=headers)
    assert_refused(response, 400, next(iter(headers)))
    still_serving(base)


def test_a_channel_id_over_1024_bytes_of_utf8_gets_400_on_either_location(base: str) -> None:
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


def test_a_channel_id_with_nul_or_invalid_utf8_gets_400(base: str) -> None:
    assert_refused(httpx.get(base + "/updates/a%00b"), 400, "NUL")
    assert_refused(httpx.get(base + "/updates/a%ffb"), 400, "UTF-8")
    still_serving(base)


def test_a_body_over_max_message_size_gets_413_sized_or_chunked(base: str) -> None:
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
def test_a_method_the_location_does_not_serve_gets_405_naming_those_it_does(
    base: str, location: str, method: str, allow: str
) -> None:
    response = httpx.request(method, base + path(location, fresh("method")))
    assert_refused(response, 405, method)
    assert response.headers["Allow"] == allow
    still_serving(base)


def test_the_publisher_location_refuses_callers_without_address_or_secret_with_403(
    base: str,
) -> None:
    channel = fresh("guarded")
    url = base + path("guarded", channel)
    assert_refused(httpx.post(url, content=b"x"), 403, "not allowed")
    assert_refused(
        httpx.post(url, content=b"x", headers={PUSH_SECRET: "wrong"}), 403, "not allowed"
    )
    trusted = httpx.post(url, content=b"x", headers={PUSH_SECRET: "s3cret"})
    assert trusted.status_code == 202


def test_bytes_that_are_not_http_get_400_and_a_closed_connection(base: str) -> None:
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=5) as raw:
        raw.sendall(b"\x00\xff NOT HTTP AT ALL\r\n\r\n")
        # Read to the end: a connection the edge left open fails on the timeout.
        answer = b"".join(iter(lambda: raw.recv(4096), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    assert status_line == "HTTP/1.1 400 Bad Request", answer
    assert "Content-Type: text/plain; charset=utf-8" in header_lines
    assert "Connection: close" in header_lines
    assert f"Content-Length: {len(body)}" in header_lines
    assert body.startswith(b"malformed request"), body
    still_serving(base)


def test_malformed_frames_on_the_broker_ingress_are_dropped_and_counted(
    server: tuple[Process, str],
) -> None:
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
    metrics = Launcher.metrics_url(process)
    eventually(
        lambda: broker_figures(metrics)["ingress_malformed"] == 3,
        10,
        "the third malformed frame to be counted",
    )
    assert "dropped a malformed frame on ingress (1 so far)" in process.output
    still_serving(base)


def test_malformed_answers_on_the_edges_ingress_link_are_counted_and_told_a_few_times(
    launcher: Launcher, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Something at the ingress address that is not this version's broker: the edge drops
    what it cannot read, counts it, logs it a few times a minute, and still takes the
    answer that follows."""
    _, endpoints = launcher.broker()
    stand_in = context.socket(zmq.ROUTER)
    stand_in.setsockopt(zmq.LINGER, 0)
    try:
        ingress = f"tcp://127.0.0.1:{stand_in.bind_to_random_port('tcp://127.0.0.1')}"
        edge, base = launcher.edge({**endpoints, "ingress": ingress})
        bad = 4 * LOG_LINES
        with ThreadPoolExecutor(1) as pool:
            posted = pool.submit(publish, base, fresh("garbled-answers"), "answered at last")
            assert stand_in.poll(10_000), "the publish never reached the stand-in"
            route, *frames = stand_in.recv_multipart()
            sent = decode_publish(frames)
            for _ in range(bad):
                stand_in.send_multipart([route, b"not an answer"])
            info = ChannelInfo(messages=1, requested=None, subscribers=0, last=None)
            answer = encode_published(Published(sent.publisher, sent.seq, info))
            stand_in.send_multipart([route, *answer])
            assert posted.result(timeout=10).status_code == 202
    finally:
        stand_in.close()
    malformed = ("pushserver_edge_feed_events_total", (("event", "answers_malformed"),))
    assert figures(base)[malformed] == bad
    told = [line for line in edge.lines if "ignored a malformed answer" in line]
    assert len(told) == LOG_LINES, told
