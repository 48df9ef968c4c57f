"""Runs an edge: the HTTP server, its feed from the broker and its ingress link to it,
started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections import Counter
from typing import Any

import tornado.netutil

from broker.local import LocalLink
from edge.app import build_router
from edge.config import EdgeConfig
from edge.connection import HTTPServer
from edge.feed import Feed
from edge.ingress import Ingress
from edge.passthrough import Passthrough

log = logging.getLogger("pushserver.edge")

# Descriptors kept back for the broker's sockets, logs and Django's files.
RESERVED_FDS = 64
# At a stop, how long HTTP publishes already taken may wait for the broker's acks.
PUBLISH_GRACE = 1.0


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards `wanted` and return the connections the edge may hold.

    Out of descriptors, an accept loop spins and logs an error per turn;
    capping connections below the limit keeps it from getting there.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + RESERVED_FDS
    if soft < target:
        new_soft = target if hard == resource.RLIM_INFINITY else min(target, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, min(wanted, soft - RESERVED_FDS))


class Edge:
    def __init__(
        self, config: EdgeConfig, wsgi_app: Any | None = None, local: LocalLink | None = None
    ) -> None:
        """`local`: the broker of this process, whose publishes and events need no socket."""
        self.config = config
        self.feed = Feed(config, local)
        self.ingress = Ingress(config, local, self.feed.counters)
        self.passthrough = Passthrough(config)
        # Deadlines missed, connections refused, malformed requests: counted by the
        # HTTP server, shown by the metrics.
        self.connection_events: Counter[str] = Counter()
        self.router = build_router(
            config,
            self.feed,
            self.ingress,
            self.passthrough,
            self.open_connections,
            self.connection_events,
            wsgi_app,
        )
        self._server: HTTPServer | None = None
        self._sockets: list[socket.socket] = []
        self._stopping = asyncio.Event()

    def open_connections(self) -> int:
        return 0 if self._server is None else len(self._server.connections)

    def listen(self) -> list[str]:
        """Bind the HTTP port (0 picks one) and return the URLs it serves."""
        config = self.config
        sockets = tornado.netutil.bind_sockets(
            config.port, config.address or None, reuse_port=config.reuse_port
        )
        self._sockets = sockets
        self._server = HTTPServer(
            self.router,
            self.router.responses,
            self.connection_events,
            max_connections=raise_fd_limit(config.max_connections),
            # Bodies are checked by the publisher location, which answers 413.
            max_body_size=config.max_message_size + 1,
            idle_timeout=max(60.0, config.long_poll_timeout * 2),
            head_timeout=config.head_timeout,
            body_timeout=config.body_timeout,
        )
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
        self.ingress.start()
        await self._server.serve(self._sockets)
        feed_task = asyncio.create_task(self.feed.run())
        try:
            await self._stopping.wait()
        finally:
            self._server.stop_accepting()
            # Held polls get 304 and streams end, so clients go on at another edge.
            released = sum(buffer.release_all() for buffer in list(self.feed.buffers.values()))
            if released:
                log.info("ended %d held polls and streams before stopping", released)
                # Let the 304s and streams' last events go out before connections close.
                await asyncio.sleep(0.1)
            await self.passthrough.close()
            await self.ingress.close(min(PUBLISH_GRACE, self.config.broker_timeout))
            self.feed.stop()
            await feed_task
            await self._server.close_all()
