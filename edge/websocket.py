"""The WebSocket protocol (RFC 6455) as the edges speak it on subscriber locations, without sockets.

Three parts, each pure: the handshake decision for a request that asks to
upgrade (`handshake`: the 101's headers, or a refusal with a status and a
reason), the frames a message or a notice goes out as (`message_frame`,
`notice_frame`), and one connection's incoming side and health
(`Session`: pings answered, the close handshake, the incoming limit, pings
of its own on an interval and the verdict on a silent peer). The edge's
connection writes what these return; the tests judge them byte for byte
without a server.

wsproto parses what clients send (masked frames, fragments, UTF-8, close
codes), so none of that is written here. The handshake is decided here,
not by wsproto's `H11Handshake`: the edge has already parsed the request
(edge.connection), and `H11Handshake` would serialize it again only to
parse it a second time with h11, while checking neither the key's form
nor the Origin. Its accept-key helper is used as is.

The trap is the outgoing side. A server's frames are unmasked, so one
message's frame is the same bytes for every socket that receives it the
same way; it is built here from the message once (`message_frame`), and
the edge writes those bytes to each socket of a one-channel subscription.
Sending data through each socket's own wsproto connection would encode it
once per socket. Control frames (pong, ping, close) are each socket's own
and go through its wsproto connection, which keeps the close state right.

What a frame carries:

* Without a subprotocol, a message is one frame of the publisher's bytes:
  text when they are UTF-8, binary otherwise. Nothing else is sent (no id,
  no notice): such a socket follows one channel, and a deleted channel is
  said by the close code alone.
* With `ws+meta.nchan` (Nchan's, which NchanSubscriber asks for), each
  frame starts with `id: <cursor>\\n`, `content-type: <type>\\n` when the
  message has one, and a blank line, then the publisher's bytes (text
  frame when all of it is UTF-8). The cursor is the message id
  `time:tag`, or on a socket of several channels every channel's cursor in
  URL order with the frame's own in brackets (`5:0,[7:1],-`), the form of
  an EventSource stream's id; the client sends the last one back as
  `?last_event_id=` when it reconnects, and each channel resumes exactly.
  The edge's notices (`pushserver-missed` before the oldest held message
  when some were dropped, `pushserver-deleted` before the close of a
  deleted channel) are text frames with the same header, the cursors
  unchanged (so resuming from a notice's id loses nothing) and the content
  type `NOTICE_TYPE`, their data `{"event": name, "channel_id": id}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from wsproto.connection import SERVER, Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from broker.wire import NOTICE_TYPE as NOTICE_TYPE  # the notices' type, reserved by the wire
from broker.wire import MessageId
from edge.config import SubscriberLocation
from edge.eventstream import NO_CURSOR, format_cursors

# Nchan's subprotocol: each frame says its message's id and content type.
SUBPROTOCOL = "ws+meta.nchan"
WEBSOCKET_VERSION = "13"

# Close codes the edge sends (RFC 6455 7.4; 4000-4999 are the application's).
GOING_AWAY = 1001  # the edge is stopping: reconnect at once, to any edge
MESSAGE_TOO_BIG = 1009  # a client's data message over MAX_INCOMING
TRY_AGAIN_LATER = 1013  # a slow reader over the output bound: reconnect and resume
CHANNEL_DELETED = 4410  # the channel was deleted (a poll's 410): do not reconnect
CLOSE_REASONS = {
    GOING_AWAY: "edge stopping",
    MESSAGE_TOO_BIG: "message too big",
    TRY_AGAIN_LATER: "slow reader",
    CHANNEL_DELETED: "channel deleted",
}

# Bytes of one data message a client may send; its data is not read (a client's
# frames are not publishes), so this only has to admit the application pings
# some libraries send, and a larger one is closed with MESSAGE_TOO_BIG.
MAX_INCOMING = 16 * 1024

_TEXT = 0x1
_BINARY = 0x2
_FIN = 0x80
_KEY_BYTES = 16


# -- the handshake -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """A handshake to answer with 101 Switching Protocols and these headers."""

    headers: tuple[tuple[str, str], ...]
    # SUBPROTOCOL when the client offered it, else None (plain frames).
    subprotocol: str | None
    # Whether the client's cookies may speak for it (passthrough, `authorize`): a
    # browser sends them with any site's WebSocket, so only from its own origin
    # (or a listed one with `allow_credentials`), or from a client that is no browser.
    credentials: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """A handshake to refuse with `status`, `reason` as its text/plain body, and `headers`."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


def _tokens(value: str | None) -> list[str]:
    if value is None:
        return []
    return [token.strip().lower() for token in value.split(",") if token.strip()]


def wants_websocket(upgrade: str | None) -> bool:
    """Whether an `Upgrade` header asks for a WebSocket (anything else is served as HTTP)."""
    return "websocket" in _tokens(upgrade)


_HANDSHAKE_HEADERS = (
    b"connection",
    b"host",
    b"origin",
    b"sec-websocket-key",
    b"sec-websocket-protocol",
    b"sec-websocket-version",
    b"upgrade",
)


def _headers(raw_headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, str]:
    # A repeated field's values joined with commas, as HTTP reads them.
    found: dict[bytes, str] = {}
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered in _HANDSHAKE_HEADERS:
            text = value.decode("latin-1").strip()
            found[lowered] = f"{found[lowered]},{text}" if lowered in found else text
    return found


def _key_problem(key: str | None) -> str | None:
    if key is None:
        return "Sec-WebSocket-Key is missing"
    try:
        nonce = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != _KEY_BYTES:
        return f"Sec-WebSocket-Key {key[:40]!r} is not 16 bytes in base64"
    return None


def _origin_host(origin: str) -> str:
    return origin.partition("://")[2].lower()


def handshake(
    method: str,
    version: str,
    raw_headers: Sequence[tuple[bytes, bytes]],
    location: SubscriberLocation,
    channels: int = 1,
) -> Accepted | Refused:
    """Answer a request that asks to upgrade to a WebSocket, for a URL naming `channels`.

    >>> accepted = handshake("GET", "HTTP/1.1", [
    ...     (b"Host", b"push.example"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
    ...     (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13"),
    ... ], SubscriberLocation())
    >>> dict(accepted.headers)["Sec-WebSocket-Accept"]
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    headers = _headers(raw_headers)
    if method != "GET":
        return Refused(400, f"a WebSocket handshake is a GET, not {method}")
    if version != "HTTP/1.1":
        return Refused(400, f"a WebSocket handshake needs HTTP/1.1, not {version}")
    if "upgrade" not in _tokens(headers.get(b"connection")):
        return Refused(400, "a WebSocket handshake needs Connection: Upgrade")
    if not wants_websocket(headers.get(b"upgrade")):
        return Refused(400, "a WebSocket handshake needs Upgrade: websocket")
    offered_version = headers.get(b"sec-websocket-version")
    if offered_version != WEBSOCKET_VERSION:
        # RFC 6455 4.4: say which version is spoken here.
        spoken = (("Sec-WebSocket-Version", WEBSOCKET_VERSION),)
        if offered_version is None:
            return Refused(400, "Sec-WebSocket-Version is missing", spoken)
        return Refused(426, f"Sec-WebSocket-Version {offered_version[:20]!r} is not 13", spoken)
    key = headers.get(b"sec-websocket-key")
    problem = _key_problem(key)
    if problem is not None or key is None:
        return Refused(400, problem or "Sec-WebSocket-Key is missing")
    origin = headers.get(b"origin")
    host = (headers.get(b"host") or "").lower()
    same_origin = origin is not None and bool(host) and _origin_host(origin) == host
    listed = origin is not None and origin in location.allow_origin
    if origin is not None and not (same_origin or listed or "*" in location.allow_origin):
        return Refused(403, "origin not allowed")
    offered = _tokens(headers.get(b"sec-websocket-protocol"))
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
    if channels > 1 and subprotocol is None:
        # Plain frames carry no id, so the client could not tell the channels apart.
        return Refused(400, f"a WebSocket of several channels needs the {SUBPROTOCOL} subprotocol")
    accept = generate_accept_token(key.encode("ascii")).decode("ascii")
    answer: tuple[tuple[str, str], ...] = (
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept),
    )
    if subprotocol is not None:
        answer += (("Sec-WebSocket-Protocol", subprotocol),)
    credentials = origin is None or same_origin or (listed and location.allow_credentials)
    return Accepted(answer, subprotocol, credentials)


# -- frames from the edge ------------------------------------------------------------


def frame(payload: bytes, text: bool) -> bytes:
    """One final, unmasked data frame carrying `payload` (RFC 6455 5.2)."""
    first = _FIN | (_TEXT if text else _BINARY)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def meta_header(id_text: str, content_type: str | None) -> bytes:
    """What a ws+meta.nchan frame holds before the data: id, content type, a blank line."""
    header = "id: " + id_text + "\n"
    if content_type:
        header += "content-type: " + content_type + "\n"
    return (header + "\n").encode("utf-8")


def message_frame(body: bytes, content_type: str | None, id_text: str | None = None) -> bytes:
    """A message as the frame a socket receives: the publisher's bytes alone (`id_text`
    None), or after the ws+meta.nchan header with `id_text` as its id.

    The same arguments give the same bytes, so a one-channel subscription builds
    this once per message for all its sockets.
    """
    if id_text is None:
        return frame(body, _is_utf8(body))
    # The header is UTF-8 (a content type's Latin-1 characters encoded so), so the
    # frame is text exactly when the body is.
    return frame(meta_header(id_text, content_type) + body, _is_utf8(body))


def notice_frame(event: str, channel_id: str, id_text: str) -> bytes:
    """One of the edge's notices about `channel_id` as a ws+meta.nchan text frame."""
    data = json.dumps({"event": event, "channel_id": channel_id}).encode("utf-8")
    return frame(meta_header(id_text, NOTICE_TYPE) + data, True)


def cursor_id(cursors: Sequence[MessageId | None], own: int) -> str:
    """A frame's id: an EventSource stream's (`edge.eventstream.format_cursors`), and `-`
    for the one channel of a socket with no cursor yet (a notice's id before any message).

    >>> cursor_id([MessageId(5, 0), MessageId(7, 1), None], 1)
    '5:0,[7:1],-'
    """
    if len(cursors) == 1 and cursors[0] is None:
        return NO_CURSOR
    return format_cursors(cursors, own)


# -- one connection's incoming side and health -----------------------------------------


@dataclass(slots=True)
class Reply:
    """What the edge writes after something arrived or a tick passed, and whether the
    connection then ends (once `send` is written)."""

    send: bytes = b""
    end: bool = False
    # The close code the connection ends with (the client's or the edge's), None when
    # it ends without a close handshake (a silent peer).
    code: int | None = None


class Session:
    """One WebSocket's frames from the client, its pings, and how it closes.

    `receive` takes what the socket read and says what to answer: a ping gets
    its pong, a close gets its close (then the end), a data message is ignored
    and counted in `ignored` (a client's frames are not publishes), one over
    `max_incoming` bytes is closed with MESSAGE_TOO_BIG, a frame that breaks
    RFC 6455 with the code wsproto names (1002, 1007). `tick` is called every
    ping interval: it pings, or ends a connection that sent nothing since the
    previous tick's ping. Not thread-safe; one per connection.
    """

    __slots__ = ("_ws", "_incoming", "_heard", "_pinged", "max_incoming", "ignored", "ended")

    def __init__(self, max_incoming: int = MAX_INCOMING) -> None:
        self._ws = Connection(SERVER)
        self.max_incoming = max_incoming
        # Bytes of the data message arriving now.
        self._incoming = 0
        self._heard = False
        self._pinged = False
        self.ignored = 0
        self.ended = False

    @property
    def open(self) -> bool:
        """Whether frames may still be sent (no close sent or received)."""
        return not self.ended and self._ws.state is ConnectionState.OPEN

    def receive(self, data: bytes) -> Reply:
        if self.ended:
            return Reply()
        self._heard = True
        ws = self._ws
        ws.receive_data(data)
        out = b""
        for event in ws.events():
            if isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    out += ws.send(event.response())
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    out += ws.send(event.response())  # the client's close, answered
                elif ws.state is ConnectionState.OPEN:
                    # wsproto's verdict on a frame that breaks the protocol.
                    out += ws.send(CloseConnection(event.code, event.reason))
                self.ended = True
                return Reply(out, True, event.code)
            elif isinstance(event, (TextMessage, BytesMessage)):
                chunk = event.data
                self._incoming += len(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
                if self._incoming > self.max_incoming:
                    return Reply(out + self.close(MESSAGE_TOO_BIG), True, MESSAGE_TOO_BIG)
                if event.message_finished:
                    self.ignored += 1
                    self._incoming = 0
            # A pong needs nothing: any frame tells the peer is there.
        return Reply(out)

    def tick(self) -> Reply:
        """Ping, or end the connection when nothing came since the last ping."""
        if self.ended:
            return Reply()
        if self._pinged and not self._heard:
            self.ended = True
            return Reply(b"", True, None)
        self._heard = False
        self._pinged = False
        if self._ws.state is not ConnectionState.OPEN:
            return Reply()
        self._pinged = True
        return Reply(self._ws.send(Ping(b"")))

    def skip(self) -> None:
        """A tick without a ping, on a connection whose output waits to be taken: a ping
        would renew the edge's stall deadline, and a client that reads nothing cannot
        answer one. The next tick pings afresh."""
        self._heard = False
        self._pinged = False

    def close(self, code: int, reason: str | None = None) -> bytes:
        """The close frame that ends the socket with `code` (b"" when one was already sent
        or received); the edge ends the connection once it is written."""
        state = self._ws.state
        self.ended = True
        if state is not ConnectionState.OPEN:
            return b""
        return self._ws.send(CloseConnection(code, reason or CLOSE_REASONS.get(code)))
