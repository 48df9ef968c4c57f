"""Runs the broker, an edge, or both in one asyncio loop until SIGINT or SIGTERM
(SIGHUP has a broker read its CURVE allow-lists again).

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
import gc
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import uvloop

from broker.config import BrokerConfig
from broker.server import Broker, Endpoints
from edge.config import EdgeConfig

# After a stop request, how long the parts get to answer held polls and close.
STOP_GRACE = 5.0
# The cyclic collector's thresholds (young generation, then how many of its
# collections per middle one, and per full one). A server makes a few short-lived
# containers per message and keeps the messages it holds: with CPython's
# defaults (700, 10, 10) it walks the held messages again every 70,000
# allocations, and a full collection of W3h's embedded server took 0.18–0.19 s.
COLLECTOR_THRESHOLDS = (2000, 50, 100)
# Between a worker's death and its replacement, so a worker failing at start
# does not make its parent spin.
RESPAWN_DELAY = 1.0

log = logging.getLogger("pushserver")


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
    run_loop(_serve(broker_config, edge_config, wsgi_app, on_ready))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop, which serves long-polls with less CPU than asyncio's own loop."""
    uvloop.run(main)


async def _serve(
    broker_config: BrokerConfig | None,
    edge_config: EdgeConfig | None,
    wsgi_app: Any | None,
    on_ready: Callable[[Listening], None],
) -> None:
    parts: list[_Part] = []
    endpoints = None
    broker = None
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
                edge_config,
                events=endpoints.events,
                control=endpoints.control,
                ingress=endpoints.ingress,
            )
        # The edge follows this broker without sockets, unless it must follow a pair.
        alone = edge_config.standby_events is None and edge_config.standby_ingress is None
        local = broker.local_link() if broker is not None and alone else None
        edge = Edge(edge_config, wsgi_app=wsgi_app, local=local)
        urls = edge.listen()
        parts.append(edge)

    settle_collector()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        for part in parts:
            part.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    if broker is not None:
        # `systemctl reload`: the allow-lists again, without dropping a connection.
        loop.add_signal_handler(signal.SIGHUP, broker.reload)
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
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def settle_collector() -> None:
    """Leave what start-up made (Django, the settings, the sockets) out of every later
    collection, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def run_workers(
    edge_config: EdgeConfig,
    workers: int,
    *,
    wsgi_app: Any | None = None,
    on_ready: Callable[[Listening], None] = lambda listening: None,
) -> None:
    """Run `workers` edge processes on one port until SIGINT or SIGTERM.

    Each worker is a whole edge with its own link to the broker; the kernel
    spreads connections over them (SO_REUSEPORT). This process only holds
    the port (bound, never listening, so it is never handed a connection),
    forwards stop signals, and starts a worker again if one dies.
    """
    reserved = _reserve_port(edge_config.address, edge_config.port)
    config = dataclasses.replace(edge_config, port=reserved.getsockname()[1], reuse_port=True)
    children: set[int] = set()
    stopping = False
    # Each worker writes a byte here once it listens, so the banner never
    # announces a port that still refuses connections.
    ready_read, ready_write = os.pipe()

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(ready_read)
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)

                def listening(_: Listening) -> None:
                    os.write(ready_write, b".")

                run_loop(_serve(None, config, wsgi_app, listening))
            except BaseException:
                log.exception("edge worker %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        children.add(pid)

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in range(workers):
            spawn()
        _await_ready(ready_read, workers)
        host = f"[{config.address}]" if ":" in config.address else config.address
        on_ready(Listening(None, [f"http://{host}:{config.port}/"]))
        log.info("edge workers on port %d: %s", config.port, sorted(children))
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            children.discard(pid)
            if not stopping:
                log.warning("edge worker %d ended (status %d); starting another", pid, status)
                time.sleep(RESPAWN_DELAY)
                spawn()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        reserved.close()
        os.close(ready_read)
        os.close(ready_write)


def _await_ready(ready: int, workers: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < workers:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([ready], [], [], remaining)[0]:
            raise RuntimeError(f"only {seen} of {workers} edge workers started listening")
        seen += len(os.read(ready, workers - seen))


def _reserve_port(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((address, port))
    return reserved
