"""Nchan's own browser client, NchanSubscriber (npm `nchan`), against an edge on another origin.

Its long-poll mode reads a `304` (the edge's long-poll timeout) as an error
and starts again a second later, adding its last message id as an `Etag`
request header: a header the edge's preflight must allow, or the client is
refused at its first idle timeout and never receives another message.
NchanSubscriber has no option for credentials; a page that needs its
cookies sent cross-origin turns `withCredentials` on for every
XMLHttpRequest, as the page here does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from edge.protocol import ETAG
from tests.browser import CHROMIUM, chromium_available
from tests.client import fresh, path, wait_for_subscribers
from tests.cross_origin import (
    COOKIE,
    RequestRecorder,
    chromium,
    edge_for_page,
    npm_file,
    page_server,
    page_with_scripts,
    publish_all,
    recording,
    upstream,
)
from tests.processes import Launcher, eventually

assert chromium_available(), f"no Chromium at {CHROMIUM}: run `make test`, which installs it"

# Short, so the test sits through one idle timeout in a few seconds.
LONG_POLL_TIMEOUT = 1

START_SUBSCRIBER = """
(url) => {
  const Native = window.XMLHttpRequest;
  window.XMLHttpRequest = class extends Native {
    constructor() {
      super();
      this.withCredentials = true;
    }
  };
  window.nchan = { received: [], errors: [], disconnects: 0 };
  const subscriber = new NchanSubscriber(url, { subscriber: 'longpoll' });
  subscriber.on('message', (message, meta) => window.nchan.received.push([message, meta.id]));
  subscriber.on('error', (code) => window.nchan.errors.push(code));
  subscriber.on('disconnect', () => { window.nchan.disconnects += 1; });
  subscriber.start();
}
"""


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    script = npm_file("nchan/NchanSubscriber.js").read_bytes()
    files = {
        "/": page_with_scripts("/NchanSubscriber.js"),
        "/NchanSubscriber.js": ("text/javascript; charset=utf-8", script),
    }
    with page_server(files) as origin:
        yield origin


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher, page_origin: str) -> str:
    return edge_for_page(module_launcher, page_origin, long_poll_timeout=LONG_POLL_TIMEOUT)


@pytest.fixture(scope="module")
def recorder(edge: str) -> Iterator[RequestRecorder]:
    """The edge as the browser reaches it: through a recorder of every request."""
    with recording(upstream(edge)) as started:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def received(page: Any) -> list[list[str]]:
    messages: list[list[str]] = page.evaluate("window.nchan.received")
    return messages


def message_id(nchan_id: str) -> tuple[int, int]:
    time, tag = nchan_id.split(":")
    return int(time), int(tag)


def test_nchan_subscriber_long_poll_across_origins_with_credentials_gets_every_message_once_in_order_through_an_idle_timeout(  # noqa: E501
    page_origin: str, edge: str, recorder: RequestRecorder, browser: Any
) -> None:
    channel = fresh("nchan")
    url = recorder.url + path("updates", channel)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(page_origin + "/")
        page.evaluate(START_SUBSCRIBER, url)
        wait_for_subscribers(edge, channel, 1)

        expected = [f"message {number}" for number in range(100)]
        publish_all(edge, channel, expected[:50])
        eventually(lambda: len(received(page)) >= 50, 15, "the first 50 messages on the page")

        # Nothing more for the long-poll timeout: the edge answers 304, the
        # client reads it as an error and starts again with its Etag header.
        eventually(lambda: 304 in page.evaluate("window.nchan.errors"), 10, "a 304 on the page")
        eventually(
            lambda: [seen for seen in recorder.requests("GET") if ETAG.lower() in seen.headers],
            10,
            "NchanSubscriber's poll with its Etag header reaching the edge",
        )
        publish_all(edge, channel, expected[50:])
        eventually(lambda: len(received(page)) >= 100, 15, "all 100 messages on the page")

        messages = received(page)
        assert [body for body, _ in messages] == expected
        ids = [message_id(nchan_id) for _, nchan_id in messages]
        assert ids == sorted(set(ids))
        assert page.evaluate("window.nchan.disconnects") == 0
        polls = [seen for seen in recorder.requests("GET") if seen.path == path("updates", channel)]
        # Credentials mode: the page's cookie went to the edge with every poll.
        assert polls and all(seen.headers.get("cookie") == COOKIE for seen in polls)
    finally:
        context.close()
