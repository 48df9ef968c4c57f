"""The edge's HTTP/1.1 port: connections on asyncio, requests parsed by llhttp (httptools).

Why not Tornado's HTTPServer here: for each request it builds header
objects and a coroutine to read the next one, and while a poll is held it
re-registers the socket with the selector to notice the client leaving.
For the subscriber location, which answers most requests with bytes
rendered once per message, that was most of the edge's CPU
(ops/bench/README.md). Here a request is a few strings, a held poll costs
nothing until it is answered, and the connection goes on reading while it
waits, so a client that leaves is noticed at once.

Requests on one connection are answered in order, as HTTP/1.1 requires of
pipelined ones: one is answered at a time and those behind it wait, parsed,
with their bodies. Whatever answers a request is a `Responder`, chosen by
the server's router when the request's head has arrived: the subscriber
location's own, or the bridge to Tornado's application for everything else.
A responder writes with `send` and ends its answer with `finish`; the next
request is then taken by the loop in `_next`, never by `finish` itself,
since a responder usually answers inside `complete` and a call chain per
pipelined request ends in RecursionError. A responder may also keep
writing for as long as the connection lives (an EventSource stream): it
watches `writable` and `unsent`, waits on `drained`, and ends with
`finish(keep_alive=False)`, or `drop` to discard what its client has not
taken. When llhttp says a request asks to upgrade (`Request.upgrade`),
nothing after its head is read as HTTP: the connection stops reading, and
its responder either answers it (the connection then closes) or calls
`take_over` after writing its 101, and from then on receives every byte
that arrives, starting with those that came behind the head. The
connection knows nothing of what it carries: routing is the router's,
counting by status is the counter it is given.

Flow control, the trap of a server that answers without waiting: a client
that pipelines and reads nothing would otherwise have every answer queued
in memory. So a connection takes no further request while its unsent
output is above `OUTPUT_HIGH` (the transport's write-buffer limits call
`pause_writing`/`resume_writing`), and stops reading while it takes none,
or while more than `PIPELINE_LIMIT` requests (`PIPELINE_BYTES` of bodies)
wait. A connection whose client takes none of its output for
`idle_timeout` is dropped, and the kernel drops one whose output goes
unacknowledged for twice that (`TCP_USER_TIMEOUT`, for a client's host
gone).

Every connection owes something with a deadline, counted from when it
began to owe it and never renewed by a byte: a request head within
`head_timeout` (from the connection's start, or from the head's first
byte on a kept-alive one), then its body within `body_timeout`, and
between requests the next one within `idle_timeout`. Time spent with
reading paused by the edge does not count. One sweep checks them all, not
a timer per connection. A late head or body gets 408 (a connection that
sent nothing is closed without one); bad requests are
answered here, before any responder: a malformed message 400, a head over
`MAX_HEAD_SIZE` 431, a body over the limit 413, each with a short reason
and the connection closed. A connection closed after its answers is shut
for writing and then read, and what arrives dropped, for `LINGER` seconds
more: closing it with the client's bytes unread would have the kernel
reset it and drop what it had not sent yet. Connections beyond
`max_connections` are closed as they arrive rather than running the
process out of descriptors. Each of these is counted by event
(`HTTPServer.events`) and logged at most a few times a minute per event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol, cast

import httptools
import tornado.httputil

from broker.throttled_log import ThrottledLog

log = logging.getLogger("pushserver.edge")

MAX_HEAD_SIZE = 64 * 1024
# Requests parsed ahead of the one being answered, or bytes of their bodies,
# beyond which the connection stops reading.
PIPELINE_LIMIT = 16
PIPELINE_BYTES = 1024 * 1024
# Unsent output above which a connection takes no further request, and below
# which it takes them again: one answer may pass the mark, never a queue of them.
OUTPUT_HIGH = 64 * 1024
OUTPUT_LOW = 16 * 1024
# Seconds a connection the edge closes after its answers keeps reading (and
# dropping) what its client still sends, once the answers went out.
LINGER = 2.0

# What is counted of connections (pushserver_edge_connection_events{event}).
MALFORMED = "malformed"
HEAD_TOO_LARGE = "head_too_large"
BODY_TOO_LARGE = "body_too_large"
HEAD_LATE = "head_late"
BODY_LATE = "body_late"
IDLE = "idle"
OUTPUT_STALLED = "output_stalled"
OVER_CAPACITY = "over_capacity"
FAILED = "failed"

CRLF = b"\r\n"
KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"
CLOSE_LINE = b"Connection: close\r\n"
OWS = b" \t"


def header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as they go on the wire, each ending in CRLF.

    Header values come from the edge and from applications; a CR or LF in one
    would let it forge headers, so it is refused.
    """
    pairs = list(headers)
    text = "".join([f"{name}: {value}\r\n" for name, value in pairs])
    # One CR and one LF per line, its end, or a header carries its own.
    if text.count("\r") != len(pairs) or text.count("\n") != len(pairs):
        for name, value in pairs:
            if "\r" in f"{name}{value}" or "\n" in f"{name}{value}":
                raise ValueError(f"CR or LF in response header {name!r}")
    return text.encode("latin-1")


@functools.lru_cache(maxsize=64)
def status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("latin-1")


def render_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response's status line and header lines, without the blank line that ends them."""
    return status_line(status) + header_lines(headers)


@dataclass(slots=True)
class Request:
    """A request's head as it arrived: the method and target as sent, headers undecoded
    but for the optional whitespace around values, which HTTP says is not part of them."""

    method: str
    target: str
    version: str
    raw_headers: list[tuple[bytes, bytes]]
    # Whether the client keeps the connection open after the answer.
    keep_alive: bool
    # The client's address, as HTTPServerRequest.remote_ip has it.
    remote_ip: str
    # llhttp read it as asking to switch protocols (Connection: upgrade and an
    # Upgrade header): what follows its head is not HTTP.
    upgrade: bool = False

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def headers_named(self, *lowercase_names: bytes) -> list[str | None]:
        """The values of the named headers, in one pass; a repeated field's values are
        joined with commas, as HTTP reads them."""
        found: list[str | None] = [None] * len(lowercase_names)
        for name, value in self.raw_headers:
            lowered = name.lower()
            if lowered in lowercase_names:
                index = lowercase_names.index(lowered)
                text = value.decode("latin-1")
                previous = found[index]
                found[index] = text if previous is None else f"{previous},{text}"
        return found

    def header(self, lowercase_name: bytes) -> str | None:
        return self.headers_named(lowercase_name)[0]

    def connection_line(self) -> bytes:
        """What an answer says of the connection: only what differs from HTTP's default."""
        if not self.keep_alive:
            return CLOSE_LINE if self.version == "HTTP/1.1" else b""
        return KEEP_ALIVE_LINE if self.version == "HTTP/1.0" else b""

    def start_line(self) -> tornado.httputil.RequestStartLine:
        return tornado.httputil.RequestStartLine(self.method, self.target, self.version)

    def tornado_headers(self) -> tornado.httputil.HTTPHeaders:
        headers = tornado.httputil.HTTPHeaders()
        for name, value in self.raw_headers:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        return headers


class Responder(Protocol):
    """What answers one request; the connection tells it what arrives and whether it left.

    Raising `tornado.httputil.HTTPInputError` (from routing, `body` or `complete`)
    says the request cannot be read; the connection answers 400 with its message.
    """

    def body(self, chunk: bytes) -> None: ...

    def complete(self) -> None:
        """The request's whole message has arrived."""

    def closed(self) -> None:
        """The connection ended before the answer was finished."""


Router = Callable[["Connection", Request], Responder]


@dataclass(eq=False, slots=True)
class _Incoming:
    request: Request
    responder: Responder | None = None
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0
    complete: bool = False
    # Bytes of its answer went out; an error can no longer be answered.
    sent: bool = False
    # Its body waits in `chunks` until the responder is ready for it.
    held: bool = False
    answered: bool = False


# RFC 9110's token for the method; a target without spaces or controls.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e\x80-\xff]+) (HTTP/1\.[01])")


def _says_close(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"connection" and b"close" in value.lower().replace(b" ", b"").split(b",")
        for name, value in headers
    )


class _HeadTooLarge(Exception):
    pass


class Connection(asyncio.Protocol):
    __slots__ = (
        "_refusal",
        "server",
        "transport",
        "remote_ip",
        "parser",
        "active",
        "parsing",
        "waiting",
        "waiting_bytes",
        "max_body_size",
        "closing",
        "reading",
        "owing",
        "deadline",
        "_read_at",
        "_url",
        "_headers",
        "_head_size",
        "_paused",
        "_paused_at",
        "_write_paused",
        "_drained",
        "_dispatching",
        "_unsent",
        "_unsent_since",
        "_in_message",
        "_begun",
        "_odd",
        "_upgrade",
        "_after_head",
        "_tunnel",
        "_lingering",
        "_linger_from",
    )

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote_ip = ""
        self.parser = httptools.HttpRequestParser(self)
        self.active: _Incoming | None = None
        self.parsing: _Incoming | None = None
        self.waiting: deque[_Incoming] = deque()
        self.waiting_bytes = 0
        self.max_body_size = server.max_body_size
        self.closing = False
        # False once what arrives can no longer be read as HTTP.
        self.reading = True
        # What the client owes by `deadline`, named by the event counted if it is late;
        # "" while it owes nothing (a request in hand is the edge's to answer).
        self.owing = HEAD_LATE
        self.deadline = math.inf
        # When the data being parsed arrived: the clock of the parser's callbacks.
        self._read_at = 0.0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._paused = False
        self._paused_at = 0.0
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._dispatching = False
        # A malformed request behind others still owed an answer: refused once
        # those are answered, since answers go out in the order asked.
        self._refusal: tuple[int, str] | None = None
        # Closing after its answers, and since when nothing waited to go out.
        self._lingering = False
        self._linger_from = 0.0
        # Unsent output as the sweep last saw it, and since when it has not moved.
        self._unsent = 0
        self._unsent_since = 0.0
        self._in_message = False
        self._begun = 0
        # The head of a request whose method llhttp does not know, as it arrives.
        self._odd: bytearray | None = None
        # The request that asked to upgrade, and the bytes read behind its head,
        # kept for its responder should it take the connection over.
        self._upgrade: _Incoming | None = None
        self._after_head = b""
        # Where the bytes go once a responder took the connection over.
        self._tunnel: Callable[[bytes], None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote_ip = str(peer[0])
        server = self.server
        if len(server.connections) >= server.max_connections:
            self.closing = True
            transport.abort()
            server.tell(
                OVER_CAPACITY,
                "refused a connection from %s: %d are open, the most this edge holds",
                self.remote_ip,
                server.max_connections,
            )
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(OUTPUT_HIGH, OUTPUT_LOW)
        self.deadline = time.monotonic() + server.head_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        active, self.active = self.active, None
        self.waiting.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if active is not None and active.responder is not None and not active.answered:
            self._tell_closed(active)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            if not self.closing:
                self._tunnel(data)
            return
        if self.closing or not self.reading:
            return
        self._read_at = time.monotonic()
        if self._odd is not None:
            self._odd_head(data)
            return
        between_messages = not self._in_message
        begun = self._begun
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            if between_messages and self._begun - begun <= 1:
                # The request starts this read: a method llhttp does not know is
                # still a token, and its location answers it (405 with Allow).
                self._odd = bytearray()
                self._odd_head(data)
            else:
                self._refuse_unreadable(400, "malformed request: invalid method", MALFORMED)
        except httptools.HttpParserUpgrade as upgrade:
            # What follows the head is not HTTP: nothing more is parsed. The request
            # is answered and the connection closes, unless its responder takes it
            # over (`take_over`), which then gets the bytes that came behind the head.
            self.reading = False
            rest = data[upgrade.args[0] :] if upgrade.args else b""
            if self._tunnel is not None:
                if rest:
                    self._tunnel(rest)
                return
            self._after_head = rest
            if self._upgrade is None or self._upgrade.answered:
                self._close_after_answers()
            else:
                self._update_reading()  # nothing more is read until it is decided
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._refuse_unreadable(431, "request head is larger than 64 KiB", HEAD_TOO_LARGE)
            else:
                self._fail(None, error.__context__ or error)
        except httptools.HttpParserError as error:
            self._refuse_unreadable(400, f"malformed request: {error}", MALFORMED)

    def eof_received(self) -> bool:
        return False  # a client that stops sending is gone: close, tell the responder

    def pause_writing(self) -> None:
        self._write_paused = True
        self._drained = asyncio.get_running_loop().create_future()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        self._next()

    # -- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._begun += 1
        self._url = b""
        self._headers = []
        self._head_size = 0
        if self.owing != HEAD_LATE:
            # A new connection's first head is owed from its start, later ones from
            # their first byte; a byte at a time does not make the head any later.
            self.owing = HEAD_LATE
            self.deadline = self._read_at + self.server.head_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_SIZE:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the whitespace before a value, not after it.
        self._headers.append((name, value.rstrip(OWS)))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_SIZE:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        if self.closing:
            return
        self.owing = BODY_LATE
        self.deadline = self._read_at + self.server.body_timeout
        parser = self.parser
        version = parser.get_http_version()
        keep_alive = parser.should_keep_alive()
        if keep_alive and version == "1.0":
            # llhttp lets an HTTP/1.0 keep-alive win over a close beside it; RFC
            # 9112 (9.6) says close wins.
            keep_alive = not _says_close(self._headers)
        upgrade = parser.should_upgrade()
        request = Request(
            parser.get_method().decode("ascii"),
            self._url.decode("latin-1"),
            "HTTP/" + version,
            self._headers,
            keep_alive and not upgrade,
            self.remote_ip,
            upgrade,
        )
        incoming = self.parsing = _Incoming(request)
        if upgrade:
            self._upgrade = incoming
        self.waiting.append(incoming)
        self._next()

    def on_body(self, chunk: bytes) -> None:
        incoming = self.parsing
        if incoming is None or self.closing:
            return
        if incoming.answered:
            # Answered early: the rest of the body is read and dropped, up to the limit.
            incoming.received += len(chunk)
            if incoming.received > self.max_body_size:
                self.abort()
        elif incoming is self.active and not incoming.held:
            self._deliver(incoming, chunk)
        else:
            incoming.chunks.append(chunk)
            if incoming is not self.active:
                self.waiting_bytes += len(chunk)
            self._update_reading()

    def on_message_complete(self) -> None:
        self._in_message = False
        self.owing = ""
        self.deadline = math.inf
        incoming, self.parsing = self.parsing, None
        if incoming is None or self.closing:
            return
        incoming.complete = True
        if incoming.answered:
            self.abort()  # answered before its body was read: see `finish`
        elif incoming is self.active and not incoming.held:
            self._complete(incoming)

    def _odd_head(self, data: bytes) -> None:
        """Read the head of a request with an unknown method; its body is never read."""
        assert self._odd is not None
        self._odd += data
        end = self._odd.find(b"\r\n\r\n")
        if end < 0:
            if len(self._odd) > MAX_HEAD_SIZE:
                self._refuse(431, "request head is larger than 64 KiB", HEAD_TOO_LARGE)
            return
        self.reading = False
        self.owing = ""
        self.deadline = math.inf
        lines = bytes(self._odd[:end]).split(b"\r\n")
        self._odd = None
        request_line = _REQUEST_LINE.fullmatch(lines[0])
        headers = [line.partition(b":") for line in lines[1:]]
        if request_line is None or any(not sep or not name for name, sep, _ in headers):
            self._refuse(400, "malformed request", MALFORMED)
            return
        method, target, version = (part.decode("latin-1") for part in request_line.groups())
        request = Request(
            method,
            target,
            version,
            [(name, value.strip(OWS)) for name, _, value in headers],
            False,  # what follows the head is unread: the connection closes after the answer
            self.remote_ip,
        )
        self.waiting.append(_Incoming(request, complete=True))
        self._next()

    # -- what responders call --------------------------------------------------------

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closing:
            if self.active is not None:
                self.active.sent = True
            transport.write(data)

    def take_over(self, receive: Callable[[bytes], None]) -> None:
        """Carry another protocol from now on: the active request (one that asked to
        upgrade, answered with its 101) owns the connection, and `receive` gets every
        byte the client sends after its head. No HTTP deadline applies any more; the
        stall deadline on unsent output does, and the responder hears `closed`."""
        incoming = self.active
        if incoming is None or incoming is not self._upgrade or self.closing:
            raise RuntimeError("only the active request that asked to upgrade can take over")
        self._tunnel = receive
        self.owing = ""
        self.deadline = math.inf
        self.waiting.clear()
        rest, self._after_head = self._after_head, b""
        self._update_reading()
        if rest:
            receive(rest)

    @property
    def writable(self) -> bool:
        """Whether the client takes what is written (the output is under its high-water mark)."""
        return not self._write_paused

    def unsent(self) -> int:
        """Bytes written that the client has not taken yet."""
        transport = self.transport
        return 0 if transport is None or self.closing else transport.get_write_buffer_size()

    def drop(self) -> None:
        """Close at once, discarding what the client has not taken (a reader too slow to keep)."""
        self.closing = True
        self.waiting.clear()
        if self.transport is not None:
            self.transport.abort()

    def drained(self) -> asyncio.Future[None]:
        """Done when the client has taken what was sent (flow control for big answers)."""
        if self._drained is not None:
            return self._drained
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def finish(self, keep_alive: bool = True) -> None:
        """The active request is answered: take the next one, or close when it is time."""
        incoming, self.active = self.active, None
        if incoming is None:
            return
        incoming.answered = True
        if self.closing:
            return
        if not keep_alive or not incoming.request.keep_alive:
            self._close_after_answers()
            return
        if not incoming.complete:
            # Its body is still arriving: read it to the end so the client sees
            # the answer instead of a reset, then close, since reading a body
            # nobody wants could take any time.
            self._update_reading()
            return
        if not self.owing and not self.waiting:
            self.owing = IDLE
            self.deadline = time.monotonic() + self.server.idle_timeout
        self._next()

    def hold(self) -> None:
        """Keep the active request's body back (and stop reading) until `release`."""
        if self.active is not None:
            self.active.held = True
            self._update_reading()

    def release(self) -> None:
        incoming = self.active
        if incoming is not None and incoming.held:
            incoming.held = False
            self._update_reading()
            self._flush(incoming)

    # -- what the server's sweep calls -----------------------------------------------

    def check(self, now: float) -> None:
        """Close the connection if its client is late with what it owes or takes nothing."""
        transport = self.transport
        if transport is None:
            return
        unsent = transport.get_write_buffer_size()
        if self._lingering:
            if unsent:
                self._linger_from = now
            elif now - self._linger_from > LINGER:
                transport.abort()  # the answers went out; the client did not close
                return
        if unsent != self._unsent:
            self._unsent, self._unsent_since = unsent, now
        elif unsent and now - self._unsent_since > self.server.idle_timeout:
            self._expire(OUTPUT_STALLED)
            return
        if now > self.deadline and not self._paused and not self.closing:
            self._expire(self.owing)

    # -- internals -------------------------------------------------------------------

    def _next(self) -> None:
        """Take waiting requests one after another, while the client takes the answers."""
        if self._dispatching:
            return  # a responder answered inside `_start`: the loop below goes on
        self._dispatching = True
        try:
            while (
                self.active is None and self.waiting and not self.closing and not self._write_paused
            ):
                incoming = self.waiting.popleft()
                if incoming.chunks:
                    self.waiting_bytes -= sum(len(chunk) for chunk in incoming.chunks)
                self._start(incoming)
        finally:
            self._dispatching = False
        refusal = self._refusal
        if refusal is not None and self.active is None and not self.waiting and not self.closing:
            self._answer_and_close(*refusal)
            return
        self._update_reading()

    def _start(self, incoming: _Incoming) -> None:
        self.active = incoming
        self.max_body_size = self.server.max_body_size
        try:
            incoming.responder = self.server.route(self, incoming.request)
        except tornado.httputil.HTTPInputError as error:
            self._refuse(400, f"malformed request: {error}", MALFORMED)
            return
        except Exception as error:
            self._fail(incoming, error)
            return
        self._flush(incoming)

    def _flush(self, incoming: _Incoming) -> None:
        """Hand the active request what of it arrived while it waited."""
        chunks, incoming.chunks = incoming.chunks, []
        for chunk in chunks:
            if self.active is not incoming or incoming.held:
                incoming.chunks.append(chunk)  # held again meanwhile, or gone
                continue
            self._deliver(incoming, chunk)
        if incoming.complete and self.active is incoming and not incoming.held:
            self._complete(incoming)

    def _deliver(self, incoming: _Incoming, chunk: bytes) -> None:
        incoming.received += len(chunk)
        if incoming.received > self.max_body_size:
            self._refuse_body(incoming)
            return
        assert incoming.responder is not None
        try:
            incoming.responder.body(chunk)
        except tornado.httputil.HTTPInputError as error:
            self._refuse(400, f"malformed request: {error}", MALFORMED)
        except Exception as error:
            self._fail(incoming, error)

    def _complete(self, incoming: _Incoming) -> None:
        assert incoming.responder is not None
        try:
            incoming.responder.complete()
        except tornado.httputil.HTTPInputError as error:
            if self.active is incoming and not incoming.answered:
                self._refuse(400, f"malformed request: {error}", MALFORMED)
        except Exception as error:
            self._fail(incoming, error)

    def _update_reading(self) -> None:
        """Read on unless the client takes no answers, too much waits in line, or the
        active request holds its body back."""
        transport = self.transport
        if transport is None or self.closing:
            return
        active = self.active
        pause = (
            self._write_paused
            or len(self.waiting) >= PIPELINE_LIMIT
            or self.waiting_bytes >= PIPELINE_BYTES
            or (active is not None and active.held)
            # An upgrade not yet taken over: what follows its head waits in the socket.
            or (not self.reading and self._upgrade is not None and self._tunnel is None)
        )
        if pause != self._paused:
            self._paused = pause
            now = time.monotonic()
            if pause:
                self._paused_at = now
                transport.pause_reading()
            else:
                # The client could not send while the edge did not read.
                self.deadline += now - self._paused_at
                transport.resume_reading()

    def _expire(self, event: str) -> None:
        server = self.server
        transport = self.transport
        assert transport is not None
        if event == IDLE:
            server.events[IDLE] += 1
            self.abort()
        elif event == OUTPUT_STALLED:
            server.tell(
                OUTPUT_STALLED,
                "dropped a connection from %s: its client took none of %d bytes for %g s",
                self.remote_ip,
                self._unsent,
                server.idle_timeout,
            )
            self.closing = True
            self.waiting.clear()
            transport.abort()  # close() would wait for the output to go out
        else:
            if event == HEAD_LATE:
                why = f"the request head did not arrive within {server.head_timeout:g} s"
            else:
                why = f"the request body did not arrive within {server.body_timeout:g} s"
            late = self.parsing
            if event == HEAD_LATE and not self._in_message and self._odd is None:
                # Not a byte of a request: nothing to answer, as for a connection a
                # browser opened ahead and never used.
                server.tell(
                    event,
                    "closed a connection from %s: no request came within %g s",
                    self.remote_ip,
                    server.head_timeout,
                )
                self.abort()
            elif self.active is None or self.active is late:
                self._refuse(408, why, event)
            else:
                # An answer is under way for a request before the late one.
                server.tell(event, "closed a connection from %s: %s", self.remote_ip, why)
                self.abort()
            if transport.get_write_buffer_size():
                transport.abort()

    def _refuse_body(self, incoming: _Incoming) -> None:
        if incoming is self.active:
            self._refuse(413, "request body is too large", BODY_TOO_LARGE)
        else:
            self.server.events[BODY_TOO_LARGE] += 1
            self.abort()

    def _refuse_unreadable(self, status: int, why: str, event: str) -> None:
        """Refuse what the parser could not read, after the answers owed to the requests
        before it: nothing after it is read, and the connection closes with the refusal."""
        culprit = self.parsing
        if culprit is not None and culprit is self.active:
            self._refuse(status, why, event)  # the request being answered is the bad one
            return
        if culprit is not None and culprit in self.waiting:
            self.waiting.remove(culprit)
        if self.active is None and not self.waiting:
            self._refuse(status, why, event)
            return
        self.server.tell(event, "refused a request from %s: %d %s", self.remote_ip, status, why)
        self.reading = False
        self._refusal = (status, why)
        self._update_reading()

    def _refuse(self, status: int, why: str, event: str) -> None:
        """Answer a request the client got wrong and close: what follows it cannot be trusted."""
        self.server.tell(event, "refused a request from %s: %d %s", self.remote_ip, status, why)
        self._answer_and_close(status, why)

    def _fail(self, incoming: _Incoming | None, error: BaseException) -> None:
        """The edge failed on a request: a 500 if nothing of its answer went out, and close."""
        if incoming is None:
            self.server.tell(FAILED, "failed on a request", level=logging.ERROR, exc_info=error)
        else:
            request = incoming.request
            self.server.tell(
                FAILED,
                "failed on %s %s",
                request.method,
                request.target,
                level=logging.ERROR,
                exc_info=error,
            )
            if self.active is not incoming or incoming.answered:
                return
        self._answer_and_close(500, "the edge failed on this request")

    def _answer_and_close(self, status: int, why: str) -> None:
        self.reading = False
        active, self.active = self.active, None
        if active is None or not (active.answered or active.sent):
            body = (why + "\n").encode()
            head = render_head(
                status,
                (
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                ),
            )
            self.send(head + CRLF + body)
            self.server.responses[str(status)] += 1
        self.abort()
        if active is not None and not active.answered and active.responder is not None:
            active.answered = True
            self._tell_closed(active)

    def _tell_closed(self, incoming: _Incoming) -> None:
        assert incoming.responder is not None
        try:
            incoming.responder.closed()
        except Exception as error:
            self.server.tell(
                FAILED,
                "a responder failed when its connection ended",
                level=logging.ERROR,
                exc_info=error,
            )

    def _close_after_answers(self) -> None:
        """Close once what was written has gone out; requests not yet answered are dropped."""
        if self.closing:
            return
        if self.active is not None and not self.active.answered:
            # Answer the one in hand first; `finish` comes back here.
            self.waiting.clear()
            self.active.request.keep_alive = False
            return
        self._linger()

    def _linger(self) -> None:
        """Close once what was written went out, reading and dropping what the client still
        sends until it closes too or `LINGER` seconds passed. Closing a socket that holds
        unread bytes makes the kernel reset the connection, and the reset drops what the
        kernel had not sent yet: the end of a long answer, a WebSocket's close frame."""
        self.closing = True
        self.waiting.clear()
        transport = self.transport
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        self._linger_from = time.monotonic()
        transport.write_eof()  # once the buffer went out: the client sees the end
        if self._paused:
            self._paused = False
            transport.resume_reading()

    def abort(self) -> None:
        """Close the connection; what was written still goes out first (asyncio flushes
        a transport's buffer before closing it). Requests not yet answered are dropped."""
        self.closing = True
        self.waiting.clear()
        if self.transport is not None:
            self.transport.close()


class HTTPServer:
    """The listening sockets of the edge's port and every connection they accepted."""

    def __init__(
        self,
        route: Router,
        responses: Counter[str],
        events: Counter[str],
        max_connections: int,
        max_body_size: int,
        idle_timeout: float,
        head_timeout: float,
        body_timeout: float,
    ) -> None:
        self.route = route
        self.responses = responses
        self.events = events
        self.max_connections = max_connections
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.log = ThrottledLog(log)
        self.connections: set[Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None

    def tell(
        self,
        event: str,
        message: str,
        *args: object,
        level: int = logging.WARNING,
        exc_info: BaseException | None = None,
    ) -> None:
        """Count `event` and log it, unless it was logged often enough lately."""
        self.events[event] += 1
        self.log.log(level, event, message, *args, exc_info=exc_info)

    async def serve(self, sockets: Iterable[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            # Inherited by every connection accepted. A client whose host vanished
            # never acknowledges what it is sent, and an EventSource stream's few bytes
            # of keepalive fit in the kernel's buffer, so the edge would see no output
            # stalled: the kernel gives such a connection up after twice `idle_timeout`
            # instead of after its own retries (about 15 minutes). Twice, so that a
            # client that is there but reads nothing meets the edge's own rule first,
            # which counts it (`OUTPUT_STALLED`). Linux's option; elsewhere (a
            # developer's macOS) the kernel's own retries decide.
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.idle_timeout * 2000)
                )
            server = await loop.create_server(
                lambda: Connection(self),
                sock=sock,
                backlog=1024,
            )
            self._servers.append(server)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        # Often enough that a deadline is kept to within a quarter of itself.
        shortest = min(self.head_timeout, self.body_timeout, self.idle_timeout)
        interval = min(1.0, max(0.05, shortest / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check(now)

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
