"""Requests the subscriber location does not take, handed to Tornado's application.

The publisher location, the metrics and the WSGI fallback are Tornado
request handlers; they see the edge's connection through `Exchange`, an
implementation of Tornado's `HTTPConnection` interface, and behave as under
Tornado's own server: framing by Content-Length or chunked, HTTP/1.0
keep-alive, ``Expect: 100-continue``, a body withheld from a streaming
handler until its `prepare` has run, and a connection closed after an
answer given before the body was read. What Tornado's code raises goes to
the connection: `HTTPInputError` (a request it cannot read, such as a bad
Host) is answered 400, anything else 500, and neither is retried on the
handler, whose state after a failure is unknown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import tornado.httputil
import tornado.iostream
import tornado.log
import tornado.web

from broker.throttled_log import ThrottledLog
from edge.connection import CRLF, Connection, Request, render_head

log = logging.getLogger("pushserver.edge")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Context:
    """What Tornado's HTTPServerRequest reads of its connection."""

    __slots__ = ("remote_ip", "protocol")

    def __init__(self, remote_ip: str) -> None:
        self.remote_ip = remote_ip
        self.protocol = "http"


class Exchange(tornado.httputil.HTTPConnection):
    """One request's answer written through the edge's connection, as Tornado writes it."""

    def __init__(self, connection: Connection, request: Request) -> None:
        self.connection = connection
        self.request = request
        self.context = _Context(request.remote_ip)
        self.keep_alive = request.keep_alive
        self.started = False
        self.finished = False
        self._chunked = False
        self._remaining: int | None = None
        self._close_callback: Callable[[], None] | None = None

    def write_headers(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        assert isinstance(start_line, tornado.httputil.ResponseStartLine)
        request = self.request
        status = start_line.code
        bodiless = request.method == "HEAD" or status in (204, 304) or status < 200
        length = headers.get("Content-Length")
        self._chunked = (
            request.version == "HTTP/1.1"
            and not bodiless
            and length is None
            and "Transfer-Encoding" not in headers
        )
        if self._chunked:
            headers["Transfer-Encoding"] = "chunked"
        # Without a length or chunks, the end of the body is the end of the connection.
        if not bodiless and length is None and not self._chunked:
            self.keep_alive = False
        if not self.keep_alive and request.version == "HTTP/1.1":
            headers["Connection"] = "close"
        elif self.keep_alive and request.version == "HTTP/1.0":
            headers["Connection"] = "Keep-Alive"
        self._remaining = 0 if bodiless else int(length) if length is not None else None
        self.started = True
        head = render_head(status, headers.get_all()) + CRLF
        return self._write(head + self._frame(chunk) if chunk else head)

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        return self._write(self._frame(chunk))

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._close_callback = None
        if self._remaining:
            log.error(
                "%s %s answered short of its Content-Length",
                self.request.method,
                self.request.target,
            )
            self.connection.abort()
            return
        if self._chunked:
            self.connection.send(b"0\r\n\r\n")
        self.connection.finish(self.keep_alive)

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        self.connection.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        pass  # every body has the server's deadline

    def close(self) -> None:
        self.finished = True
        self.connection.abort()

    def lost(self) -> None:
        self.finished = True
        callback, self._close_callback = self._close_callback, None
        if callback is not None:
            callback()

    def _frame(self, chunk: bytes) -> bytes:
        if self._remaining is not None:
            self._remaining -= len(chunk)
            if self._remaining < 0:
                self.connection.abort()
                raise tornado.httputil.HTTPOutputError(
                    "tried to write more than the Content-Length"
                )
        if self._chunked and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def _write(self, data: bytes) -> asyncio.Future[None]:
        if self.connection.closing:
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(tornado.iostream.StreamClosedError())
            failed.exception()  # nobody may wait on it; do not log it as unretrieved
            return failed
        if data:
            self.connection.send(data)
        return self.connection.drained()


class TornadoResponder:
    """Feeds one request to Tornado's application, holding its body until the handler is ready."""

    def __init__(
        self, application: tornado.web.Application, connection: Connection, request: Request
    ) -> None:
        self.request = request
        self.exchange = Exchange(connection, request)
        self.delegate = application.start_request(connection, self.exchange)
        self.completed = False
        ready = self.delegate.headers_received(request.start_line(), request.tornado_headers())
        if ready is None:
            self._open()
        else:
            # A streaming handler takes its body once `prepare` has run.
            connection.hold()
            asyncio.ensure_future(ready).add_done_callback(lambda _: self._open())

    def body(self, chunk: bytes) -> None:
        self.delegate.data_received(chunk)

    def complete(self) -> None:
        self.completed = True
        self.delegate.finish()

    def closed(self) -> None:
        self.exchange.lost()
        if not self.completed:
            # As Tornado's own connection does: the message delegate hears of a
            # close only while its request is still arriving.
            self.delegate.on_connection_close()

    def _open(self) -> None:
        exchange = self.exchange
        if exchange.finished:
            return  # answered by prepare, before any of the body
        if (
            self.request.version == "HTTP/1.1"
            and not exchange.started
            and (self.request.header(b"expect") or "").lower() == "100-continue"
        ):
            exchange.connection.send(CONTINUE)
        exchange.connection.release()


def request_log() -> Callable[[tornado.web.RequestHandler], None]:
    """Tornado's access log (its `log_function`), with answers to bad requests (4xx),
    which clients can ask for as fast as they like, logged a few a minute per status."""
    throttled = ThrottledLog(tornado.log.access_log)

    def log_request(handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        request = handler.request
        line = (
            "%d %s %s (%s) %.2fms",
            status,
            request.method,
            request.uri,
            request.remote_ip,
            1000.0 * request.request_time(),
        )
        if 400 <= status < 500:
            throttled.warning(str(status), *line)
        else:
            tornado.log.access_log.log(logging.INFO if status < 400 else logging.ERROR, *line)

    return log_request
