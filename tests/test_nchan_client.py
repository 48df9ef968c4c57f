"""Nchan's own browser client, NchanSubscriber (npm `nchan`), against our edges from a page
of another origin, in each of its three modes: `websocket`, `eventsource` and `longpoll`.

Each mode resumes its own way, and the edge must understand all three:
- `websocket` reconnects itself a second after a close, with its last id in
  the query (`?last_event_id=time:tag`) and the `ws+meta.nchan` subprotocol,
  whose frames carry each message's id and content type;
- `eventsource` leaves reconnecting to the browser's EventSource, which
  sends `Last-Event-ID`; a response other than a stream closes it for good,
  and NchanSubscriber does not open another;
- `longpoll` reads a `304` (the edge's long-poll timeout) as an error and
  starts again a second later, adding its last id as an `Etag` request
  header beside the `If-Modified-Since` / `If-None-Match` it took from the
  last answer: a header the edge's preflight must allow, or the client is
  refused at its first idle timeout and never receives another message.

NchanSubscriber has no option for credentials; a page that needs its
cookies sent cross-origin turns `withCredentials` on for every
XMLHttpRequest and EventSource, as the page here does (a WebSocket sends
them without being asked).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edge.eventstream import LAST_EVENT_ID_PARAMETER
from edge.protocol import ETAG, LAST_EVENT_ID
from tests.browser import CHROMIUM, chromium_available
from tests.client import fresh, path, wait_for_subscribers
from tests.cross_origin import (
    COOKIE,
    RequestRecorder,
    RestartableEdge,
    SeenRequest,
    chromium,
    edge_for_page,
    npm_file,
    page_server,
    page_with_scripts,
    publish_all,
    recording,
    upstream,
)
from tests.cross_origin import restartable_edge as restartable_edge  # a fixture
from tests.following import poll_id
from tests.processes import Launcher, eventually
from tests.raw_http import figures

assert chromium_available(), f"no Chromium at {CHROMIUM}: run `make test`, which installs it"

MODES = ["websocket", "eventsource", "longpoll"]
# Short, so the long-poll test sits through one idle timeout in a few seconds.
LONG_POLL_TIMEOUT = 1
# After the last expected message, how long a repeat would take to show.
REPEAT_WINDOW = 0.3

# Starts window.subscriber in `mode` on `url`; window.nchan records every
# message as [body, id, content type], every error, every connect and
# every disconnect.
START_SUBSCRIBER = """
([url, mode]) => {
  const NativeRequest = window.XMLHttpRequest;
  window.XMLHttpRequest = class extends NativeRequest {
    constructor() {
      super();
      this.withCredentials = true;
    }
  };
  const NativeSource = window.EventSource;
  window.EventSource = class extends NativeSource {
    constructor(url) {
      super(url, { withCredentials: true });
    }
  };
  window.nchan = { received: [], errors: [], connects: 0, disconnects: 0 };
  const subscriber = new NchanSubscriber(url, { subscriber: mode });
  subscriber.on('message', (message, meta) =>
    window.nchan.received.push([message, meta.id, meta['content-type'] || null]));
  // A long-poll's error is its status; a WebSocket's is an Event.
  subscriber.on('error', (code) =>
    window.nchan.errors.push(typeof code === 'number' ? code : String(code)));
  subscriber.on('connect', () => { window.nchan.connects += 1; });
  subscriber.on('disconnect', () => { window.nchan.disconnects += 1; });
  subscriber.start();
  window.subscriber = subscriber;
}
"""

# What each mode tells the page of a message's content type: a WebSocket
# frame's ws+meta.nchan header, a long-poll's Content-Type; an EventSource
# has no place for it.
CONTENT_TYPES = {"websocket": {"text/plain"}, "eventsource": {None}, "longpoll": {"text/plain"}}


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


@pytest.fixture
def page(browser: Any, page_origin: str) -> Iterator[Any]:
    context = browser.new_context()
    opened = context.new_page()
    opened.goto(page_origin + "/")
    yield opened
    # Stopped first, so no reconnect outlives the test.
    opened.evaluate("window.subscriber && window.subscriber.running && window.subscriber.stop()")
    context.close()


def received(page: Any) -> list[list[str | None]]:
    messages: list[list[str | None]] = page.evaluate("window.nchan.received")
    return messages


def wait_received(page: Any, count: int, timeout: float = 15) -> None:
    eventually(lambda: len(received(page)) >= count, timeout, f"{count} messages on the page")


def message_id(nchan_id: str | None) -> tuple[int, int]:
    assert nchan_id is not None, "a message without an id"
    time, tag = nchan_id.split(":")
    return int(time), int(tag)


def open_sockets(edge: str) -> float:
    return figures(edge)[("pushserver_edge_websockets", ())]


@pytest.mark.parametrize("mode", MODES)
def test_nchan_subscriber_across_origins_with_credentials_gets_100_messages_once_each_in_order(
    mode: str, page: Any, edge: str, recorder: RequestRecorder
) -> None:
    channel = fresh(f"nchan-{mode}")
    channel_path = path("updates", channel)
    expected = [f"message {number}" for number in range(100)]
    publish_all(edge, channel, expected[:10])  # held: the subscriber starts with them
    page.evaluate(START_SUBSCRIBER, [recorder.url + channel_path, mode])
    wait_received(page, 10)
    wait_for_subscribers(edge, channel, 1)
    publish_all(edge, channel, expected[10:50])
    wait_received(page, 50)

    if mode == "longpoll":
        # Nothing more for the long-poll timeout: the edge answers 304, the
        # client reads it as an error and starts again with its Etag header.
        eventually(lambda: 304 in page.evaluate("window.nchan.errors"), 10, "a 304 on the page")
        eventually(
            lambda: [seen for seen in recorder.requests("GET") if ETAG.lower() in seen.headers],
            10,
            "NchanSubscriber's poll with its Etag header reaching the edge",
        )
    publish_all(edge, channel, expected[50:])
    wait_received(page, 100)
    time.sleep(REPEAT_WINDOW)
    messages = received(page)
    if mode == "websocket":
        assert open_sockets(edge) == 1  # the edge holds the one socket that carried them all

    assert [body for body, _, _ in messages] == expected
    ids = [message_id(nchan_id) for _, nchan_id, _ in messages]
    assert ids == sorted(set(ids))
    assert messages[0][1] == poll_id(edge, channel)  # the ids are the edge's own
    assert {content_type for _, _, content_type in messages} == CONTENT_TYPES[mode]
    assert page.evaluate("window.nchan.disconnects") == 0
    errors = page.evaluate("window.nchan.errors")
    assert set(errors) <= ({304} if mode == "longpoll" else set()), errors
    asked = [seen for seen in recorder.requests("GET") if seen.path.startswith(channel_path)]
    if mode == "longpoll":
        assert len(asked) > 2
    else:
        assert len(asked) == 1  # one stream, or one socket, carried them all
    # Credentials mode: the page's cookie went to the edge with every request.
    assert asked and all(seen.headers.get("cookie") == COOKIE for seen in asked)


def resumed_from(mode: str, seen: SeenRequest) -> str | None:
    """The cursor a request of NchanSubscriber in `mode` resumes from, as it sends it."""
    if mode == "websocket":
        given = parse_qs(urlsplit(seen.path).query).get(LAST_EVENT_ID_PARAMETER)
        return given[0] if given else None
    if mode == "eventsource":
        return seen.headers.get(LAST_EVENT_ID.lower())
    return seen.headers.get(ETAG.lower())


@pytest.mark.parametrize("mode", MODES)
def test_nchan_subscriber_whose_edge_stops_and_starts_again_reconnects_by_itself_and_gets_every_message_once_in_order(  # noqa: E501
    mode: str, page: Any, restartable_edge: RestartableEdge
) -> None:
    start, stop, followed, publishing = restartable_edge
    channel = fresh(f"nchan-restart-{mode}")
    channel_path = path("updates", channel)
    expected = [f"message {number}" for number in range(60)]
    publish_all(publishing, channel, expected[:10])
    # The recorder outlives the edge behind it: while the edge is down, it
    # closes each connection it accepts, and records only what reached an edge.
    with recording(upstream(followed)) as recorder:
        page.evaluate(START_SUBSCRIBER, [recorder.url + channel_path, mode])
        wait_received(page, 10)
        publish_all(publishing, channel, expected[10:20])
        wait_received(page, 20)
        last_before = received(page)[-1][1]

        stop()
        eventually(
            lambda: page.evaluate("window.nchan.disconnects") >= 1, 10, "the page losing its edge"
        )
        publish_all(publishing, channel, expected[20:40])  # while the followed edge is down
        start()
        publish_all(publishing, channel, expected[40:])
        wait_received(page, len(expected), timeout=30)
        time.sleep(REPEAT_WINDOW)
        asked = [seen for seen in recorder.requests("GET") if seen.path.startswith(channel_path)]

    messages = received(page)
    assert [body for body, _, _ in messages] == expected
    ids = [message_id(nchan_id) for _, nchan_id, _ in messages]
    assert ids == sorted(set(ids))
    # It reconnected by itself, from the last message it had, the mode's own way.
    assert page.evaluate("window.nchan.connects") >= 2
    assert page.evaluate("window.subscriber.running") is True
    assert last_before in [resumed_from(mode, seen) for seen in asked]
