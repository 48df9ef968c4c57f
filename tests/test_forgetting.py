"""A broker forgets channels nobody uses, and what clients see stays right: a client's old
cursor meets only newer ids, and an edge that still follows a forgotten channel, or makes a
new one for a poll, counts no refill (refills count lost messages, nothing else)."""

from __future__ import annotations

import email.utils
import re
import time

import httpx

from edge.protocol import ETAG, LAST_MODIFIED
from tests.client import Cursor, edge_channels, fresh, hold, info, poll, publish
from tests.processes import Launcher, eventually

SHORT_LIVED = {"type": "memory", "message_timeout": 1}
LOCATIONS = (
    {"type": "subscriber", "url": r"/updates/([^/]+)"},
    {"type": "subscriber", "url": r"/poll/([^/]+)", "polling": "interval"},
    {"type": "publisher", "url": r"/send-update/([^/]+)"},
)


def refills(base: str) -> int:
    text = httpx.get(f"{base}/pushserver/metrics").text
    found = re.search(r'pushserver_edge_feed_events_total\{event="refills"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def message_id(response: httpx.Response) -> tuple[float, int]:
    stamp = email.utils.parsedate_to_datetime(response.headers[LAST_MODIFIED]).timestamp()
    return stamp, int(response.headers[ETAG])


def test_a_client_with_a_cursor_from_before_the_channel_was_forgotten_gets_the_next_message(
    launcher: Launcher, client: httpx.Client
) -> None:
    _, endpoints = launcher.broker(store=SHORT_LIVED, channel_linger=1)
    # The edge follows the channel for longer than the broker keeps it.
    _, base = launcher.edge(endpoints, topic_linger=60, locations=LOCATIONS)
    channel = fresh("forgotten")
    publish(base, channel, "before")
    first = poll(client, base, channel)
    assert first.text == "before"

    eventually(lambda: info(base, channel) is None, 20, "the broker forgetting the channel")
    publish(base, channel, "after")
    again = poll(client, base, channel, Cursor().advanced(first))
    assert again.text == "after"
    assert message_id(again) > message_id(first)
    assert refills(base) == 0


def test_channels_made_for_polls_count_no_refill_and_a_broker_forgetting_them_neither(
    launcher: Launcher, client: httpx.Client
) -> None:
    _, endpoints = launcher.broker(store=SHORT_LIVED, channel_linger=1)
    _, base = launcher.edge(endpoints, topic_linger=60, locations=LOCATIONS)
    channels = [fresh("made") for _ in range(50)]
    for channel in channels:
        assert poll(client, base, channel, location="poll").status_code == 304
    for channel in channels[:10]:
        publish(base, channel, "one")
    eventually(
        lambda: all(info(base, channel) is None for channel in channels), 30, "all forgotten"
    )
    # Polled again, each is made again: a first snapshot, not a gap.
    for channel in channels:
        assert poll(client, base, channel, location="poll").status_code == 304
    assert refills(base) == 0


def test_an_edge_follows_a_channel_while_a_poll_waits_or_polls_keep_coming_and_forgets_it_after(
    launcher: Launcher, client: httpx.Client
) -> None:
    # The edge looks at each channel when it could first be idle, not at every
    # channel on every sweep: a channel in use when looked at must be kept, and
    # looked at again.
    linger = 1.0
    _, endpoints = launcher.broker()
    _, base = launcher.edge(endpoints, topic_linger=linger, locations=LOCATIONS)
    held, polled = fresh("held"), fresh("polled")
    waiting = hold(client, base, held, Cursor())
    with httpx.Client(timeout=10) as poller:
        until = time.monotonic() + 4 * linger
        while time.monotonic() < until:
            assert poll(poller, base, polled, location="poll").status_code == 304
            time.sleep(linger / 4)
        # Both outlived several lingers: one held throughout, one asked again and again.
        assert edge_channels(base) == 2
    publish(base, held, "released")
    assert waiting.result(timeout=10).text == "released"
    eventually(lambda: edge_channels(base) == 0, 10, "the edge forgetting both channels")
