"""The WebSocket protocol of `edge.websocket`, judged without sockets by independent
implementations: wsproto's client side reads every byte the edge would write and
writes every byte a client would send, and Nchan's NchanSubscriber (npm `nchan`, in
node, over a WebSocket that replays the frames) reads the ws+meta.nchan frames."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse

import h11
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import CLIENT, Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from broker.wire import DELETED_EVENT, MISSED_EVENT, MessageId, content_type_problem
from edge.config import SubscriberLocation
from edge.connection import CRLF, render_head
from edge.websocket import (
    CHANNEL_DELETED,
    GOING_AWAY,
    MAX_INCOMING,
    MESSAGE_TOO_BIG,
    NOTICE_TYPE,
    SUBPROTOCOL,
    TRY_AGAIN_LATER,
    Accepted,
    Refused,
    Session,
    cursor_id,
    frame,
    handshake,
    message_frame,
    notice_frame,
    wants_websocket,
)
from tests.cross_origin import npm_file

# RFC 6455 1.3's example: this key is answered with this accept value.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
# NchanSubscriber.js (npm nchan 1.0.10), WSWrapper's onmessage: how it splits a
# ws+meta.nchan frame into its id, content type and data.
NCHAN_META = re.compile(r"^id: (.*)\n(content-type: (.*)\n)?\n", re.MULTILINE)


def request_headers(**overrides: str | None) -> list[tuple[bytes, bytes]]:
    """A browser's handshake headers, any of them replaced (or left out with None)."""
    headers: dict[str, str | None] = {
        "Host": "push.example",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return [(name.encode(), value.encode()) for name, value in headers.items() if value is not None]


def decide(
    location: SubscriberLocation | None = None, channels: int = 1, **overrides: str | None
) -> Accepted | Refused:
    return handshake(
        "GET", "HTTP/1.1", request_headers(**overrides), location or SubscriberLocation(), channels
    )


def client_events(data: bytes) -> list[Event]:
    """What a client makes of bytes from the edge."""
    client = Connection(CLIENT)
    client.receive_data(data)
    return list(client.events())


def only_event(data: bytes) -> Event:
    events = client_events(data)
    assert len(events) == 1, events
    return events[0]


def from_client(*events: Event) -> bytes:
    """Masked frames, as a client sends them."""
    client = Connection(CLIENT)
    return b"".join(client.send(event) for event in events)


# -- the handshake -------------------------------------------------------------------


def test_a_handshake_is_answered_with_the_rfc_accept_value() -> None:
    accepted = decide()
    assert isinstance(accepted, Accepted)
    assert dict(accepted.headers) == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": RFC_ACCEPT,
    }
    assert accepted.subprotocol is None


def test_wsproto_client_accepts_the_101_and_gets_ws_meta_nchan_when_it_offered_it() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    sent = client.send(
        Request(host="push.example", target="/updates/news", subprotocols=["chat", SUBPROTOCOL])
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(sent)
    parsed = server.next_event()
    assert isinstance(parsed, h11.Request)
    version = "HTTP/" + parsed.http_version.decode()
    accepted = handshake(
        parsed.method.decode(), version, list(parsed.headers.raw_items()), SubscriberLocation()
    )
    assert isinstance(accepted, Accepted)
    assert accepted.subprotocol == SUBPROTOCOL
    client.receive_data(render_head(101, accepted.headers) + CRLF)
    events = list(client.events())
    assert len(events) == 1
    assert isinstance(events[0], AcceptConnection)
    assert events[0].subprotocol == SUBPROTOCOL


def test_no_subprotocol_is_chosen_when_ws_meta_nchan_is_not_offered() -> None:
    accepted = decide(Sec_WebSocket_Protocol="chat, superchat")
    assert isinstance(accepted, Accepted)
    assert accepted.subprotocol is None
    assert "Sec-WebSocket-Protocol" not in dict(accepted.headers)


def test_header_names_and_tokens_are_read_case_insensitively_and_repeated_fields_joined() -> None:
    headers = [
        (b"host", b"push.example"),
        (b"UPGRADE", b"WebSocket"),
        (b"connection", b"keep-alive, upgrade"),
        (b"sec-websocket-key", RFC_KEY.encode()),
        (b"SEC-WEBSOCKET-VERSION", b"13"),
        (b"Sec-WebSocket-Protocol", b"chat"),
        (b"Sec-WebSocket-Protocol", b"WS+META.NCHAN"),
    ]
    accepted = handshake("GET", "HTTP/1.1", headers, SubscriberLocation())
    assert isinstance(accepted, Accepted)
    assert accepted.subprotocol == SUBPROTOCOL


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"Sec_WebSocket_Key": None}, "Sec-WebSocket-Key is missing"),
        ({"Sec_WebSocket_Key": "not base64!"}, "is not 16 bytes in base64"),
        ({"Sec_WebSocket_Key": "c2hvcnQ="}, "is not 16 bytes in base64"),
        ({"Connection": "keep-alive"}, "needs Connection: Upgrade"),
        ({"Connection": None}, "needs Connection: Upgrade"),
        ({"Upgrade": "h2c"}, "needs Upgrade: websocket"),
    ],
)
def test_a_bad_handshake_is_refused_400_with_its_reason(
    overrides: dict[str, str | None], reason: str
) -> None:
    refused = decide(**overrides)
    assert isinstance(refused, Refused)
    assert refused.status == 400
    assert reason in refused.reason


def test_a_missing_version_is_400_and_another_version_426_both_naming_13() -> None:
    missing = decide(Sec_WebSocket_Version=None)
    assert isinstance(missing, Refused)
    assert (missing.status, missing.headers) == (400, (("Sec-WebSocket-Version", "13"),))
    other = decide(Sec_WebSocket_Version="8")
    assert isinstance(other, Refused)
    assert (other.status, other.headers) == (426, (("Sec-WebSocket-Version", "13"),))


def test_a_handshake_that_is_not_a_get_on_http_1_1_is_refused() -> None:
    location = SubscriberLocation()
    for method, version in (("POST", "HTTP/1.1"), ("GET", "HTTP/1.0")):
        refused = handshake(method, version, request_headers(), location)
        assert isinstance(refused, Refused)
        assert refused.status == 400


def test_an_origin_not_in_allow_origin_is_refused_403() -> None:
    location = SubscriberLocation(allow_origin=("https://site.example",))
    refused = decide(location, Origin="https://evil.example")
    assert isinstance(refused, Refused)
    assert (refused.status, refused.reason) == (403, "origin not allowed")


def test_a_listed_origin_the_edges_own_origin_and_no_origin_are_admitted() -> None:
    location = SubscriberLocation(allow_origin=("https://site.example",))
    for origin in ("https://site.example", "https://push.example", None):
        assert isinstance(decide(location, Origin=origin), Accepted), origin


def test_cookies_speak_for_a_cross_origin_socket_only_from_a_listed_origin_with_credentials() -> (
    None
):
    anyone = SubscriberLocation(allow_origin=("*",))
    cross = decide(anyone, Origin="https://other.example")
    assert isinstance(cross, Accepted)
    assert cross.credentials is False
    own = decide(anyone, Origin="http://push.example")
    assert isinstance(own, Accepted)
    assert own.credentials is True
    listed = SubscriberLocation(allow_origin=("https://site.example",), allow_credentials=True)
    with_credentials = decide(listed, Origin="https://site.example")
    assert isinstance(with_credentials, Accepted)
    assert with_credentials.credentials is True
    no_browser = decide(anyone)
    assert isinstance(no_browser, Accepted)
    assert no_browser.credentials is True


def test_several_channels_need_ws_meta_nchan() -> None:
    refused = decide(channels=2)
    assert isinstance(refused, Refused)
    assert (refused.status, SUBPROTOCOL in refused.reason) == (400, True)
    assert isinstance(decide(channels=2, Sec_WebSocket_Protocol=SUBPROTOCOL), Accepted)


def test_wants_websocket_reads_the_upgrade_tokens() -> None:
    assert wants_websocket("websocket")
    assert wants_websocket("foo/1, WebSocket")
    assert not wants_websocket("h2c")
    assert not wants_websocket(None)


# -- frames from the edge ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_frame_of_any_length_reads_back_byte_for_byte(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    event = only_event(frame(body, text=False))
    assert isinstance(event, BytesMessage)
    assert (event.data, event.message_finished) == (body, True)


def test_frame_headers_are_unmasked_and_exact() -> None:
    assert frame(b"hi", text=True) == b"\x81\x02hi"
    assert frame(b"\x00" * 126, text=False)[:4] == b"\x82\x7e\x00\x7e"
    assert frame(b"\x00" * 65536, text=False)[:10] == b"\x82\x7f" + (65536).to_bytes(8, "big")


def test_a_utf8_body_goes_as_a_text_frame_and_any_other_as_binary() -> None:
    text = only_event(message_frame('{"n": "é"}'.encode(), "application/json"))
    assert isinstance(text, TextMessage)
    assert text.data == '{"n": "é"}'
    binary = only_event(message_frame(b"\xff\x00", "application/octet-stream"))
    assert isinstance(binary, BytesMessage)
    assert binary.data == b"\xff\x00"


def test_ws_meta_nchan_frames_read_as_nchansubscriber_reads_them() -> None:
    body = b'{"type": "answer",\n "n": 1}'
    event = only_event(message_frame(body, "application/json", "1733000000:2"))
    assert isinstance(event, TextMessage)
    head = "id: 1733000000:2\ncontent-type: application/json\n\n"
    assert event.data == head + '{"type": "answer",\n "n": 1}'
    found = NCHAN_META.match(event.data)
    assert found is not None
    assert (found.group(1), found.group(3)) == ("1733000000:2", "application/json")
    assert event.data[len(found.group(0)) :] == body.decode()


def test_a_ws_meta_nchan_frame_without_a_content_type_has_no_such_line() -> None:
    event = only_event(message_frame(b"plain", None, "5:0"))
    assert isinstance(event, TextMessage)
    assert event.data == "id: 5:0\n\nplain"
    found = NCHAN_META.match(event.data)
    assert found is not None
    assert (found.group(1), found.group(3)) == ("5:0", None)


def test_a_binary_body_in_ws_meta_nchan_is_a_binary_frame_whose_header_is_text() -> None:
    event = only_event(message_frame(b"\x89PNG\xff", "image/png", "5:1"))
    assert isinstance(event, BytesMessage)
    assert event.data == b"id: 5:1\ncontent-type: image/png\n\n\x89PNG\xff"


def test_a_multiplexed_id_brackets_the_frames_own_channel() -> None:
    cursors = [MessageId(1733000000, 0), MessageId(1733000005, 2), None]
    assert cursor_id(cursors, 1) == "1733000000:0,[1733000005:2],-"
    assert cursor_id([MessageId(5, 0)], 0) == "5:0"
    assert cursor_id([None], 0) == "-"
    assert cursor_id([None, MessageId(5, 0)], 0) == "[-],5:0"
    event = only_event(message_frame(b"x", None, cursor_id(cursors, 1)))
    assert isinstance(event, TextMessage)
    assert event.data == "id: 1733000000:0,[1733000005:2],-\n\nx"


def test_notices_are_text_frames_of_their_own_content_type_that_keep_the_cursors() -> None:
    for name in (MISSED_EVENT, DELETED_EVENT):
        event = only_event(notice_frame(name, "user/42", "5:0,[-]"))
        assert isinstance(event, TextMessage)
        found = NCHAN_META.match(event.data)
        assert found is not None
        assert (found.group(1), found.group(3)) == ("5:0,[-]", NOTICE_TYPE)
        assert json.loads(event.data[len(found.group(0)) :]) == {
            "event": name,
            "channel_id": "user/42",
        }


# -- a connection's incoming side and health ---------------------------------------------


def test_a_ping_is_answered_with_a_pong_of_its_payload() -> None:
    session = Session()
    reply = session.receive(from_client(Ping(b"are you there")))
    assert not reply.end
    assert client_events(reply.send) == [Pong(b"are you there")]


def test_a_client_close_is_answered_with_its_code_and_ends_the_connection() -> None:
    session = Session()
    reply = session.receive(from_client(CloseConnection(1000, "bye")))
    assert (reply.end, reply.code) == (True, 1000)
    assert client_events(reply.send) == [CloseConnection(1000, "bye")]
    assert not session.open
    assert session.receive(from_client(Ping(b""))).send == b""


def test_data_from_the_client_is_ignored_and_counted() -> None:
    session = Session()
    reply = session.receive(
        from_client(
            TextMessage("ping"),
            BytesMessage(b"\x00" * 100),
            TextMessage("in ", message_finished=False),
            TextMessage("parts"),
        )
    )
    assert (reply.send, reply.end) == (b"", False)
    assert session.ignored == 3
    assert session.open


def test_a_data_message_over_the_incoming_limit_is_closed_with_1009() -> None:
    session = Session()
    reply = session.receive(from_client(BytesMessage(b"\x00" * (MAX_INCOMING + 1))))
    assert (reply.end, reply.code) == (True, MESSAGE_TOO_BIG)
    close = only_event(reply.send)
    assert isinstance(close, CloseConnection)
    assert close.code == MESSAGE_TOO_BIG


def test_the_incoming_limit_counts_every_fragment_of_one_message() -> None:
    session = Session(max_incoming=100)
    part = TextMessage("a" * 60, message_finished=False)
    first = session.receive(from_client(part))
    assert not first.end
    client = Connection(CLIENT)
    client.send(part)  # the client's own fragment state, so the next one is a continuation
    second = session.receive(client.send(TextMessage("a" * 60, message_finished=False)))
    assert (second.end, second.code) == (True, MESSAGE_TOO_BIG)


def test_an_unmasked_frame_from_a_client_is_closed_as_a_protocol_error() -> None:
    session = Session()
    reply = session.receive(frame(b"hi", text=True))
    assert (reply.end, reply.code) == (True, 1002)
    close = only_event(reply.send)
    assert isinstance(close, CloseConnection)
    assert close.code == 1002


def test_invalid_utf8_in_a_text_frame_is_closed_with_1007() -> None:
    client = Connection(CLIENT)
    data = client.send(BytesMessage(b"\xff\xfe"))
    # The same frame with the text opcode: masked bytes of bad UTF-8.
    reply = Session().receive(bytes([data[0] & 0xF0 | 0x1]) + data[1:])
    assert (reply.end, reply.code) == (True, 1007)


def test_each_tick_pings_and_a_peer_silent_since_the_last_ping_is_ended() -> None:
    session = Session()
    first = session.tick()
    assert client_events(first.send) == [Ping(b"")]
    session.receive(from_client(Pong(b"")))
    second = session.tick()
    assert not second.end
    assert client_events(second.send) == [Ping(b"")]
    silent = session.tick()
    assert (silent.send, silent.end, silent.code) == (b"", True, None)
    assert session.tick() == type(silent)()


def test_any_frame_from_the_peer_counts_as_an_answer_to_a_ping() -> None:
    session = Session()
    session.tick()
    session.receive(from_client(TextMessage("still here")))
    assert not session.tick().end


def test_a_skipped_tick_neither_pings_nor_judges_and_the_next_one_pings_afresh() -> None:
    session = Session()
    session.tick()
    session.skip()
    after = session.tick()
    assert not after.end
    assert client_events(after.send) == [Ping(b"")]
    assert session.tick().end


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (CHANNEL_DELETED, "channel deleted"),
        (GOING_AWAY, "edge stopping"),
        (TRY_AGAIN_LATER, "slow reader"),
    ],
)
def test_the_edge_closes_with_its_documented_codes(code: int, reason: str) -> None:
    session = Session()
    close = only_event(session.close(code))
    assert close == CloseConnection(code, reason)
    assert not session.open
    assert session.close(code) == b""
    assert session.receive(from_client(CloseConnection(code))).send == b""


def test_a_refusal_rendered_as_the_edge_renders_it_reads_as_one_to_a_client() -> None:
    strict = SubscriberLocation(allow_origin=("https://site.example",))
    refused = decide(strict, Origin="https://evil.example")
    assert isinstance(refused, Refused)
    client = WSConnection(ConnectionType.CLIENT)
    client.send(Request(host="push.example", target="/updates/news"))
    body = refused.reason.encode()
    head = render_head(refused.status, [("Content-Length", str(len(body)))]) + CRLF
    client.receive_data(head + body)
    events = list(client.events())
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == 403


# -- NchanSubscriber (npm nchan) reading these frames ------------------------------------

# Runs NchanSubscriber's websocket mode in node against a WebSocket that replays
# the frames given on stdin, then closes; prints what the subscriber emitted and
# the URL it reconnected to.
NCHAN_DRIVER = """
const frames = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const sockets = [];
globalThis.window = globalThis;
window.location = { protocol: 'http:', host: 'push.example', pathname: '/page/' };
window.addEventListener = () => {};
window.removeEventListener = () => {};
window.WebSocket = class {
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    sockets.push(this);
    setTimeout(() => this.replay(), 0);
  }
  replay() {
    if (sockets.length > 1) {
      finish();
      return;
    }
    this.onopen({});
    for (const data of frames) {
      this.onmessage({ data });
    }
    this.onclose({ code: 1001 });
  }
  close() {}
};
const NchanSubscriber = require(process.argv[1]);
const received = [];
const subscriber = new NchanSubscriber(
  '/updates/news', { subscriber: 'websocket', reconnectTimeout: 1 });
subscriber.on('message', (message, meta) =>
  received.push([message, meta.id, meta['content-type'] || null]));
subscriber.start();
function finish() {
  subscriber.stop();
  const urls = sockets.map((s) => s.url);
  console.log(JSON.stringify({ received, urls, protocol: sockets[0].protocol }));
}
"""


def nchan_subscriber_reads(frames: list[bytes]) -> dict[str, object]:
    texts = []
    for data in frames:
        event = only_event(data)
        assert isinstance(event, TextMessage)
        texts.append(event.data)
    script = str(npm_file("nchan/NchanSubscriber.js"))
    done = subprocess.run(
        ["node", "-e", NCHAN_DRIVER, script],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_nchansubscriber_reads_ids_content_types_and_data_and_resumes_from_the_last_id() -> None:
    frames = [
        message_frame(b'{"n": 1}', "application/json", "1733000000:0"),
        message_frame("line one\nline two é".encode(), None, "1733000000:1"),
        notice_frame(MISSED_EVENT, "news", "1733000000:1"),
        message_frame(b"", "text/plain", "1733000001:0"),
    ]
    seen = nchan_subscriber_reads(frames)
    assert seen["protocol"] == SUBPROTOCOL
    assert seen["received"] == [
        ['{"n": 1}', "1733000000:0", "application/json"],
        ["line one\nline two é", "1733000000:1", None],
        ['{"event": "pushserver-missed", "channel_id": "news"}', "1733000000:1", NOTICE_TYPE],
        ["", "1733000001:0", "text/plain"],
    ]
    assert seen["urls"] == [
        "ws://push.example/updates/news",
        "ws://push.example/updates/news?last_event_id=1733000001%3A0",
    ]


def test_nchansubscriber_sends_a_multiplexed_id_back_as_the_edge_reads_it() -> None:
    cursors = [MessageId(1733000000, 0), MessageId(1733000005, 2), None]
    seen = nchan_subscriber_reads([message_frame(b"x", None, cursor_id(cursors, 1))])
    urls = seen["urls"]
    assert isinstance(urls, list)
    query = urls[1].partition("?")[2]
    name, _, value = query.partition("=")
    assert (name, urllib.parse.unquote_plus(value)) == (
        "last_event_id",
        "1733000000:0,[1733000005:2],-",
    )


@pytest.mark.parametrize(
    "content_type",
    [NOTICE_TYPE, NOTICE_TYPE.upper(), f" {NOTICE_TYPE} ; charset=utf-8", f"{NOTICE_TYPE};q=1"],
)
def test_no_message_may_carry_the_notices_content_type(content_type: str) -> None:
    assert "is reserved for the edges' notices" in (content_type_problem(content_type) or "")


def test_content_types_near_the_notices_one_are_still_allowed() -> None:
    assert content_type_problem("application/vnd.pushserver.notice") is None
    assert content_type_problem("application/json") is None
