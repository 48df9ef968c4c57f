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
with their bodies; past `PIPELINE_LIMIT` the connection stops reading until
the queue drains. Whatever answers a request is a `Responder`, chosen by
the server's router when the request's head has arrived: the subscriber
location's own, or the bridge to Tornado's application for everything else.
A responder writes with `send` and ends its answer with `finish`, after
which the next request is taken, or the connection closed when either side
asked for that.

Bad requests are answered here, before any responder: a malformed message
400, a head over `MAX_HEAD_SIZE` 431, each with a short reason and the
connection closed. Connections beyond `max_connections` are closed as they
arrive rather than running the process out of descriptors, and a
connection idle (or still sending its head) longer than `idle_timeout` is
closed by a sweep, not by a timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
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

log = logging.getLogger("pushserver.edge")

MAX_HEAD_SIZE = 64 * 1024
# Requests parsed ahead of the one being answered, or bytes of their bodies,
# beyond which the connection stops reading.
PIPELINE_LIMIT = 16
PIPELINE_BYTES = 1024 * 1024

CRLF = b"\r\n"
KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"
CLOSE_LINE = b"Connection: close\r\n"


def header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as they go on the wire, each ending in CRLF.

    Header values come from the edge and from applications; a CR or LF in one
    would let it forge headers, so it is refused.
    """
    lines = []
    for name, value in headers:
        line = f"{name}: {value}\r\n"
        if "\r" in line[:-2] or "\n" in line[:-2]:
            raise ValueError(f"CR or LF in response header {name!r}")
        lines.append(line.encode("latin-1"))
    return b"".join(lines)


def render_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response's status line and header lines, without the blank line that ends them."""
    status_line = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("latin-1")
    return status_line + header_lines(headers)


@dataclass(slots=True)
class Request:
    """A request's head as it arrived: the method and target as sent, headers undecoded."""

    method: str
    target: str
    version: str
    raw_headers: list[tuple[bytes, bytes]]
    # Whether the client keeps the connection open after the answer.
    keep_alive: bool
    # The client's address, as HTTPServerRequest.remote_ip has it.
    remote_ip: str

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

    def server_request(self) -> tornado.httputil.HTTPServerRequest:
        """The request as Tornado's code (and the passthrough) reads one."""
        request = tornado.httputil.HTTPServerRequest(
            start_line=self.start_line(), headers=self.tornado_headers()
        )
        request.remote_ip = self.remote_ip
        return request


class Responder(Protocol):
    """What answers one request; the connection tells it what arrives and whether it left."""

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


class _HeadTooLarge(Exception):
    pass


class Connection(asyncio.Protocol):
    __slots__ = (
        "server",
        "transport",
        "remote_ip",
        "parser",
        "active",
        "parsing",
        "waiting",
        "waiting_bytes",
        "last_active",
        "max_body_size",
        "closing",
        "reading",
        "_url",
        "_headers",
        "_head_size",
        "_paused",
        "_drained",
        "_in_message",
        "_begun",
        "_odd",
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
        self.last_active = time.monotonic()
        self.max_body_size = server.max_body_size
        self.closing = False
        # False once what arrives can no longer be read as HTTP.
        self.reading = True
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._in_message = False
        self._begun = 0
        # The head of a request whose method llhttp does not know, as it arrives.
        self._odd: bytearray | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.max_connections:
            self.closing = True
            transport.abort()
            return
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote_ip = str(peer[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        active, self.active = self.active, None
        self.waiting.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if active is not None and active.responder is not None and not active.answered:
            try:
                active.responder.closed()
            except Exception:
                log.exception("a responder failed when its client left")

    def data_received(self, data: bytes) -> None:
        if self.closing or not self.reading:
            return
        self.last_active = time.monotonic()
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
                self._reject(400, "malformed request: invalid method")
        except httptools.HttpParserUpgrade:
            # No protocol is served but HTTP: the request is answered, then the
            # connection closes, since what follows on it is not HTTP.
            self.reading = False
            self._close_after_answers()
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._reject(431, "request head is larger than 64 KiB")
            else:
                log.error("failed on a request", exc_info=error.__context__ or error)
                self._reject(500, "the edge failed on this request")
        except httptools.HttpParserError as error:
            self._reject(400, f"malformed request: {error}")

    def eof_received(self) -> bool:
        return False  # a client that stops sending is gone: close, tell the responder

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._begun += 1
        self._url = b""
        self._headers = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_SIZE:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_SIZE:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        if self.closing:
            return
        parser = self.parser
        request = Request(
            parser.get_method().decode("ascii"),
            self._url.decode("latin-1"),
            "HTTP/" + parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
            self.remote_ip,
        )
        incoming = self.parsing = _Incoming(request)
        if self.active is None:
            self._start(incoming)
        else:
            self.waiting.append(incoming)
            self._update_reading()

    def on_body(self, chunk: bytes) -> None:
        incoming = self.parsing
        if incoming is None:
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
        incoming, self.parsing = self.parsing, None
        if incoming is None:
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
                self._reject(431, "request head is larger than 64 KiB")
            return
        self.reading = False
        lines = bytes(self._odd[:end]).split(b"\r\n")
        self._odd = None
        request_line = _REQUEST_LINE.fullmatch(lines[0])
        headers = [line.partition(b":") for line in lines[1:]]
        if request_line is None or any(not sep or not name for name, sep, _ in headers):
            self._reject(400, "malformed request")
            return
        method, target, version = (part.decode("latin-1") for part in request_line.groups())
        request = Request(
            method,
            target,
            version,
            [(name, value.strip()) for name, _, value in headers],
            False,  # what follows the head is unread: the connection closes after the answer
            self.remote_ip,
        )
        incoming = _Incoming(request, complete=True)
        if self.active is None:
            self._start(incoming)
        else:
            self.waiting.append(incoming)

    # -- what responders call --------------------------------------------------------

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closing:
            if self.active is not None:
                self.active.sent = True
            transport.write(data)

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
        self.last_active = time.monotonic()
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

    # -- internals -------------------------------------------------------------------

    def _start(self, incoming: _Incoming) -> None:
        self.active = incoming
        self.max_body_size = self.server.max_body_size
        try:
            incoming.responder = self.server.route(self, incoming.request)
        except Exception:
            log.exception("failed on %s %s", incoming.request.method, incoming.request.target)
            if self.active is incoming and not incoming.answered:
                self._reject(500, "the edge failed on this request")
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
        except Exception:
            log.exception("failed on %s %s", incoming.request.method, incoming.request.target)
            self._reject(500, "the edge failed on this request")

    def _complete(self, incoming: _Incoming) -> None:
        assert incoming.responder is not None
        try:
            incoming.responder.complete()
        except Exception:
            log.exception("failed on %s %s", incoming.request.method, incoming.request.target)
            if self.active is incoming and not incoming.answered:
                self._reject(500, "the edge failed on this request")

    def _next(self) -> None:
        while self.active is None and self.waiting and not self.closing:
            incoming = self.waiting.popleft()
            self.waiting_bytes -= sum(len(chunk) for chunk in incoming.chunks)
            self._start(incoming)
        self._update_reading()

    def _update_reading(self) -> None:
        """Read on unless too much waits in line or the active request holds its body back."""
        transport = self.transport
        if transport is None or self.closing:
            return
        active = self.active
        pause = (
            len(self.waiting) >= PIPELINE_LIMIT
            or self.waiting_bytes >= PIPELINE_BYTES
            or (active is not None and active.held)
        )
        if pause != self._paused:
            self._paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _refuse_body(self, incoming: _Incoming) -> None:
        if incoming is self.active:
            self._reject(413, "request body is too large")
        else:
            self.abort()

    def _reject(self, status: int, why: str) -> None:
        """Answer an unreadable request and close: what follows it cannot be trusted."""
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
            try:
                active.responder.closed()
            except Exception:
                log.exception("a responder failed when its connection was dropped")

    def _close_after_answers(self) -> None:
        """Close once what was written has gone out; requests not yet answered are dropped."""
        if self.closing:
            return
        if self.active is not None and not self.active.answered:
            # Answer the one in hand first; `finish` comes back here.
            self.waiting.clear()
            self.active.request.keep_alive = False
            return
        self.abort()

    def abort(self) -> None:
        """Close the connection; what was written still goes out first (asyncio flushes
        a transport's buffer before closing it). Requests not yet answered are dropped."""
        self.closing = True
        self.waiting.clear()
        if self.transport is not None:
            self.transport.close()

    def idle_since(self) -> float | None:
        """When the connection last did something, if nothing is being answered now."""
        return None if self.active is not None else self.last_active


class HTTPServer:
    """The listening sockets of the edge's port and every connection they accepted."""

    def __init__(
        self,
        route: Router,
        responses: Counter[str],
        max_connections: int,
        max_body_size: int,
        idle_timeout: float,
    ) -> None:
        self.route = route
        self.responses = responses
        self.max_connections = max_connections
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.connections: set[Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def serve(self, sockets: Iterable[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(
                lambda: Connection(self),
                sock=sock,
                backlog=1024,
            )
            self._servers.append(server)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.idle_timeout / 4))
            deadline = time.monotonic() - self.idle_timeout
            for connection in list(self.connections):
                since = connection.idle_since()
                if since is not None and since < deadline:
                    connection.abort()

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
