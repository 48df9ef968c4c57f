"""The EventSource format the edges write and the stream cursors they read, without sockets.

Each rendering is read back with the tests' own parser (`tests.eventsource`),
which follows the WHATWG interpretation as a browser does.
"""

from __future__ import annotations

import pytest

from broker.wire import LAST_SECOND, Message, MessageId
from edge.channels import Held
from edge.eventstream import (
    DELETED_EVENT,
    KEEPALIVE,
    MISSED_EVENT,
    BadCursor,
    data_lines,
    event_body,
    format_cursors,
    id_line,
    notice,
    parse_cursors,
    parse_message_id,
    query_values,
    retry_field,
    wants_stream,
)
from edge.stream import shared_body, shared_event
from tests.eventsource import Event, EventSourceParser


def read(*chunks: bytes) -> EventSourceParser:
    parser = EventSourceParser()
    for chunk in chunks:
        parser.feed(chunk)
    return parser


def test_a_body_arrives_as_the_publisher_sent_it_when_its_lines_end_in_lf() -> None:
    body = "first line\n  indented\n\nafter a blank line\n"
    parsed = read(id_line("5:0") + event_body(body.encode(), None))
    assert parsed.events == [Event("message", body, "5:0")]


def test_crlf_lf_and_cr_each_end_a_line_and_arrive_as_lf() -> None:
    assert data_lines(b"a\r\nb\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n"
    parsed = read(id_line("5:0") + event_body(b"a\r\nb\nc\rd", None))
    assert parsed.events[0].data == "a\nb\nc\nd"


def test_a_lone_cr_cannot_end_a_field_early_or_forge_one() -> None:
    parsed = read(id_line("5:0") + event_body(b"x\rid: 9:9\revent: forged", None))
    assert parsed.events == [Event("message", "x\nid: 9:9\nevent: forged", "5:0")]


def test_an_empty_body_is_still_an_event() -> None:
    assert read(id_line("5:0") + event_body(b"", None)).events == [Event("message", "", "5:0")]


def test_a_body_that_is_not_utf8_gets_a_replacement_character_per_bad_sequence() -> None:
    rendered = event_body(b"ok \xff\xfe then \xe2\x82", None)
    assert rendered == "data: ok \ufffd\ufffd then \ufffd\n\n".encode()
    parsed = read(rendered + id_line("5:1") + event_body(b"next", None))
    assert [event.data for event in parsed.events] == ["ok \ufffd\ufffd then \ufffd", "next"]


def test_a_named_event_reaches_listeners_of_its_name() -> None:
    parsed = read(id_line("5:0") + event_body(b"{}", "order.paid"))
    assert parsed.events == [Event("order.paid", "{}", "5:0")]


@pytest.mark.parametrize("name", ["two\nlines", "", "a b", "x" * 65])
def test_a_name_no_listener_could_have_is_left_out(name: str) -> None:
    assert event_body(b"{}", name) == b"data: {}\n\n"


def test_the_edges_own_notices_name_the_channel_and_keep_the_last_id() -> None:
    parsed = read(
        id_line("5:0") + event_body(b"m", None) + notice(MISSED_EVENT, 'a "b"'),
        notice(DELETED_EVENT, "a"),
    )
    assert parsed.events[1:] == [
        Event(MISSED_EVENT, '{"channel_id": "a \\"b\\""}', "5:0"),
        Event(DELETED_EVENT, '{"channel_id": "a"}', "5:0"),
    ]


def test_comments_and_retry_dispatch_nothing() -> None:
    parsed = read(retry_field(2999) + KEEPALIVE + KEEPALIVE)
    assert parsed.events == [] and parsed.comments == 2 and parsed.retry == 2999


def test_a_one_channel_id_is_the_message_id_and_a_several_channel_id_brackets_its_own() -> None:
    assert format_cursors([MessageId(5, 0)], 0) == "5:0"
    cursors = [MessageId(5, 0), MessageId(7, 2), None]
    assert format_cursors(cursors, 1) == "5:0,[7:2],-"
    assert parse_cursors("5:0,[7:2],-", 3) == cursors


@pytest.mark.parametrize(
    "text",
    ["", "abc", "5", "5:", ":5", "5:0:1", "-5:0", "5:0,6:x", "[5:0],[6:0]", "5.0:1", "5:0x"],
)
def test_a_cursor_that_names_no_position_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(BadCursor, match="last event id"):
        parse_cursors(text, 2 if text.count(",") == 1 else 1)


def test_a_cursor_after_the_last_second_an_http_date_can_name_is_refused() -> None:
    with pytest.raises(BadCursor):
        parse_cursors(f"{LAST_SECOND + 1}:0", 1)
    assert parse_message_id(f"{LAST_SECOND}:3") == MessageId(LAST_SECOND, 3)


def test_a_cursor_for_another_number_of_channels_is_refused() -> None:
    with pytest.raises(BadCursor, match="has 2 cursor"):
        parse_cursors("5:0,-", 3)


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("text/event-stream", True),
        ("text/html, Text/Event-Stream;q=0.5", True),
        ("*/*", False),
        (None, False),
        ("text/event-stream;q=0", False),
        ("text/event-streams", False),
    ],
)
def test_accept_chooses_a_stream(accept: str | None, wanted: bool) -> None:
    assert wants_stream(accept) is wanted


def test_query_values_are_read_as_parse_qsl_reads_them() -> None:
    assert query_values("token=x&last_event_id=5%3A0", "last_event_id") == ["5:0"]
    assert query_values("last%5Fevent%5Fid=1:2&last_event_id=3:4", "last_event_id") == [
        "1:2",
        "3:4",
    ]
    assert query_values("token=x", "last_event_id") == []


def test_what_streams_of_a_message_share_is_rendered_once() -> None:
    held = Held(Message("c", MessageId(5, 1), MessageId(5, 0), None, None, b"a\nb"))
    event = shared_event(held)
    assert event == b"id: 5:1\ndata: a\ndata: b\n\n"
    assert shared_event(held) is event and shared_body(held) is held.event_body
