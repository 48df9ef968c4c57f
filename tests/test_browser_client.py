"""The dependency-free client (`pushserver.createClient`) in headless Chromium, cross-origin.

The page and the client's own files (js/pushserver.js, js/pushserver.module.js)
come from `tests.cross_origin.page_server`, so every request to the edge is
cross-origin, with credentials, through CORS. The client's default
transports stream (EventSource) and fall back to long-polls; a test that
wants one transport says so in its options, and one asks for the
WebSocket.

`StreamHoldingRelay` stands in for a proxy that buffers responses: it holds
back every response whose head says `text/event-stream` until the edge
closes the connection, which for a stream is never. The trap in it: it
finds that head within one read from the edge, which is how an edge
writes a head on loopback, and would miss one split across two reads.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from edge.signing import TOKEN_EXPIRED, sign
from tests.browser import CHROMIUM, chromium_available
from tests.client import fresh, path
from tests.cross_origin import (
    COOKIE,
    RequestRecorder,
    chromium,
    page_server,
    page_with_scripts,
    publish_all,
    recording,
    upstream,
)
from tests.cross_origin import restartable_edge as restartable_edge  # a fixture
from tests.processes import ROOT, Launcher, eventually
from tests.raw_http import figures

assert chromium_available(), f"no Chromium at {CHROMIUM}: run `make test`, which installs it"

JS = ROOT / "js"
SECRET = "the-browser-client-tests-signing-secret-of-some-length"
# Short, so a test sees several reconnects and the fallback within seconds.
FAST = {"backoff": {"base": 100, "cap": 400}, "openTimeout": 1500, "withCredentials": True}

# Starts window.client with `options` on `urls` ({name: url}); every update
# of type 'm' is recorded in window.seen as [name, n], every status in
# window.statuses, every refused token in window.refused, which also
# subscribes the name again with refreshed[name] when there is one.
START = """
([urls, options, refreshed]) => {
  window.seen = [];
  window.statuses = [];
  window.refused = [];
  const client = (window.client = pushserver.createClient(options));
  for (const name of Object.keys(urls)) {
    client.registerProcessor(name, 'm', (data) => window.seen.push([name, data.n]));
    client.onForbidden(name, (name, reason) => {
      window.refused.push([name, reason]);
      if (refreshed[name]) client.subscribe({[name]: refreshed[name]});
    });
  }
  client.on('status', (name, status) => {
    window.statuses.push([name, status.state, status.transport || null]);
  });
  client.subscribe(urls);
}
"""

MODULE_PAGE = (
    "text/html; charset=utf-8",
    b'<!doctype html><meta charset="utf-8"><script type="module">'
    b"import pushserver from '/static/pushserver.module.js';"
    b"window.fromModule = pushserver;</script>",
)


class StreamHoldingRelay(RequestRecorder):
    """Relays connections from `port` to the edge at `upstream`, recording each request and
    holding back every event stream."""

    def stream_requests(self) -> int:
        """How many requests asked for an event stream."""
        asked = [seen.headers.get("accept", "") for seen in self.requests("GET")]
        return sum("text/event-stream" in accept for accept in asked)

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        if requests:
            super()._pump(source, sink, requests)
            return
        held: bytearray | None = None
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if held is not None:
                    held += chunk
                    continue
                found = chunk.lower().find(b"content-type: text/event-stream")
                if found == -1:
                    sink.sendall(chunk)
                    continue
                start = max(chunk.rfind(b"HTTP/1.", 0, found), 0)
                sink.sendall(chunk[:start])
                held = bytearray(chunk[start:])
            if held is not None:
                sink.sendall(bytes(held))  # a buffering proxy sends what it held once it ends
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    javascript = "text/javascript; charset=utf-8"
    files = {
        "/": page_with_scripts("/static/pushserver.js"),
        "/module": MODULE_PAGE,
        "/static/pushserver.js": (javascript, (JS / "pushserver.js").read_bytes()),
        "/static/pushserver.module.js": (javascript, (JS / "pushserver.module.js").read_bytes()),
    }
    with page_server(files) as origin:
        yield origin


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher, page_origin: str) -> str:
    cross_origin = {"allow_origin": [page_origin], "allow_credentials": True}
    _, base = module_launcher.embedded(
        store={"type": "memory", "max_messages": 1000, "message_timeout": 600},
        long_poll_timeout=2,
        signed_url_secrets=[SECRET],
        locations=(
            {"type": "subscriber", "url": r"/updates/([^/]+)", **cross_origin},
            {"type": "subscriber", "url": r"/signed/([^/]+)", "signed": True, **cross_origin},
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
    )
    return base


@pytest.fixture(scope="module")
def recorder(edge: str) -> Iterator[RequestRecorder]:
    with recording(upstream(edge)) as started:
        yield started


@pytest.fixture(scope="module")
def holding_relay(edge: str) -> Iterator[StreamHoldingRelay]:
    relay = StreamHoldingRelay(upstream(edge))
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, page_origin: str) -> Iterator[Any]:
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    opened.goto(page_origin + "/")
    yield opened
    context.close()


def updates(numbers: range) -> list[str]:
    return [f'{{"type": "m", "n": {number}}}' for number in numbers]


def wait_seen(page: Any, name: str, count: int, timeout: float = 20) -> None:
    """Wait until the page saw `count` updates, then check they were `name`'s 0 to count - 1,
    each once, in order."""
    expected = [[name, number] for number in range(count)]

    def enough() -> bool:
        count: int = page.evaluate("window.seen.length")
        return count >= len(expected)

    eventually(enough, timeout, f"{len(expected)} updates on the page")
    assert page.evaluate("window.seen") == expected


def test_the_es_module_exports_the_client_the_script_defines(browser: Any, page: Any) -> None:
    same = page.evaluate(
        """() => import('/static/pushserver.module.js').then(
             (module) => module.default === window.pushserver
               && module.createClient === window.pushserver.createClient)"""
    )
    assert same is True
    # A page with only the module gets the client, and window.pushserver with it.
    page.goto(page.url.rstrip("/") + "/module")
    page.wait_for_function("window.fromModule !== undefined")
    assert page.evaluate("typeof fromModule.createClient") == "function"
    assert page.evaluate("fromModule === window.pushserver") is True


def test_a_cross_origin_page_long_polls_every_update_once_in_order_sending_its_cookies(
    page: Any, edge: str, recorder: RequestRecorder
) -> None:
    channel = fresh("longpoll")
    publish_all(edge, channel, updates(range(10)))
    url = recorder.url + path("updates", channel)
    page.evaluate(START, [{"news": url}, {**FAST, "transports": ["longpoll"]}, {}])
    wait_seen(page, "news", 10)
    publish_all(edge, channel, updates(range(10, 20)))
    wait_seen(page, "news", 20)

    channel_path = path("updates", channel)
    polls = [seen for seen in recorder.requests("GET") if seen.path.startswith(channel_path)]
    assert len(polls) > 2
    assert all(COOKIE in seen.headers.get("cookie", "") for seen in polls)
    assert page.evaluate("client.transportOf('news')") == "longpoll"


def test_behind_a_proxy_holding_streams_back_the_page_long_polls_and_misses_nothing(
    page: Any, edge: str, holding_relay: StreamHoldingRelay
) -> None:
    channel = fresh("held")
    publish_all(edge, channel, updates(range(5)))
    url = holding_relay.url + path("updates", channel)
    before = holding_relay.stream_requests()
    page.evaluate(START, [{"news": url}, {**FAST, "streamRetry": 2000}, {}])
    wait_seen(page, "news", 5)
    assert page.evaluate("client.transportOf('news')") == "longpoll"
    publish_all(edge, channel, updates(range(5, 15)))
    wait_seen(page, "news", 15)
    transports = {transport for _, _, transport in page.evaluate("window.statuses")}
    assert transports == {"eventsource", "longpoll"}
    # Three streams held back, then the stream tried again beside the polls
    # every streamRetry; held back again, it changes nothing.
    eventually(
        lambda: holding_relay.stream_requests() - before >= 5, 20, "the stream tried again twice"
    )
    publish_all(edge, channel, updates(range(15, 20)))
    wait_seen(page, "news", 20)
    assert page.evaluate("client.transportOf('news')") == "longpoll"


def test_an_expired_signed_url_reaches_on_forbidden_and_a_fresh_one_carries_on(
    page: Any, edge: str
) -> None:
    channel = fresh("signed")
    publish_all(edge, channel, updates(range(3)))

    def signed(expires: int) -> str:
        token = sign(SECRET, [channel], expires)
        return f"{edge}/signed/{quote(channel, safe='')}?token={token}"

    expired, refreshed = signed(int(time.time()) - 1), signed(int(time.time()) + 600)
    page.evaluate(START, [{"signed": expired}, FAST, {"signed": refreshed}])
    wait_seen(page, "signed", 3)
    assert page.evaluate("window.refused") == [["signed", TOKEN_EXPIRED]]
    publish_all(edge, channel, updates(range(3, 6)))
    wait_seen(page, "signed", 6)
    assert page.evaluate("window.refused") == [["signed", TOKEN_EXPIRED]]


def stream_gets(recorder: RequestRecorder) -> list[Any]:
    """The requests `recorder` saw that asked for an event stream."""
    return [
        seen
        for seen in recorder.requests("GET")
        if "text/event-stream" in seen.headers.get("accept", "")
    ]


def wait_live_on_stream(page: Any, name: str) -> None:
    eventually(
        lambda: page.evaluate("window.statuses").count([name, "live", "eventsource"]) >= 1,
        15,
        f"{name} live on a stream",
    )


def test_a_page_streams_a_burst_of_200_updates_once_in_order(
    page: Any, edge: str, recorder: RequestRecorder
) -> None:
    channel = fresh("burst")
    publish_all(edge, channel, updates(range(1)))
    page.evaluate(START, [{"news": recorder.url + path("updates", channel)}, FAST, {}])
    wait_live_on_stream(page, "news")
    publish_all(edge, channel, updates(range(1, 200)))
    wait_seen(page, "news", 200)
    assert page.evaluate("client.transportOf('news')") == "eventsource"
    # One stream carried the burst: no reconnect, no poll.
    asked = [seen for seen in recorder.requests("GET") if channel in seen.path]
    assert len(asked) == 1
    assert "text/event-stream" in asked[0].headers.get("accept", "")


def test_a_page_with_eight_channels_follows_them_on_one_stream(
    page: Any, edge: str, recorder: RequestRecorder
) -> None:
    channels = {f"c{n}": fresh(f"eight{n}") for n in range(8)}
    for channel in channels.values():
        publish_all(edge, channel, updates(range(1)))
    before = len(stream_gets(recorder))
    urls = {name: recorder.url + path("updates", channel) for name, channel in channels.items()}
    page.evaluate(START, [urls, FAST, {}])
    eventually(lambda: page.evaluate("window.seen.length") >= 8, 15, "one update per channel")
    assert sorted(page.evaluate("window.seen")) == sorted([name, 0] for name in channels)
    opened = stream_gets(recorder)[before:]
    assert len(opened) == 1
    assert opened[0].path.count(",") == 7
    for channel in channels.values():
        publish_all(edge, channel, updates(range(1, 3)))
    eventually(lambda: page.evaluate("window.seen.length") >= 24, 15, "two more per channel")
    for name in channels:
        assert [n for seen, n in page.evaluate("window.seen") if seen == name] == [0, 1, 2]
    assert len(stream_gets(recorder)[before:]) == 1


def test_a_stream_whose_edge_stops_and_starts_again_catches_up_with_nothing_repeated(
    page: Any, restartable_edge: tuple[Callable[[], None], Callable[[], None], str, str]
) -> None:
    start, stop, followed, publishing = restartable_edge
    channel = fresh("restart")
    publish_all(publishing, channel, updates(range(10)))
    page.evaluate(START, [{"news": followed + path("updates", channel)}, FAST, {}])
    wait_seen(page, "news", 10)
    wait_live_on_stream(page, "news")
    stop()
    publish_all(publishing, channel, updates(range(10, 30)))
    start()
    publish_all(publishing, channel, updates(range(30, 40)))
    wait_seen(page, "news", 40, timeout=30)
    assert page.evaluate("client.transportOf('news')") == "eventsource"
    lives = page.evaluate("window.statuses").count(["news", "live", "eventsource"])
    assert lives >= 2, "the stream was opened again after the restart"


def test_a_page_follows_two_channels_on_one_websocket_each_update_once_in_order(
    page: Any, edge: str
) -> None:
    channels = {"left": fresh("ws-left"), "right": fresh("ws-right")}
    for channel in channels.values():
        publish_all(edge, channel, updates(range(5)))
    urls = {name: edge + path("updates", channel) for name, channel in channels.items()}
    page.evaluate(START, [urls, {**FAST, "transports": ["websocket"]}, {}])
    eventually(lambda: page.evaluate("window.seen.length") >= 10, 15, "five updates each")
    for channel in channels.values():
        publish_all(edge, channel, updates(range(5, 20)))
    eventually(lambda: page.evaluate("window.seen.length") >= 40, 15, "twenty updates each")
    seen = page.evaluate("window.seen")
    for name in channels:
        assert [n for who, n in seen if who == name] == list(range(20))
    assert len(seen) == 40
    assert page.evaluate("client.transportOf('left')") == "websocket"
    assert {transport for _, _, transport in page.evaluate("window.statuses")} == {"websocket"}
    # Both channels on one socket: the only one the edge holds.
    assert figures(edge)[("pushserver_edge_websockets", ())] == 1
