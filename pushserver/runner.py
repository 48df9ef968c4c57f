"""Runs the broker, an edge, or both in one asyncio loop until SIGINT or SIGTERM.

`runpushserver` turns settings and arguments into configurations; this
module only wires the parts: bind everything first (so the banner names
real addresses, ports of 0 or ``*`` resolved), point an embedded edge at
its broker's bound endpoints, then run until a signal or until one part
fails. The trap: ``Broker.bind`` and ``Edge.listen`` need the running loop,
so nothing is built before `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from broker.config import BrokerConfig
from broker.server import Broker, Endpoints
from edge.config import EdgeConfig

# After a stop request, how long the parts get to answer held polls and close.
STOP_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class Listening:
    """Where the started parts really listen; None for a part not run."""

    broker: Endpoints | None
    edge_urls: list[str] | None


class _Part(Protocol):
    def stop(self) -> None: ...

    async def run(self) -> None: ...


def run(
    broker_config: BrokerConfig | None,
    edge_config: EdgeConfig | None,
    *,
    wsgi_app: Any | None = None,
    on_ready: Callable[[Listening], None] = lambda listening: None,
) -> None:
    """Run the given parts until SIGINT or SIGTERM; with both, the edge uses this broker."""
    if broker_config is None and edge_config is None:
        raise ValueError("nothing to run: give a broker configuration, an edge one, or both")
    asyncio.run(_serve(broker_config, edge_config, wsgi_app, on_ready))


async def _serve(
    broker_config: BrokerConfig | None,
    edge_config: EdgeConfig | None,
    wsgi_app: Any | None,
    on_ready: Callable[[Listening], None],
) -> None:
    parts: list[_Part] = []
    endpoints = None
    if broker_config is not None:
        broker = Broker(broker_config)
        endpoints = broker.bind()
        parts.append(broker)
    urls = None
    if edge_config is not None:
        # Imported here so `--role=broker` never loads Tornado.
        from edge.server import Edge

        if endpoints is not None:
            edge_config = dataclasses.replace(
                edge_config, events=endpoints.events, control=endpoints.control
            )
        edge = Edge(edge_config, wsgi_app=wsgi_app)
        urls = edge.listen()
        parts.append(edge)

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        for part in parts:
            part.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        tasks = [asyncio.create_task(part.run()) for part in parts]
        on_ready(Listening(endpoints, urls))
        # A part that returns or fails on its own takes the others down with it.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        by_signal = stopping.is_set()
        stop()
        done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in done:
            task.result()
        if not by_signal:
            raise RuntimeError("a push server part stopped on its own")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
