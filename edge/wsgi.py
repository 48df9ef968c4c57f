"""Serves a WSGI application (Django, under `--allrequests`) beside the push locations.

Views run in a thread pool so a slow one never stalls the event loop.
Two traps of Tornado's WSGIContainer are handled here: Django writes each
Set-Cookie value with a leading space, which Tornado 6.5+ refuses as an
invalid header (leaving the request unanswered), and an application that
raises leaves the request unanswered too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tornado.httputil
import tornado.wsgi

log = logging.getLogger("pushserver.edge")

# Django views may be slow; this many run at once before requests queue.
WSGI_THREADS = 16

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def strip_header_values(app: WSGIApp) -> WSGIApp:
    def stripped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [(k, v.strip()) for k, v in headers], exc_info)

        return app(environ, start)

    return stripped


class WSGIFallback(tornado.wsgi.WSGIContainer):
    def __init__(self, app: WSGIApp) -> None:
        super().__init__(
            strip_header_values(app), executor=ThreadPoolExecutor(WSGI_THREADS, "pushserver-wsgi")
        )

    async def handle_request(self, request: tornado.httputil.HTTPServerRequest) -> None:
        try:
            await super().handle_request(request)
        except Exception:
            log.exception("the WSGI application failed on %s %s", request.method, request.uri)
            connection = request.connection
            if connection is None:
                return
            body = b"the site failed to answer this request\n"
            headers = tornado.httputil.HTTPHeaders(
                {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
            )
            start = tornado.httputil.ResponseStartLine("HTTP/1.1", 500, "Internal Server Error")
            try:
                connection.write_headers(start, headers, chunk=body)
                connection.finish()
            except Exception:
                # Headers already went out: all that is left is to drop the connection.
                connection.close()  # type: ignore[attr-defined]
