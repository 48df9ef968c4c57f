"""Runs an edge: the HTTP server and its feed from the broker, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil

from edge.app import build_router
from edge.config import EdgeConfig
from edge.feed import Feed
from edge.passthrough import Passthrough

log = logging.getLogger("pushserver.edge")

# Descriptors kept back for the broker's sockets, logs and Django's files.
RESERVED_FDS = 64


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards `wanted` and return the connections the edge may hold.

    Out of descriptors, Tornado's accept loop spins and logs a traceback per
    turn; capping connections below the limit keeps it from getting there.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + RESERVED_FDS
    if soft < target:
        new_soft = target if hard == resource.RLIM_INFINITY else min(target, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, min(wanted, soft - RESERVED_FDS))


class CappedHTTPServer(tornado.httpserver.HTTPServer):
    """Closes connections beyond `max_connections` at once instead of running out of files."""

    def initialize(self, *args: Any, max_connections: int = 10_000, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.open_connections = 0

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.open_connections >= self.max_connections:
            stream.close()
            return
        self.open_connections += 1

        def closed() -> None:
            self.open_connections -= 1

        stream.set_close_callback(closed)
        super().handle_stream(stream, address)


class Edge:
    def __init__(self, config: EdgeConfig, wsgi_app: Any | None = None) -> None:
        self.config = config
        self.feed = Feed(config)
        self.passthrough = Passthrough(config)
        self.router = build_router(config, self.feed, self.passthrough, wsgi_app)
        self._server: CappedHTTPServer | None = None
        self._stopping = asyncio.Event()

    def listen(self) -> list[str]:
        """Bind the HTTP port (0 picks one) and return the URLs it serves."""
        config = self.config
        sockets = tornado.netutil.bind_sockets(
            config.port, config.address or None, reuse_port=config.reuse_port
        )
        self._server = CappedHTTPServer(
            self.router,
            max_connections=raise_fd_limit(config.max_connections),
            # Bodies are checked by the publisher location, which answers 413.
            max_body_size=config.max_message_size + 1,
            idle_connection_timeout=max(60.0, config.long_poll_timeout * 2),
        )
        self._server.add_sockets(sockets)
        urls = []
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            if sock.family == socket.AF_INET6:
                host = f"[{host}]"
            urls.append(f"http://{host}:{port}/")
        return urls

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        if self._server is None:
            self.listen()
        assert self._server is not None
        feed_task = asyncio.create_task(self.feed.run())
        try:
            await self._stopping.wait()
        finally:
            self._server.stop()
            released = 0
            for buffer in self.feed.buffers.values():
                for waiter in list(buffer.waiters):
                    waiter.release()
                    released += 1
            if released:
                log.info("answered %d held polls before stopping", released)
                # Let the handlers write their 304s before connections close.
                await asyncio.sleep(0.1)
            await self.passthrough.close()
            self.feed.stop()
            await feed_task
            await self._server.close_all_connections()
