"""What the EventSource and the WebSocket tests share: both follow channels on one connection.

`edge.following` serves both transports, so their tests ask the same
questions: the URL of several channels, the id a poll gives a message,
the figures of the followers open and closed, and the stalled reader the
edge must close at `stream_buffer` without its memory growing with the
channel. The trap is letting one transport's test weaken for the other's
sake: these helpers only set up and measure, every assertion stays in the
test that makes it.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from urllib.parse import quote

import httpx

from edge.protocol import ETAG, LAST_MODIFIED
from tests.client import path, publish
from tests.processes import Launcher

Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def several(location: str, *channel_ids: str) -> str:
    """The subscriber URL of several channels: each id encoded, joined by a literal comma."""
    return f"/{location}/" + ",".join(quote(channel_id, safe="") for channel_id in channel_ids)


def poll_id(base: str, channel_id: str, **params: str) -> str:
    """The id a poll gives the channel's first message after `params`' cursor, as time:tag."""
    response = httpx.get(base + path("updates", channel_id), params=params, timeout=10)
    assert response.status_code == 200, response.text
    seconds = int(email.utils.parsedate_to_datetime(response.headers[LAST_MODIFIED]).timestamp())
    return f"{seconds}:{response.headers[ETAG]}"


def follower_figures(found: Figures, open_gauge: str, closed_counter: str) -> dict[str, float]:
    """Of an edge's `found` figures, how many followers `open_gauge` counts open, and
    `closed_counter`'s count per reason."""
    closed = {
        dict(labels)["reason"]: value
        for (name, labels), value in found.items()
        if name == closed_counter
    }
    return {"open": found[(open_gauge, ())], **closed}


# The stalled reader: SLOW_HELD messages of SIZE bytes, BOUND bytes of stream_buffer.
SIZE = 64 * 1024
BOUND = 256 * 1024
SLOW_HELD = 200


def stalled_edge(launcher: Launcher) -> tuple[int, str]:
    """An edge (its pid and URL) whose /updates/ followers may leave BOUND bytes untaken,
    behind a broker that holds SLOW_HELD messages a channel."""
    _, endpoints = launcher.broker(
        store={"type": "memory", "max_messages": SLOW_HELD, "message_timeout": 300}
    )
    edge_process, url = launcher.edge(
        endpoints,
        locations=(
            {"type": "subscriber", "url": r"/updates/([^/]+)", "stream_buffer": BOUND},
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
    )
    return edge_process.popen.pid, url


def big_bodies() -> list[bytes]:
    """SLOW_HELD bodies of SIZE bytes, each starting with its number."""
    return [f"{n:04d}{'x' * (SIZE - 4)}".encode() for n in range(SLOW_HELD)]


def publish_until(
    url: str, channel_id: str, bodies: list[bytes], closed: Callable[[], bool], what: str
) -> int:
    """Publish `bodies` one by one until `closed()` holds; how many were published."""
    published = 0
    while not closed():
        assert published < len(bodies), f"the stalled {what} was never closed"
        publish(url, channel_id, bodies[published])
        published += 1
    return published


def memory_bound(published: int) -> int:
    """What an edge may grow by for a stalled reader of `published` messages: the channel's
    messages once (its buffer), the untaken output at most the bound and one message, and
    room for the interpreter's own."""
    return published * SIZE + BOUND + SIZE + 24 * 2**20


def report_stalled(what: str, published: int, reached: int, grown: int) -> None:
    print(
        f"\nstalled {what} after {published} messages of {SIZE // 1024} KiB "
        f"({reached} reached it whole); edge peak RSS grew {grown / 2**20:.1f} MiB "
        f"(the channel holds {published * SIZE / 2**20:.1f} MiB; stream_buffer "
        f"{BOUND // 1024} KiB)"
    )
