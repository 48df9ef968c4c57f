"""The push relay protocol as the README's "The HTTP protocol" section states it, against a
real embedded server."""

from __future__ import annotations

import os

import httpx
import pytest

from edge.cors import EXPOSED, PREFLIGHT_HEADERS
from edge.protocol import (
    CACHE_CONTROL,
    ETAG,
    IF_MODIFIED_SINCE,
    IF_NONE_MATCH,
    LAST_MODIFIED,
    MESSAGES_MISSED,
    VARY,
    VARY_VALUE,
)
from tests.client import Cursor, fresh, hold, info, path, poll, publish, walk


def test_walking_the_cursor_yields_every_message_once_in_order(
    base: str, client: httpx.Client
) -> None:
    channel = fresh("walk")
    bodies = [f"message {n}" for n in range(8)]
    for body in bodies:
        publish(base, channel, body)
    responses = []
    cursor = Cursor()
    for _ in bodies:
        response = poll(client, base, channel, cursor)
        assert response.status_code == 200
        responses.append(response)
        cursor = cursor.advanced(response)
    assert [r.text for r in responses] == bodies
    stamps = [(r.headers[LAST_MODIFIED], r.headers[ETAG]) for r in responses]
    assert len(set(stamps)) == len(stamps)
    # Eight publishes in a row share a second at least once: tags then count up.
    assert len({lm for lm, _ in stamps}) < len(stamps)
    for response in responses:
        tag = response.headers[ETAG]
        assert response.headers[CACHE_CONTROL] == f"no-cache, etag={tag}"
        assert response.headers[VARY] == VARY_VALUE


def test_messages_published_before_a_subscriber_arrives_wait_for_it(base: str) -> None:
    channel = fresh("queued")
    for body in ("one", "two", "three"):
        publish(base, channel, body)
    assert walk(base, channel, 3) == [b"one", b"two", b"three"]


def test_no_validators_gets_the_oldest_held_message(base: str, client: httpx.Client) -> None:
    channel = fresh("oldest")
    publish(base, channel, "first")
    publish(base, channel, "second")
    assert poll(client, base, channel).text == "first"
    assert poll(client, base, channel).text == "first"


def test_held_poll_receives_the_next_message_and_publish_answers_201(
    base: str, client: httpx.Client
) -> None:
    channel = fresh("held")
    publish(base, channel, "before")
    waiting = hold(client, base, channel, Cursor().advanced(poll(client, base, channel)))
    assert publish(base, channel, "after").status_code == 201
    response = waiting.result(10)
    assert response.status_code == 200
    assert response.text == "after"


def test_publish_without_held_subscribers_answers_202(base: str) -> None:
    assert publish(base, fresh("nobody"), "x").status_code == 202


def test_channel_info_comes_as_text_json_xml_or_yaml_as_accept_asks(base: str) -> None:
    channel = fresh("info")
    publish(base, channel, "a")
    last = publish(base, channel, "b")
    url = base + path("send-update", channel)
    json_info = httpx.get(url, headers={"Accept": "application/json"}).json()
    assert json_info["messages"] == 2
    assert json_info["subscribers"] == 0
    assert json_info["requested"] == -1
    time_part, tag_part = json_info["last_message_id"].split(":")
    assert int(time_part) > 0 and int(tag_part) >= 0
    last_id = json_info["last_message_id"]

    text = httpx.get(url).text
    assert text == (
        f"queued messages: 2\r\nlast requested: -1 sec. ago\r\n"
        f"active subscribers: 0\r\nlast message id: {last_id}"
    )
    # A publish is answered with the channel's info as the publish left it.
    assert last.headers["Content-Type"].startswith("text/plain")
    assert last.text == text
    xml = httpx.get(url, headers={"Accept": "text/xml"})
    assert xml.headers["Content-Type"].startswith("text/xml")
    assert xml.text == (
        "<channel><messages>2</messages><requested>-1</requested>"
        f"<subscribers>0</subscribers><last_message_id>{last_id}</last_message_id></channel>"
    )
    yaml = httpx.get(url, headers={"Accept": "application/yaml"})
    assert yaml.headers["Content-Type"].startswith("application/yaml")
    lines = yaml.text.splitlines()
    assert lines[0] == "---"
    assert "messages: 2" in lines and "subscribers: 0" in lines and "requested: -1" in lines
    assert f'last_message_id: "{last_id}"' in lines

    assert httpx.get(base + path("updates", channel), timeout=10).text == "a"
    assert 0 <= int(httpx.get(url, headers={"Accept": "text/json"}).json()["requested"]) <= 5


def test_put_creates_and_get_reports_a_missing_channel_as_404(base: str) -> None:
    channel = fresh("created")
    url = base + path("send-update", channel)
    assert httpx.get(url).status_code == 404
    created = httpx.put(url, headers={"Accept": "application/json"})
    assert created.status_code == 200
    assert created.json()["messages"] == 0
    assert httpx.get(url).status_code == 200


def test_delete_answers_every_waiting_subscriber_410(base: str) -> None:
    channel = fresh("deleted")
    publish(base, channel, "only")
    with httpx.Client(timeout=30) as first, httpx.Client(timeout=30) as second:
        cursor = Cursor().advanced(poll(first, base, channel))
        waiting = [hold(c, base, channel, cursor, held=n) for n, c in enumerate((first, second), 1)]
        deleted = httpx.delete(base + path("send-update", channel))
        assert deleted.status_code == 200
        assert "queued messages: 1" in deleted.text
        assert [w.result(10).status_code for w in waiting] == [410, 410]
    assert httpx.delete(base + path("send-update", channel)).status_code == 404
    assert httpx.get(base + path("send-update", channel)).status_code == 404


def test_long_poll_times_out_with_304_echoing_the_validators(
    base: str, client: httpx.Client
) -> None:
    channel = fresh("timeout")
    publish(base, channel, "only")
    first = poll(client, base, channel)
    response = poll(client, base, channel, Cursor().advanced(first))
    assert response.status_code == 304
    assert response.headers[LAST_MODIFIED] == first.headers[LAST_MODIFIED]
    assert response.headers[ETAG] == first.headers[ETAG]
    assert response.content == b""


def test_interval_polling_answers_304_at_once(base: str, client: httpx.Client) -> None:
    channel = fresh("interval")
    publish(base, channel, "only")
    first = poll(client, base, channel, location="poll")
    assert first.text == "only"
    again = poll(client, base, channel, Cursor().advanced(first), location="poll")
    assert again.status_code == 304
    assert again.elapsed.total_seconds() < 1.5  # the long-poll timeout is 2 s
    assert again.headers[ETAG] == first.headers[ETAG]


def test_create_on_get_false_refuses_a_missing_channel_with_403(
    base: str, client: httpx.Client
) -> None:
    channel = fresh("strict")
    assert poll(client, base, channel, location="strict").status_code == 403
    assert info(base, channel) is None
    publish(base, channel, "now it exists")
    assert poll(client, base, channel, location="strict").text == "now it exists"


def test_cors_preflight_and_headers_with_any_origin(base: str, client: httpx.Client) -> None:
    channel = fresh("cors")
    preflight = client.options(
        base + path("updates", channel),
        headers={"Origin": "http://page.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == PREFLIGHT_HEADERS
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    publish(base, channel, "x")
    response = poll(client, base, channel, headers={"Origin": "http://page.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Expose-Headers"] == EXPOSED
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_cors_with_credentials_echoes_an_allowed_origin_and_ignores_others(
    base: str, client: httpx.Client
) -> None:
    channel = fresh("cors-private")
    publish(base, channel, "x")
    allowed = poll(
        client, base, channel, location="private", headers={"Origin": "http://other.example"}
    )
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://other.example"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert MESSAGES_MISSED in allowed.headers["Access-Control-Expose-Headers"]
    refused = poll(
        client, base, channel, location="private", headers={"Origin": "http://evil.example"}
    )
    assert refused.status_code == 200
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_channel_a_never_receives_messages_of_channel_ab(base: str, client: httpx.Client) -> None:
    channel = fresh("prefix")
    longer = channel + "b"
    publish(base, channel, "for a")
    waiting = hold(client, base, channel, Cursor().advanced(poll(client, base, channel)))
    publish(base, longer, "for ab")
    publish(base, channel, "for a again")
    assert waiting.result(10).text == "for a again"
    assert walk(base, longer, 1) == [b"for ab"]


@pytest.mark.parametrize(
    "channel_id",
    ["café ünïcode", "slash/inside", "plus+sign", "query?and#hash", "percent%41"],
)
def test_channel_ids_are_percent_decoded_utf8(base: str, channel_id: str) -> None:
    channel = fresh(channel_id)
    publish(base, channel, f"to {channel}")
    assert walk(base, channel, 1) == [f"to {channel}".encode()]
    assert info(base, channel) is not None
    # '+' is a plus, not a space: the spaced id is another channel.
    if "+" in channel:
        assert info(base, channel.replace("+", " ")) is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "text/plain"),
        (bytes(range(256)) * 4, "application/octet-stream"),
        (os.urandom(1024 * 1024), "application/x-test"),
        (b'{"type": "answer"}', None),
    ],
    ids=["empty", "binary", "one-mebibyte", "no-content-type"],
)
def test_message_bytes_and_content_type_arrive_unchanged(
    base: str, client: httpx.Client, body: bytes, content_type: str | None
) -> None:
    channel = fresh("bytes")
    publish(base, channel, body, content_type)
    response = poll(client, base, channel)
    assert response.status_code == 200
    assert response.content == body
    assert response.headers.get("Content-Type") == content_type


def test_cursor_older_than_the_buffer_gets_the_oldest_and_is_told_it_missed(
    base: str, client: httpx.Client
) -> None:
    channel = fresh("missed")
    publish(base, channel, "first")
    start = Cursor().advanced(poll(client, base, channel))
    for n in range(12):  # the buffer holds 10
        publish(base, channel, f"more {n}")
    response = poll(client, base, channel, start)
    assert response.text == "more 2"
    assert response.headers[MESSAGES_MISSED] == "1"
    following = poll(client, base, channel, Cursor().advanced(response))
    assert following.text == "more 3"
    assert MESSAGES_MISSED not in following.headers


def test_nothing_missed_means_no_missed_header(base: str, client: httpx.Client) -> None:
    channel = fresh("not-missed")
    publish(base, channel, "a")
    first = poll(client, base, channel)
    publish(base, channel, "b")
    second = poll(client, base, channel, Cursor().advanced(first))
    assert second.text == "b"
    assert MESSAGES_MISSED not in first.headers
    assert MESSAGES_MISSED not in second.headers


def test_validators_without_a_time_start_from_the_oldest(base: str, client: httpx.Client) -> None:
    channel = fresh("tag-only")
    publish(base, channel, "a")
    publish(base, channel, "b")
    response = client.get(base + path("updates", channel), headers={IF_NONE_MATCH: "0"})
    assert response.text == "a"
    assert MESSAGES_MISSED not in response.headers
    old = client.get(
        base + path("updates", channel),
        headers={IF_MODIFIED_SINCE: "Thu, 01 Jan 1970 00:00:00 GMT"},
    )
    assert old.text == "a"
    assert MESSAGES_MISSED not in old.headers


def test_a_location_pattern_may_name_its_group(base: str, client: httpx.Client) -> None:
    channel = fresh("named group")
    publish(base, channel, "found by name")
    assert poll(client, base, channel, location="named").text == "found by name"
