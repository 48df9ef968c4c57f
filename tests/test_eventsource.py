"""EventSource on the subscriber locations of a real edge: ids, bodies, resume, health, limits.

The streams are read off raw sockets and parsed as a browser parses them
(`tests.eventsource`); what the JS client expects of them is in
js/pushserver.js (`parseStreamId`, `formatStreamCursor`, `openStream`).
"""

from __future__ import annotations

import email.utils
import json
import socket
import time
from urllib.parse import quote, urlsplit

import httpx
import pytest

from broker.wire import DELETED_EVENT, MISSED_EVENT
from edge.cors import PREFLIGHT_HEADERS
from edge.eventstream import EVENT_STREAM
from edge.protocol import ETAG, LAST_EVENT_ID, LAST_MODIFIED
from edge.signing import TOKEN_INVALID, sign
from tests.client import fresh, path, publish
from tests.eventsource import EventStream
from tests.following import (
    SLOW_HELD,
    big_bodies,
    follower_figures,
    memory_bound,
    poll_id,
    publish_until,
    report_stalled,
    several,
    stalled_edge,
)
from tests.processes import ANY_PORT, Launcher, Process, eventually, free_port, memory_kib
from tests.raw_http import figures
from tests.test_passthrough import SECRET as PASSTHROUGH_SECRET
from tests.test_passthrough import Site, django_settings, passthrough_locations

SECRET = "the-eventsource-tests-signing-secret-of-some-length"
HELD = 10
SETTINGS = {
    "store": {"type": "memory", "min_messages": 0, "max_messages": HELD, "message_timeout": 60},
    "long_poll_timeout": 2,
    "signed_url_secrets": [SECRET],
    "locations": (
        {"type": "subscriber", "url": r"/updates/([^/]+)"},
        {"type": "subscriber", "url": r"/poll/([^/]+)", "polling": "interval"},
        {"type": "subscriber", "url": r"/strict/([^/]+)", "create_on_get": False},
        {
            "type": "subscriber",
            "url": r"/alive/([^/]+)",
            "stream_keepalive": 0.2,
            "stream_retry": 1000,
        },
        {"type": "subscriber", "url": r"/few/([^/]+)", "stream_max_channels": 3},
        {
            "type": "subscriber",
            "url": r"/private/([^/]+)",
            "allow_origin": ["http://allowed.example"],
            "allow_credentials": True,
        },
        {"type": "subscriber", "url": r"/signed/([^/]+)", "signed": True},
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    ),
}


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher) -> tuple[Process, str]:
    return module_launcher.embedded(**SETTINGS)


@pytest.fixture(scope="module")
def base(edge: tuple[Process, str]) -> str:
    return edge[1]


def stream_figures(base: str) -> dict[str, float]:
    return follower_figures(
        figures(base), "pushserver_edge_streams", "pushserver_edge_streams_closed_total"
    )


def test_a_stream_sends_held_messages_then_live_ones_each_with_the_id_a_poll_gives(
    base: str,
) -> None:
    channel = fresh("ids")
    publish(base, channel, "m0")
    publish(base, channel, "m1")
    with EventStream(base, path("updates", channel)) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == EVENT_STREAM
        assert stream.headers["cache-control"] == "no-cache"
        assert "content-length" not in stream.headers
        stream.events_of(2)
        publish(base, channel, "m2")
        events = stream.events_of(3)
        assert stream.parser.retry is not None and 1500 <= stream.parser.retry <= 4500
    assert [event.data for event in events] == ["m0", "m1", "m2"]
    assert {event.type for event in events} == {"message"}
    first = poll_id(base, channel)
    assert events[0].last_event_id == first
    assert events[1].last_event_id == poll_id(base, channel, last_event_id=first)


def test_bodies_arrive_line_for_line_whatever_their_line_ends_and_bad_utf8_as_u_fffd(
    base: str,
) -> None:
    channel = fresh("bodies")
    bodies = [b"a\r\nb\nc\rd", b"ends in a newline\n", b"", b"\xff\xfebad then good", b"\xe2\x82"]
    for body in bodies:
        publish(base, channel, body, content_type="application/octet-stream")
    with EventStream(base, path("updates", channel)) as stream:
        events = stream.events_of(len(bodies))
    assert [event.data for event in events] == [
        "a\nb\nc\nd",
        "ends in a newline\n",
        "",
        "\ufffd\ufffdbad then good",
        "\ufffd",
    ]


@pytest.mark.parametrize("how", ["header", "query", "header over query"])
def test_a_stream_resumes_after_the_last_event_id_it_is_given(base: str, how: str) -> None:
    channel = fresh("resume")
    for n in range(4):
        publish(base, channel, f"m{n}")
    with EventStream(base, path("updates", channel)) as stream:
        ids = [event.last_event_id for event in stream.events_of(4)]
    target = path("updates", channel)
    headers: list[str] = []
    if how == "header":
        headers = [f"{LAST_EVENT_ID}: {ids[1]}"]
    elif how == "query":
        target += f"?last_event_id={quote(ids[1])}"
    else:
        target += f"?last_event_id={quote(ids[0])}"
        headers = [f"{LAST_EVENT_ID}: {ids[1]}"]
    with EventStream(base, target, *headers) as stream:
        events = stream.events_of(2)
        publish(base, channel, "m4")
        events = stream.events_of(3)
    assert [event.data for event in events] == ["m2", "m3", "m4"]


def test_a_cursor_older_than_the_buffer_gets_a_missed_event_before_the_oldest_held(
    base: str,
) -> None:
    channel = fresh("missed")
    publish(base, channel, "gone")
    with EventStream(base, path("updates", channel)) as stream:
        (first,) = stream.events_of(1)
    for n in range(HELD + 2):
        publish(base, channel, f"m{n}")
    with EventStream(
        base, path("updates", channel), f"{LAST_EVENT_ID}: {first.last_event_id}"
    ) as s:
        events = s.events_of(HELD + 1)
    assert events[0].type == MISSED_EVENT
    assert json.loads(events[0].data) == {"channel_id": channel}
    # No id of its own: a reconnect right after it resumes where the client stood
    # (a browser keeps the last id across reconnects; this fresh parser has none).
    assert events[0].last_event_id == ""
    assert [event.data for event in events[1:]] == [f"m{n}" for n in range(2, HELD + 2)]


def test_a_cursor_within_the_buffer_gets_no_missed_event(base: str) -> None:
    channel = fresh("not-missed")
    for n in range(3):
        publish(base, channel, f"m{n}")
    with EventStream(base, path("updates", channel)) as stream:
        ids = [event.last_event_id for event in stream.events_of(3)]
    with EventStream(base, path("updates", channel), f"{LAST_EVENT_ID}: {ids[0]}") as stream:
        events = stream.events_of(2)
        stream.read_some(0.3)
    assert [event.type for event in stream.events] == ["message", "message"]
    assert [event.data for event in events] == ["m1", "m2"]


def test_an_idle_stream_gets_a_comment_every_stream_keepalive(base: str) -> None:
    channel = fresh("alive")
    with EventStream(base, path("alive", channel)) as stream:
        started = time.monotonic()
        stream.until(lambda: stream.parser.comments >= 3, 5, "three keep-alive comments")
        took = time.monotonic() - started
        assert stream.parser.retry is not None and 500 <= stream.parser.retry <= 1500
    assert took >= 0.4  # every 0.2 s, not at once
    assert stream.events == []


@pytest.mark.parametrize(
    ("cursor", "why"),
    [
        ("yesterday", "is not a message id"),
        ("5:0,6:0", "has 2 cursor(s); this stream has 1"),
        ("1:2:3", "is not a message id"),
    ],
)
def test_a_malformed_cursor_is_refused_400_with_a_reason(base: str, cursor: str, why: str) -> None:
    channel = fresh("bad-cursor")
    with EventStream(base, path("updates", channel), f"{LAST_EVENT_ID}: {cursor}") as stream:
        assert stream.status == 400
        assert why in stream.body.decode()
    with EventStream(base, path("updates", channel) + f"?last_event_id={quote(cursor)}") as stream:
        assert stream.status == 400


def test_deleting_the_channel_ends_its_streams_with_a_deleted_event(base: str) -> None:
    channel = fresh("deleted")
    publish(base, channel, "m0")
    streams = [EventStream(base, path("updates", channel)) for _ in range(3)]
    try:
        for stream in streams:
            stream.events_of(1)
        assert httpx.delete(base + path("send-update", channel)).status_code == 200
        for stream in streams:
            stream.until_closed()
            assert [event.type for event in stream.events] == ["message", DELETED_EVENT]
            assert json.loads(stream.events[1].data) == {"channel_id": channel}
            assert stream.events[1].last_event_id == stream.events[0].last_event_id
    finally:
        for stream in streams:
            stream.close()


def test_a_stream_of_a_channel_that_must_exist_and_does_not_is_403(base: str) -> None:
    with EventStream(base, path("strict", fresh("missing"))) as stream:
        assert stream.status == 403


def test_a_stream_of_several_channels_resumes_each_of_them_exactly(base: str) -> None:
    # The second id holds a comma of its own: encoded, it does not split the URL.
    channels = [fresh("multi-a"), fresh("multi,b"), fresh("multi-c")]
    target = several("updates", *channels)
    publish(base, channels[1], "b0")
    with EventStream(base, target) as stream:
        (b0,) = stream.events_of(1)
        publish(base, channels[0], "a0")
        publish(base, channels[2], "c0")
        publish(base, channels[1], "b1")
        events = stream.events_of(4)
    assert [event.data for event in events] == ["b0", "a0", "c0", "b1"]
    own = [
        next(i for i, part in enumerate(e.last_event_id.split(",")) if "[" in part) for e in events
    ]
    assert own == [1, 0, 2, 1]
    assert b0.last_event_id.split(",")[0] == "-" and b0.last_event_id.split(",")[2] == "-"
    last = events[-1].last_event_id
    # While no stream is open, each channel moves on; the id resumes each where it stood.
    publish(base, channels[2], "c1")
    publish(base, channels[0], "a1")
    with EventStream(base, target, f"{LAST_EVENT_ID}: {last}") as stream:
        resumed = stream.events_of(2)
        stream.read_some(0.3)
    assert sorted(event.data for event in stream.events) == ["a1", "c1"]
    # The client's own form (no brackets, in the query) resumes alike.
    plain = last.replace("[", "").replace("]", "")
    with EventStream(base, f"{target}?last_event_id={quote(plain)}") as stream:
        again = stream.events_of(2)
    assert [event.data for event in again] == [event.data for event in resumed]


def test_a_stream_of_more_channels_than_stream_max_channels_is_400(base: str) -> None:
    with EventStream(base, several("few", *(fresh("c") for _ in range(4)))) as stream:
        assert stream.status == 400
        assert "at most 3 channels" in stream.body.decode()
    with EventStream(base, several("few", *(fresh("c") for _ in range(3)))) as stream:
        assert stream.status == 200


def test_a_poll_of_a_url_of_several_channels_is_400(base: str) -> None:
    response = httpx.get(base + several("updates", fresh("a"), fresh("b")), timeout=10)
    assert response.status_code == 400
    assert "EventSource" in response.text


def test_a_poll_takes_its_cursor_from_last_event_id_and_no_cache_keeps_the_answer(
    base: str,
) -> None:
    channel = fresh("query-poll")
    for n in range(2):
        publish(base, channel, f"m{n}")
    first = poll_id(base, channel)
    response = httpx.get(base + path("updates", channel), params={"last_event_id": first})
    assert response.status_code == 200 and response.text == "m1"
    assert response.headers["cache-control"] == "no-store"
    newest = poll_id(base, channel, last_event_id=first)
    at_newest = httpx.get(base + path("poll", channel), params={"last_event_id": newest})
    assert at_newest.status_code == 304
    assert at_newest.headers["cache-control"] == "no-store"
    # The 304 sends the client back to where it stood, in validators as in its URL.
    seconds, tag = newest.split(":")
    assert at_newest.headers[ETAG] == tag
    assert at_newest.headers[LAST_MODIFIED] == email.utils.formatdate(int(seconds), usegmt=True)
    bad = httpx.get(base + path("updates", channel), params={"last_event_id": "5:0,6:0"})
    assert bad.status_code == 400 and "last_event_id" in bad.text


def test_a_cross_origin_stream_carries_cors_with_credentials_and_the_preflight_allows_last_event_id(
    base: str,
) -> None:
    channel = fresh("cors")
    origin = "http://allowed.example"
    with EventStream(base, path("private", channel), f"Origin: {origin}") as stream:
        assert stream.status == 200
        assert stream.headers["access-control-allow-origin"] == origin
        assert stream.headers["access-control-allow-credentials"] == "true"
    preflight = httpx.options(
        base + path("private", channel),
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["access-control-allow-headers"].lower().split(", ")
    assert LAST_EVENT_ID.lower() in allowed and preflight.headers[
        "access-control-allow-headers"
    ] == (PREFLIGHT_HEADERS)


def test_a_signed_stream_of_several_channels_needs_a_token_for_that_list(base: str) -> None:
    channels = [fresh("signed-a"), fresh("signed-b")]
    expires = int(time.time()) + 600
    target = several("signed", *channels)
    token = sign(SECRET, channels, expires)
    with EventStream(base, f"{target}?token={token}") as stream:
        assert stream.status == 200
    for wrong in (sign(SECRET, channels[:1], expires), sign(SECRET, channels[::-1], expires)):
        with EventStream(base, f"{target}?token={wrong}") as stream:
            assert stream.status == 403
            assert stream.body.decode().strip() == TOKEN_INVALID


def test_the_metrics_count_open_streams(base: str) -> None:
    channel = fresh("counted")
    before = stream_figures(base)["open"]
    with EventStream(base, path("updates", channel)) as stream:
        stream.read_some(0.1)
        eventually(lambda: stream_figures(base)["open"] == before + 1, 5, "the stream counted")
    eventually(lambda: stream_figures(base)["open"] == before, 5, "the stream uncounted")


def test_sigterm_ends_every_stream_at_once_before_the_edge_closes_the_rest(
    launcher: Launcher,
) -> None:
    process, base = launcher.embedded()
    channels = [fresh("stopping") for _ in range(5)]
    streams = [EventStream(base, path("updates", channel)) for channel in channels]
    # A connection that has asked for nothing yet: the edge closes it only at its very end.
    address = urlsplit(base)
    idle = socket.create_connection((address.hostname, address.port), timeout=10)
    try:
        for stream in streams:
            assert stream.status == 200
            stream.read_some(0.1)
        started = time.monotonic()
        process.popen.terminate()
        for stream in streams:
            stream.until_closed(5)
        took = time.monotonic() - started
        idle.setblocking(False)
        with pytest.raises(BlockingIOError):
            idle.recv(1)  # still open: the streams were ended first, not with everything
        assert process.stop() == 0
    finally:
        idle.close()
        for stream in streams:
            stream.close()
    print(f"\nSIGTERM: {len(streams)} streams ended within {took * 1000:.0f} ms")


def test_a_stalled_reader_is_closed_at_stream_buffer_and_resumes_with_everything(
    launcher: Launcher,
) -> None:
    pid, url = stalled_edge(launcher)
    channel = fresh("stalled")
    bodies = big_bodies()
    with EventStream(url, path("updates", channel), receive_buffer=16 * 1024) as stalled:
        assert stalled.status == 200
        before = memory_kib(pid, "VmRSS")
        # Reads nothing while the channel goes on: the edge must close the stream.
        published = publish_until(
            url, channel, bodies, lambda: stream_figures(url).get("slow", 0) >= 1, "stream"
        )
        grown = (memory_kib(pid, "VmHWM") - before) * 1024
        # What the kernel had taken before the edge closed it is still read, then the end.
        stalled.until_closed(30)
        received = [event.data.encode() for event in stalled.events]
        last = stalled.parser.last_event_id
    report_stalled("reader: closed", published, len(received), grown)
    assert received == bodies[: len(received)]
    assert grown < memory_bound(published)
    with EventStream(url, path("updates", channel), f"{LAST_EVENT_ID}: {last}") as resumed:
        resumed.events_of(published - len(received), 30)
        # A reader that keeps up, live: each message is read before the next is sent.
        for n in range(published, SLOW_HELD):
            publish(url, channel, bodies[n])
            resumed.events_of(n + 1 - len(received), 30)
        received += [event.data.encode() for event in resumed.events]
    assert len(received) == len(bodies) and received == bodies
    assert stream_figures(url).get("slow", 0) == 1


@pytest.fixture(scope="module")
def site(module_launcher: Launcher) -> Site:
    """Django and an embedded broker and edge in one process, the edge calling Django's
    passthrough view on /updates/ and asking it first on /private/."""
    port = free_port()
    passthrough = f"http://127.0.0.1:{port}/passthrough"
    push_server = {
        "broker": dict(ANY_PORT),
        "passthrough_secret": PASSTHROUGH_SECRET,
        "locations": passthrough_locations(
            passthrough,
            2,
            {
                "type": "subscriber",
                "url": r"/private/([^/]+)",
                "passthrough": passthrough,
                "authorize": True,
            },
        ),
    }
    folder = module_launcher.folder / "site"
    folder.mkdir()
    module = module_launcher.settings(push_server, **django_settings(folder))
    module_launcher.manage(module, "migrate", "--noinput", "--verbosity=0")
    process = module_launcher.run("site", module, "--allrequests", f"127.0.0.1:{port}")
    process.wait_for("Edge listening on")
    return Site(process, f"http://127.0.0.1:{port}", folder / "events.jsonl", folder / "refuse-all")


def session_cookie(site: Site, username: str) -> str:
    with site.browser(username) as browser:
        return "; ".join(f"{name}={value}" for name, value in browser.cookies.items())


def test_a_stream_is_one_subscribe_when_it_opens_and_one_unsubscribe_when_it_closes(
    site: Site,
) -> None:
    channels = [fresh("presence-a"), fresh("presence-b")]
    cookie = f"Cookie: {session_cookie(site, 'alice')}"
    with EventStream(site.base, several("updates", *channels), cookie) as stream:
        assert stream.status == 200
        for n in range(3):
            for channel in channels:
                publish(site.base, channel, f"m{n}")
        stream.events_of(6)
        for channel in channels:
            assert site.events(channel) == [("subscribe", "alice")]
    expected = [("subscribe", "alice"), ("unsubscribe", "alice")]
    for channel in channels:
        eventually(lambda c=channel: site.events(c) == expected, 10, f"{expected} for {channel}")


def test_authorize_refuses_a_stream_with_403_before_it_opens(site: Site) -> None:
    channel = fresh("private-stream")
    publish(site.base, channel, "secret plans")
    mallory = f"Cookie: {session_cookie(site, 'mallory')}"
    with EventStream(site.base, path("private", channel), mallory) as refused:
        assert refused.status == 403
        assert refused.body.decode().strip() == "subscription refused"
    alice = f"Cookie: {session_cookie(site, 'alice')}"
    with EventStream(site.base, path("private", channel), alice) as admitted:
        assert admitted.status == 200
        assert [event.data for event in admitted.events_of(1)] == ["secret plans"]


def test_a_stream_the_edge_cannot_open_while_the_broker_is_away_is_told_to_retry_not_refused(
    launcher: Launcher,
) -> None:
    broker, endpoints = launcher.broker()
    _, base = launcher.edge(endpoints, broker_timeout=0.5)
    broker.stop()
    channel = fresh("away")
    # A poll is refused for now; a browser's EventSource would take a refusal as final.
    assert httpx.get(base + path("updates", channel), timeout=10).status_code == 503
    with EventStream(base, path("updates", channel)) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == EVENT_STREAM
        stream.until_closed()
        assert stream.parser.retry is not None and 1500 <= stream.parser.retry <= 4500
        assert stream.parser.comments == 1
        assert stream.events == []
    assert stream_figures(base)["unavailable"] == 1
