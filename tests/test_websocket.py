"""WebSockets on the subscriber locations of real edges: handshake, frames, resume, health.

The clients are wsproto's client side on raw sockets (`tests.websocket_client`),
and the edges real processes behind a real broker. NchanSubscriber's
websocket mode, in headless Chromium, is in tests/test_nchan_client.py
beside its other two modes. What the frames hold byte for byte is judged
without sockets in tests/test_websocket_protocol.py; here, that the edges
send them to whom and when they should.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import httpx
import pytest
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from broker.wire import DELETED_EVENT, MISSED_EVENT, NOTICE_TYPE
from edge.signing import TOKEN_INVALID, sign
from edge.websocket import (
    CHANNEL_DELETED,
    GOING_AWAY,
    MAX_INCOMING,
    MESSAGE_TOO_BIG,
    SUBPROTOCOL,
    TRY_AGAIN_LATER,
)
from tests.client import fresh, path, publish
from tests.following import (
    SLOW_HELD,
    big_bodies,
    follower_figures,
    memory_bound,
    poll_id,
    publish_until,
    report_stalled,
    several,
    stalled_edge,
)
from tests.processes import Launcher, Process, eventually, memory_kib
from tests.raw_http import figures
from tests.test_eventsource import session_cookie
from tests.test_eventsource import site as site  # the Django site, as the streams' tests have it
from tests.test_passthrough import Site
from tests.websocket_client import Received, Socket

SECRET = "the-websocket-tests-signing-secret-of-some-length"
HELD = 10
KEEPALIVE = 0.3
SETTINGS = {
    "store": {"type": "memory", "min_messages": 0, "max_messages": HELD, "message_timeout": 60},
    "signed_url_secrets": [SECRET],
    "locations": (
        {"type": "subscriber", "url": r"/updates/([^/]+)"},
        {"type": "subscriber", "url": r"/strict/([^/]+)", "create_on_get": False},
        {"type": "subscriber", "url": r"/alive/([^/]+)", "stream_keepalive": KEEPALIVE},
        {
            "type": "subscriber",
            "url": r"/private/([^/]+)",
            "allow_origin": ["http://allowed.example"],
        },
        {"type": "subscriber", "url": r"/signed/([^/]+)", "signed": True},
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    ),
}


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher) -> tuple[Process, str]:
    return module_launcher.embedded(**SETTINGS)


@pytest.fixture(scope="module")
def base(edge: tuple[Process, str]) -> str:
    return edge[1]


def socket_figures(base: str) -> dict[str, float]:
    found = figures(base)
    return {
        **follower_figures(
            found, "pushserver_edge_websockets", "pushserver_edge_websockets_closed_total"
        ),
        "ignored": found[("pushserver_edge_websocket_messages_ignored_total", ())],
    }


def bodies(messages: list[Received]) -> list[bytes]:
    return [message.body for message in messages]


# -- the handshake -------------------------------------------------------------------


def test_a_handshake_on_a_subscriber_location_is_answered_101_with_ws_meta_nchan(
    base: str,
) -> None:
    with Socket(base, path("updates", fresh("hello"))) as ws:
        assert ws.status == 101
        assert ws.subprotocol == SUBPROTOCOL


def test_a_handshake_without_a_subprotocol_gets_none(base: str) -> None:
    with Socket(base, path("updates", fresh("plain")), subprotocols=[]) as ws:
        assert ws.status == 101
        assert ws.subprotocol is None


def test_an_origin_neither_listed_nor_the_edges_own_is_refused_403_before_the_upgrade(
    base: str,
) -> None:
    with Socket(
        base, path("private", fresh("refused")), [("Origin", "http://elsewhere.example")]
    ) as ws:
        assert ws.status == 403
        assert ws.body.decode().strip() == "origin not allowed"
    with Socket(
        base, path("private", fresh("listed")), [("Origin", "http://allowed.example")]
    ) as ws:
        assert ws.status == 101


def raw_handshake(base: str, target: str, *lines: str) -> bytes:
    """What the edge answers a hand-written handshake, read to its end."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(base)
    assert address.hostname is not None and address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        head = "\r\n".join((f"GET {target} HTTP/1.1", f"Host: {address.netloc}", *lines))
        sock.sendall(head.encode() + b"\r\n\r\n")
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = ("Upgrade: websocket", "Connection: Upgrade")


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ((*UPGRADE, "Sec-WebSocket-Key: short", "Sec-WebSocket-Version: 13"), "is not 16 bytes"),
        ((*UPGRADE, KEY), "Sec-WebSocket-Version is missing"),
        (
            ("Upgrade: websocket", "Connection: close", KEY, "Sec-WebSocket-Version: 13"),
            "needs Connection: Upgrade",
        ),
    ],
)
def test_a_bad_key_a_missing_version_or_no_connection_upgrade_is_400_and_closes(
    base: str, lines: tuple[str, ...], why: str
) -> None:
    answer = raw_handshake(base, path("updates", fresh("bad")), *lines)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert why.encode() in answer


def test_another_version_is_426_naming_13(base: str) -> None:
    answer = raw_handshake(
        base, path("updates", fresh("v8")), *UPGRADE, KEY, "Sec-WebSocket-Version: 8"
    )
    assert answer.startswith(b"HTTP/1.1 426 ")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer
    assert b"Sec-WebSocket-Version '8' is not 13" in answer


def test_a_socket_of_a_channel_that_must_exist_and_does_not_is_403(base: str) -> None:
    with Socket(base, path("strict", fresh("missing"))) as ws:
        assert ws.status == 403
        assert ws.body.decode().strip() == "channel does not exist"


def test_a_signed_location_refuses_a_socket_without_a_valid_token_403(base: str) -> None:
    channel = fresh("signed")
    with Socket(base, path("signed", channel) + "?token=nonsense") as ws:
        assert ws.status == 403
        assert ws.body.decode().strip() == TOKEN_INVALID
    token = sign(SECRET, [channel], int(time.time()) + 60)
    with Socket(base, path("signed", channel) + f"?token={token}") as ws:
        assert ws.status == 101


# -- frames ------------------------------------------------------------------------


def test_a_socket_gets_held_messages_then_live_ones_text_and_binary_byte_for_byte(
    base: str,
) -> None:
    channel = fresh("frames")
    binary = bytes(range(256)) * 3
    publish(base, channel, "m0 é\r\nline")
    publish(base, channel, binary, "application/octet-stream")
    with Socket(base, path("updates", channel), subprotocols=[]) as ws:
        ws.messages_of(2)
        publish(base, channel, b"", None)
        publish(base, channel, "x" * 70_000)
        messages = ws.messages_of(4)
    assert [(m.data, m.text) for m in messages] == [
        ("m0 é\r\nline".encode(), True),
        (binary, False),
        (b"", True),
        (b"x" * 70_000, True),
    ]


def test_ws_meta_nchan_frames_carry_the_id_a_poll_gives_and_the_content_type(base: str) -> None:
    channel = fresh("meta")
    publish(base, channel, '{"n": 1}', "application/json")
    publish(base, channel, bytes([0xFF, 0]), None)
    with Socket(base, path("updates", channel)) as ws:
        messages = ws.messages_of(2)
    first = poll_id(base, channel)
    assert messages[0].meta == ({"id": first, "content-type": "application/json"}, b'{"n": 1}')
    assert messages[0].text
    assert messages[1].meta == (
        {"id": poll_id(base, channel, last_event_id=first)},
        bytes([0xFF, 0]),
    )
    assert not messages[1].text


def test_a_publisher_cannot_send_a_message_with_the_notices_content_type(base: str) -> None:
    channel = fresh("forged-notice")
    refused = httpx.post(
        base + path("send-update", channel),
        content=b'{"event": "pushserver-deleted"}',
        headers={"Content-Type": NOTICE_TYPE},
        timeout=10,
    )
    assert refused.status_code == 400
    assert "reserved for the edges' notices" in refused.text


# -- resume ------------------------------------------------------------------------


def test_a_cursor_older_than_the_buffer_gets_the_missed_notice_before_the_oldest_held(
    base: str,
) -> None:
    channel = fresh("missed")
    publish(base, channel, "m0")
    first = poll_id(base, channel)
    for n in range(1, HELD + 2):
        publish(base, channel, f"m{n}")
    with Socket(base, path("updates", channel) + f"?last_event_id={quote(first)}") as ws:
        messages = ws.messages_of(HELD + 1)
    notice = messages[0]
    fields, data = notice.meta
    assert fields == {"id": first, "content-type": NOTICE_TYPE}
    assert json.loads(data) == {"event": MISSED_EVENT, "channel_id": channel}
    assert bodies(messages[1:]) == [f"m{n}".encode() for n in range(2, HELD + 2)]


def test_a_cursor_within_the_buffer_resumes_after_it_without_a_notice(base: str) -> None:
    channel = fresh("within")
    for n in range(3):
        publish(base, channel, f"m{n}")
    first = poll_id(base, channel)
    with Socket(base, path("updates", channel) + f"?last_event_id={quote(first)}") as ws:
        ws.messages_of(2)
        ws.read_some(0.2)
        assert bodies(ws.messages) == [b"m1", b"m2"]


@pytest.mark.parametrize(
    ("cursor", "why"),
    [("nonsense", "is not a message id"), ("1:0,2:0", "has 2 cursor(s)")],
)
def test_a_malformed_cursor_is_refused_400_before_the_upgrade(
    base: str, cursor: str, why: str
) -> None:
    with Socket(base, path("updates", fresh("bad-cursor")) + f"?last_event_id={cursor}") as ws:
        assert ws.status == 400
        assert why in ws.body.decode()


@pytest.fixture(scope="module")
def two_edges(module_launcher: Launcher) -> tuple[str, str]:
    """Two edges of one broker: a client resumes on either."""
    _, endpoints = module_launcher.broker(
        store={"type": "memory", "max_messages": 100, "message_timeout": 300}
    )
    locations = (
        {"type": "subscriber", "url": r"/updates/([^/]+)"},
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    )
    return (
        module_launcher.edge(endpoints, locations=locations)[1],
        module_launcher.edge(endpoints, locations=locations)[1],
    )


def test_a_socket_resumes_by_last_event_id_on_another_edge_with_nothing_lost_or_repeated(
    two_edges: tuple[str, str],
) -> None:
    one, other = two_edges
    channel = fresh("resume")
    for n in range(3):
        publish(one, channel, f"m{n}")
    with Socket(one, path("updates", channel)) as ws:
        seen = ws.messages_of(3)
    for n in range(3, 6):
        publish(one, channel, f"m{n}")
    last = seen[-1].id
    with Socket(other, path("updates", channel) + f"?last_event_id={quote(last)}") as ws:
        ws.messages_of(3)
        publish(other, channel, "m6")
        ws.messages_of(4)
        ws.read_some(0.2)
        resumed = ws.messages
    assert bodies(seen + resumed) == [f"m{n}".encode() for n in range(7)]


def test_a_multiplexed_socket_resumes_each_channel_exactly_on_another_edge(
    two_edges: tuple[str, str],
) -> None:
    one, other = two_edges
    channels = [fresh("mux-a"), fresh("mux,b"), fresh("mux-c")]
    publish(one, channels[0], "a0")
    publish(one, channels[1], "b0")
    target = several("updates", *channels)
    with Socket(one, target) as ws:
        ws.messages_of(2)
        publish(one, channels[1], "b1")
        seen = ws.messages_of(3)
    # Every channel's cursor, the frame's own in brackets; ids are per channel, so
    # the channels' messages are in order each, not in one order across them.
    last = seen[-1].id
    assert last.startswith(own_id(seen[0])) and last.endswith(",-")
    assert f"[{own_id(seen[-1])}]" in last
    publish(one, channels[0], "a1")
    publish(one, channels[2], "c0")
    publish(one, channels[1], "b2")
    with Socket(other, target + f"?last_event_id={quote(last)}") as ws:
        resumed = ws.messages_of(3)
        ws.read_some(0.2)
        assert len(ws.messages) == 3
    assert by_channel(seen) == {0: [b"a0"], 1: [b"b0", b"b1"]}
    assert by_channel(resumed) == {0: [b"a1"], 1: [b"b2"], 2: [b"c0"]}


def own_index(message: Received) -> int:
    """Which channel a multiplexed frame is of: the bracketed cursor's place."""
    return next(n for n, part in enumerate(message.id.split(",")) if part.startswith("["))


def own_id(message: Received) -> str:
    return message.id.split(",")[own_index(message)].strip("[]")


def by_channel(messages: list[Received]) -> dict[int, list[bytes]]:
    found: dict[int, list[bytes]] = {}
    for message in messages:
        found.setdefault(own_index(message), []).append(message.body)
    return found


def test_a_url_of_several_channels_without_ws_meta_nchan_is_400(base: str) -> None:
    with Socket(base, several("updates", fresh("a"), fresh("b")), subprotocols=[]) as ws:
        assert ws.status == 400
        assert SUBPROTOCOL in ws.body.decode()


# -- the end of a socket -------------------------------------------------------------


def test_deleting_the_channel_sends_the_notice_then_closes_4410(base: str) -> None:
    channel = fresh("deleted")
    publish(base, channel, "m0")
    with Socket(base, path("updates", channel)) as ws:
        ws.messages_of(1)
        assert httpx.delete(base + path("send-update", channel), timeout=10).status_code == 200
        assert ws.until_closed() == CHANNEL_DELETED
        assert ws.close_reason == "channel deleted"
    fields, data = ws.messages[1].meta
    assert fields == {"id": ws.messages[0].id, "content-type": NOTICE_TYPE}
    assert json.loads(data) == {"event": DELETED_EVENT, "channel_id": channel}


def test_a_plain_socket_of_a_deleted_channel_gets_4410_and_no_notice(base: str) -> None:
    channel = fresh("deleted-plain")
    publish(base, channel, "m0")
    with Socket(base, path("updates", channel), subprotocols=[]) as ws:
        ws.messages_of(1)
        httpx.delete(base + path("send-update", channel), timeout=10)
        assert ws.until_closed() == CHANNEL_DELETED
    assert [m.data for m in ws.messages] == [b"m0"]


def test_a_client_close_is_answered_and_counted(base: str) -> None:
    before = socket_figures(base).get("client", 0)
    with Socket(base, path("updates", fresh("bye"))) as ws:
        ws.send(CloseConnection(1000, "bye"))
        assert ws.until_closed() == 1000
    eventually(lambda: socket_figures(base).get("client", 0) == before + 1, 5, "counted")


def test_the_metrics_count_open_sockets(base: str) -> None:
    before = socket_figures(base)["open"]
    with Socket(base, path("updates", fresh("counted"))) as ws:
        assert ws.status == 101
        eventually(lambda: socket_figures(base)["open"] == before + 1, 5, "the socket counted")
    eventually(lambda: socket_figures(base)["open"] == before, 5, "the socket uncounted")


def test_sigterm_closes_every_socket_with_1001_at_once(launcher: Launcher) -> None:
    process, url = launcher.embedded()
    sockets = [Socket(url, path("updates", fresh("stopping"))) for _ in range(5)]
    try:
        assert {ws.status for ws in sockets} == {101}
        started = time.monotonic()
        process.popen.terminate()
        codes = [ws.until_closed(5) for ws in sockets]
        took = time.monotonic() - started
        assert codes == [GOING_AWAY] * 5
        assert {ws.close_reason for ws in sockets} == {"edge stopping"}
        assert process.stop() == 0
    finally:
        for ws in sockets:
            ws.close()
    print(f"\nSIGTERM: {len(sockets)} sockets closed 1001 within {took * 1000:.0f} ms")


# -- health ------------------------------------------------------------------------


def test_the_edge_pings_every_stream_keepalive_and_a_peer_that_answers_stays(base: str) -> None:
    channel = fresh("alive")
    with Socket(base, path("alive", channel)) as ws:
        ws.read_some(KEEPALIVE * 5)
        assert ws.pings >= 3
        assert not ws.ended
        publish(base, channel, "still here")
        assert bodies(ws.messages_of(1)) == [b"still here"]


def test_a_silent_peer_is_dropped_after_an_unanswered_ping(base: str) -> None:
    before = socket_figures(base).get("silent", 0)
    with Socket(base, path("alive", fresh("silent")), answer_pings=False) as ws:
        started = time.monotonic()
        # Dropped without a close handshake: what a browser reads as 1006.
        assert ws.until_closed(KEEPALIVE * 10) == 1006
        took = time.monotonic() - started
    assert KEEPALIVE < took < KEEPALIVE * 4
    eventually(lambda: socket_figures(base).get("silent", 0) == before + 1, 5, "counted")


def test_data_from_the_client_is_ignored_and_counted(base: str) -> None:
    channel = fresh("chatty")
    before = socket_figures(base)["ignored"]
    with Socket(base, path("updates", channel)) as ws:
        ws.send(TextMessage("publish this?"))
        ws.send(BytesMessage(b"\x00\x01"))
        ws.send(Ping(b"app ping"))
        eventually(lambda: socket_figures(base)["ignored"] == before + 2, 5, "two ignored")
        publish(base, channel, "only this")
        assert bodies(ws.messages_of(1)) == [b"only this"]
        ws.read_some(0.2)
        assert len(ws.messages) == 1
    # The channel holds what was published, nothing the client sent.
    assert httpx.get(base + path("updates", channel), timeout=10).text == "only this"


def test_a_client_message_over_the_incoming_limit_is_closed_1009(base: str) -> None:
    before = socket_figures(base).get("too_big", 0)
    with Socket(base, path("updates", fresh("too-big"))) as ws:
        ws.send(BytesMessage(b"x" * (MAX_INCOMING + 1)))
        assert ws.until_closed() == MESSAGE_TOO_BIG
    eventually(lambda: socket_figures(base).get("too_big", 0) == before + 1, 5, "counted")


def test_a_stalled_reader_is_closed_1013_with_edge_memory_bounded_then_resumes_with_everything(
    launcher: Launcher,
) -> None:
    pid, url = stalled_edge(launcher)
    channel = fresh("stalled")
    sent = big_bodies()
    with Socket(url, path("updates", channel), receive_buffer=16 * 1024) as stalled:
        assert stalled.status == 101
        before = memory_kib(pid, "VmRSS")
        # Reads nothing while the channel goes on: the edge must close the socket.
        published = publish_until(
            url, channel, sent, lambda: socket_figures(url).get("slow", 0) >= 1, "socket"
        )
        grown = (memory_kib(pid, "VmHWM") - before) * 1024
        # What the edge had written is still read, then the close.
        assert stalled.until_closed(30) == TRY_AGAIN_LATER
        received = bodies(stalled.messages)
        last = stalled.messages[-1].id
    report_stalled("socket: closed 1013", published, len(received), grown)
    assert received == sent[: len(received)]
    assert grown < memory_bound(published)
    with Socket(url, path("updates", channel) + f"?last_event_id={quote(last)}") as resumed:
        resumed.messages_of(published - len(received), 30)
        for n in range(published, SLOW_HELD):
            publish(url, channel, sent[n])
            resumed.messages_of(n + 1 - len(received), 30)
        received += bodies(resumed.messages)
    assert received == sent
    assert socket_figures(url).get("slow", 0) == 1


# -- passthrough and authorize -----------------------------------------------------


def cookie_of(site: Site, username: str) -> tuple[str, str]:
    return ("Cookie", session_cookie(site, username))


def test_a_socket_is_one_subscribe_when_it_opens_and_one_unsubscribe_when_it_closes(
    site: Site,
) -> None:
    channels = [fresh("presence-a"), fresh("presence-b")]
    with Socket(site.base, several("updates", *channels), [cookie_of(site, "alice")]) as ws:
        assert ws.status == 101
        for channel in channels:
            publish(site.base, channel, "m")
        ws.messages_of(2)
        for channel in channels:
            assert site.events(channel) == [("subscribe", "alice")]
        ws.send(CloseConnection(1000))
        ws.until_closed()
    expected = [("subscribe", "alice"), ("unsubscribe", "alice")]
    for channel in channels:
        eventually(lambda c=channel: site.events(c) == expected, 10, f"{expected} for {channel}")


def test_authorize_refuses_a_socket_with_403_before_the_upgrade(site: Site) -> None:
    channel = fresh("private-socket")
    publish(site.base, channel, "secret plans")
    with Socket(site.base, path("private", channel), [cookie_of(site, "mallory")]) as refused:
        assert refused.status == 403
        assert refused.body.decode().strip() == "subscription refused"
    with Socket(site.base, path("private", channel), [cookie_of(site, "alice")]) as admitted:
        assert admitted.status == 101
        assert bodies(admitted.messages_of(1)) == [b"secret plans"]


def test_cookies_from_a_page_of_another_origin_do_not_speak_for_the_client(site: Site) -> None:
    channel = fresh("cross-site")
    headers = [cookie_of(site, "alice"), ("Origin", "http://elsewhere.example")]
    with Socket(site.base, path("updates", channel), headers) as ws:
        assert ws.status == 101  # allow_origin '*' admits it, without credentials
        eventually(lambda: site.events(channel) == [("subscribe", None)], 10, "an anonymous one")
    own = [cookie_of(site, "alice"), ("Origin", site.base)]
    channel = fresh("same-site")
    with Socket(site.base, path("updates", channel), own) as ws:
        assert ws.status == 101
        eventually(lambda: site.events(channel) == [("subscribe", "alice")], 10, "alice's")


def test_a_stalled_reader_that_sent_a_frame_the_edge_never_read_still_gets_its_close_1013(
    launcher: Launcher,
) -> None:
    _, url = stalled_edge(launcher)
    channel = fresh("stalled-ping")
    sent = big_bodies()
    with Socket(url, path("updates", channel), receive_buffer=16 * 1024) as stalled:
        assert stalled.status == 101
        publish_until(url, channel, sent, lambda: socket_figures(url).get("slow", 0) >= 1, "socket")
        # The edge reads nothing while its output waits: this stays unread in its socket.
        stalled.send(Ping(b"still here"))
        time.sleep(0.5)
        assert stalled.until_closed(30) == TRY_AGAIN_LATER
