"""A broker and several edge processes: any edge serves any client's cursor, on open ZeroMQ
links and with CURVE on every link (the `links` fixture)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx

from ops import launch
from tests.client import fresh, path, publish, wait_for_subscribers, walk
from tests.pollers import Subscriber
from tests.processes import (
    BROKER_LINE,
    ROOT,
    Launcher,
    LossyLink,
    eventually,
    free_port,
    tcp_peer_ports,
)

STORE = {"type": "memory", "min_messages": 0, "max_messages": 1000, "message_timeout": 120}


async def publisher(base: str, channel: str, bodies: list[bytes], interval: float) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for body in bodies:
            response = await client.post(base + path("send-update", channel), content=body)
            assert response.status_code in (201, 202), response.text
            await asyncio.sleep(interval)


def test_subscribers_switching_edge_on_every_poll_get_every_message_once_in_order(
    launcher: Launcher, links: dict[str, Any]
) -> None:
    broker, endpoints = launcher.broker(store=STORE, **links)
    edges = [launcher.edge(endpoints, store=STORE, **links)[1] for _ in range(2)]
    channel = fresh("stream")
    bodies = [f"message {n:03d}".encode() for n in range(200)]

    async def run() -> list[list[bytes]]:
        # The channel exists before the stream starts, so the walk starts at its first message.
        httpx.put(edges[0] + path("send-update", channel))
        subscribers = [
            asyncio.create_task(Subscriber(edges, channel, offset=n).walk(len(bodies)))
            for n in range(100)
        ]
        await publisher(edges[0], channel, bodies, 0.01)
        return await asyncio.wait_for(asyncio.gather(*subscribers), 120)

    results = asyncio.run(run())
    assert all(received == bodies for received in results)
    print(f"cluster stream: {sum(map(len, results))} deliveries to 100 subscribers over 2 edges")


def test_an_edge_started_after_publishing_serves_history_from_the_snapshot(
    launcher: Launcher,
) -> None:
    _, endpoints = launcher.broker(store=STORE)
    _, first = launcher.edge(endpoints, store=STORE)
    channel = fresh("history")
    bodies = [f"early {n}".encode() for n in range(20)]
    for body in bodies:
        publish(first, channel, body)
    _, late = launcher.edge(endpoints, store=STORE)
    assert walk(late, channel, 20) == bodies


def test_an_edge_that_loses_live_messages_refills_from_the_broker(
    launcher: Launcher, links: dict[str, Any]
) -> None:
    _, endpoints = launcher.broker(store=STORE, **links)
    channel = fresh("refill")
    bodies = [f"live {n}".encode() for n in range(30)]
    with LossyLink(endpoints["events"], drop_every=3, curve_keys=links.get("curve")) as link:
        lossy, lossy_url = launcher.edge(
            {**endpoints, "events": link.endpoint}, store=STORE, **links
        )
        _, publisher_url = launcher.edge(endpoints, store=STORE, **links)

        async def run() -> list[bytes]:
            httpx.put(publisher_url + path("send-update", channel))
            # Subscribe on the lossy edge first, so what it gets comes live.
            task = asyncio.create_task(Subscriber([lossy_url], channel).walk(len(bodies)))
            await asyncio.to_thread(wait_for_subscribers, lossy_url, channel, 1)
            await publisher(publisher_url, channel, bodies, 0.02)
            return await asyncio.wait_for(task, 60)

        assert asyncio.run(run()) == bodies
        refills = eventually(
            lambda: [line for line in lossy.lines if "refilling channel" in line], 10, "a refill"
        )
    assert link.dropped > 0 and link.passed > 0
    print(
        f"lossy edge: {link.dropped} of {link.dropped + link.passed} live messages dropped, "
        f"{len(refills)} gaps detected and refilled"
    )


def test_send_update_from_django_reaches_subscribers_on_every_edge(
    launcher: Launcher, links: dict[str, Any]
) -> None:
    _, endpoints = launcher.broker(store=STORE, **links)
    edges = [launcher.edge(endpoints, store=STORE, **links)[1] for _ in range(2)]
    channel = fresh("django")
    module = launcher.settings({"broker": endpoints, "store": STORE, **links})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(launcher.folder), str(ROOT)])
    env["DJANGO_SETTINGS_MODULE"] = module
    code = (
        "from pushserver.utils import updates\n"
        f"for n in range(5): updates.send_update({channel!r}, {{'type': 'answer', 'value': n}})\n"
    )
    subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", code],
        cwd=launcher.folder,
        env=env,
        check=True,
        timeout=60,
    )
    expected = [f'{{"type":"answer","value":{n}}}'.encode() for n in range(5)]
    for base in edges:
        assert walk(base, channel, 5) == expected
        response = httpx.get(base + path("updates", channel))
        assert response.headers["Content-Type"] == "application/json"


def test_a_cluster_never_gives_two_of_its_parts_one_port() -> None:
    # The kernel offers ports it offered before while nobody has bound them
    # yet; a cluster picks a dozen before starting anything.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_processes_picking_ports_side_by_side_never_pick_the_same_from_their_shares() -> None:
    before = launch._share
    try:
        picked = []
        for share in range(3):
            launch.share_ports(share, 3)
            picked.append({free_port() for _ in range(300)})
    finally:
        launch.share_ports(*before)
    assert all(len(ports) == 300 for ports in picked)
    assert not picked[0] & picked[1] and not picked[1] & picked[2] and not picked[0] & picked[2]


def test_an_embedded_server_and_an_edge_on_its_broker_serve_one_cursor_without_own_sockets(
    launcher: Launcher,
) -> None:
    embedded, local_url = launcher.embedded(store=STORE)
    endpoints = embedded.wait_for(BROKER_LINE).groupdict()
    _, remote_url = launcher.edge(endpoints, store=STORE)
    edges = [local_url, remote_url]
    channel = fresh("local")
    bodies = [f"message {n:03d}".encode() for n in range(60)]

    async def run() -> list[list[bytes]]:
        httpx.put(local_url + path("send-update", channel))
        subscribers = [
            asyncio.create_task(Subscriber(edges, channel, offset=n).walk(len(bodies)))
            for n in range(10)
        ]
        await asyncio.to_thread(wait_for_subscribers, local_url, channel, 5)
        # Published through both publisher locations, in turn: the embedded edge's
        # goes to its broker without a socket, the other edge's over ZeroMQ.
        async with httpx.AsyncClient(timeout=10) as client:
            for n, body in enumerate(bodies):
                response = await client.post(
                    edges[n % 2] + path("send-update", channel), content=body
                )
                assert response.status_code in (201, 202), response.text
        return await asyncio.wait_for(asyncio.gather(*subscribers), 60)

    # Every subscriber moved between the two edges on every poll, with one cursor.
    assert all(received == bodies for received in asyncio.run(run()))
    own = {int(endpoints[name].rpartition(":")[2]) for name in ("ingress", "events")}
    assert not own & set(tcp_peer_ports(embedded.popen.pid))
