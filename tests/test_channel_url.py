"""channel_url and {% channel_url %}: reversing location patterns, escaping ids, and a real edge
receiving the same id the template was given."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.template.backends.django import DjangoTemplates
from django.test.utils import override_settings

from edge.signing import TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_PARAMETER, verify
from pushserver.locations import (
    PUBLISHER,
    SUBSCRIBER,
    channel_url,
    publisher_url,
    subscriber_url,
)
from tests.eventsource import EventStream
from tests.processes import Launcher, Process


def render(source: str, **context: Any) -> str:
    # The backend a TEMPLATES entry builds, which finds installed apps' tag
    # libraries; the test settings configure none.
    engine = DjangoTemplates({"NAME": "tests", "DIRS": [], "APP_DIRS": False, "OPTIONS": {}})
    return engine.from_string(source).render(context)


def with_locations(*locations: dict[str, Any], **push_server: Any) -> override_settings:
    return override_settings(PUSH_SERVER={"locations": locations, **push_server})


def test_defaults_give_the_embedded_edge_and_default_locations() -> None:
    with override_settings(PUSH_SERVER={}):
        assert subscriber_url("news") == "http://127.0.0.1:8001/updates/news"
        assert publisher_url("news") == "http://127.0.0.1:8001/send-update/news"


def test_a_patterns_anchors_are_left_out_of_the_url() -> None:
    with with_locations({"type": SUBSCRIBER, "url": r"^/updates/([^/]+)$"}):
        assert subscriber_url("news") == "http://127.0.0.1:8001/updates/news"


def test_escaped_literals_are_unescaped_on_both_sides_of_the_group() -> None:
    pattern = r"^/live\.feed/v\-1/(?P<channel>[^/]+)\.json$"
    with with_locations({"type": SUBSCRIBER, "url": pattern}):
        assert subscriber_url("news") == "http://127.0.0.1:8001/live.feed/v-1/news.json"


def test_secure_subscriber_host_gives_https_on_that_host() -> None:
    with override_settings(
        PUSH_SERVER={"subscriber_host": {"location": "push.example.com", "secure": True}}
    ):
        assert subscriber_url("news") == "https://push.example.com/updates/news"
        # The publisher host is separate and still the default.
        assert publisher_url("news") == "http://127.0.0.1:8001/send-update/news"


def test_publisher_kind_uses_publisher_host_and_first_publisher_location() -> None:
    with with_locations(
        {"type": SUBSCRIBER, "url": r"/updates/([^/]+)"},
        {"type": PUBLISHER, "url": r"/pub/([^/]+)"},
        {"type": PUBLISHER, "url": r"/other/([^/]+)"},
        publisher_host={"location": "10.0.0.5:9000", "secure": False},
    ):
        assert publisher_url("news") == "http://10.0.0.5:9000/pub/news"
        assert channel_url("news", PUBLISHER) == publisher_url("news")


def test_a_given_location_dict_or_pattern_is_used_instead_of_the_first() -> None:
    private = {"type": SUBSCRIBER, "url": r"/private/([^/]+)"}
    with with_locations({"type": SUBSCRIBER, "url": r"/updates/([^/]+)"}, private):
        assert channel_url("news", location=private) == "http://127.0.0.1:8001/private/news"
        assert channel_url("news", location=r"/raw/(.+)") == "http://127.0.0.1:8001/raw/news"


def test_a_location_of_the_other_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="subscriber URL of a 'publisher' location"):
        channel_url("news", SUBSCRIBER, location={"type": PUBLISHER, "url": r"/p/(.+)"})


@pytest.mark.parametrize(
    ("channel_id", "encoded"),
    [
        ("with space", "with%20space"),
        ("slash/inside", "slash%2Finside"),
        ("q?and#hash", "q%3Fand%23hash"),
        ("plus+sign", "plus%2Bsign"),
        ("percent%20literal", "percent%2520literal"),
        ("ünïcödé ✓", "%C3%BCn%C3%AFc%C3%B6d%C3%A9%20%E2%9C%93"),
        ("safe-chars_.~", "safe-chars_.~"),
    ],
)
def test_channel_ids_are_percent_encoded_whole(channel_id: str, encoded: str) -> None:
    with override_settings(PUSH_SERVER={}):
        assert subscriber_url(channel_id) == f"http://127.0.0.1:8001/updates/{encoded}"


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"/updates|/feed/([^/]+)", "alternation"),
        (r"/updates/?([^/]+)", "quantifier"),
        (r"/up+dates/([^/]+)", "quantifier"),
        (r"/v{2}/([^/]+)", "quantifier"),
        (r"/updates/([^/]+)+", "group has a quantifier"),
        (r"/[uU]pdates/([^/]+)", "character class"),
        (r"/updates.feed/([^/]+)", r"unescaped '\.'"),
        (r"/updates/(?:x)([^/]+)", "not the channel id's group"),
        (r"(?:/updates/([^/]+))", "not the channel id's group"),
        (r"/\d+/([^/]+)", r"escape '\\d'"),
        (r"/updates/([^/]+)/(\d+)", "exactly one group"),
        (r"/updates/[^/]+", "exactly one group"),
        (r"/updates/(", "not valid"),
    ],
)
def test_irreversible_pattern_is_improperly_configured(pattern: str, why: str) -> None:
    with (
        with_locations({"type": SUBSCRIBER, "url": pattern}),
        pytest.raises(ImproperlyConfigured, match=why),
    ):
        subscriber_url("news")


def test_groups_inside_the_channel_group_and_brackets_in_classes_are_fine() -> None:
    pattern = r"/updates/((?:[a-z()\]]|%[0-9A-F]{2})+)"
    with with_locations({"type": SUBSCRIBER, "url": pattern}):
        assert subscriber_url("a b") == "http://127.0.0.1:8001/updates/a%20b"


def test_no_location_of_the_kind_is_improperly_configured() -> None:
    with (
        with_locations({"type": SUBSCRIBER}),
        pytest.raises(ImproperlyConfigured, match="no publisher location"),
    ):
        publisher_url("news")


def test_an_id_the_group_does_not_match_is_a_value_error() -> None:
    with (
        with_locations({"type": SUBSCRIBER, "url": r"/numbers/(\d+)"}),
        pytest.raises(ValueError, match="does not match the group"),
    ):
        subscriber_url("not-a-number")


@pytest.mark.parametrize("channel_id", ["", "nul\0inside", "x" * 1025])
def test_an_id_no_channel_can_have_is_a_value_error(channel_id: str) -> None:
    with override_settings(PUSH_SERVER={}), pytest.raises(ValueError, match="channel id"):
        subscriber_url(channel_id)


def test_tag_outputs_the_subscriber_url_for_a_literal_or_a_variable() -> None:
    with override_settings(PUSH_SERVER={}):
        literal = render('{% load pushserver %}{% channel_url "some channel" %}')
        variable = render("{% load pushserver %}{% channel_url name %}", name="some channel")
        number = render("{% load pushserver %}{% channel_url pk %}", pk=42)
    assert literal == variable == "http://127.0.0.1:8001/updates/some%20channel"
    assert number == "http://127.0.0.1:8001/updates/42"


def test_tag_with_as_stores_the_url_in_a_variable_instead_of_writing_it() -> None:
    with override_settings(PUSH_SERVER={}):
        rendered = render("{% load pushserver %}{% channel_url name as url %}[{{ url }}]", name="a")
    assert rendered == "[http://127.0.0.1:8001/updates/a]"


def test_tag_inside_escapejs_gives_a_javascript_string_of_the_url() -> None:
    source = (
        "{% load pushserver %}"
        "'{% filter escapejs %}{% channel_url \"it's <here>\" %}{% endfilter %}'"
    )
    with override_settings(PUSH_SERVER={}):
        rendered = render(source)
    # The id's quote and angle brackets are percent-encoded, so nothing is left to escape.
    assert rendered == "'http://127.0.0.1:8001/updates/it%27s%20%3Chere%3E'"


# A real edge whose locations need unescaping and anchors stripped to reverse.
ROUND_TRIP_LOCATIONS = (
    {"type": SUBSCRIBER, "url": r"^/live\.feed/([^/]+)\.json$", "polling": "interval"},
    {"type": PUBLISHER, "url": r"^/send\-update/([^/]+)$"},
)
AWKWARD_IDS = [
    "with space",
    "slash/inside",
    "q?and#hash",
    "plus+sign",
    "percent%20literal",
    "ünïcödé ✓",
    "x.json",
]


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher) -> tuple[Process, str]:
    return module_launcher.embedded(locations=ROUND_TRIP_LOCATIONS)


@pytest.mark.parametrize("channel_id", AWKWARD_IDS)
def test_awkward_ids_round_trip_through_a_real_edge(
    edge: tuple[Process, str], channel_id: str
) -> None:
    _, base = edge
    host = {"location": base.removeprefix("http://"), "secure": False}
    push_server = {
        "subscriber_host": host,
        "publisher_host": host,
        "locations": ROUND_TRIP_LOCATIONS,
    }
    with override_settings(PUSH_SERVER=push_server):
        url = render("{% load pushserver %}{% channel_url id %}", id=channel_id)
        published = httpx.post(
            publisher_url(channel_id),
            content=f"for {channel_id}".encode(),
            headers={"Content-Type": "text/plain; charset=utf-8"},
            timeout=10,
        )
    assert published.status_code == 202, published.text
    received = httpx.get(url, timeout=10)
    assert received.status_code == 200, received.text
    assert received.text == f"for {channel_id}"


# -- signed locations ------------------------------------------------------------

NEW_SECRET = "the-secret-that-signs-channel-urls-today"
OLD_SECRET = "the-secret-that-signed-channel-urls-before"
SIGNED_LOCATION = {"type": SUBSCRIBER, "url": r"/signed/([^/]+)", "signed": True}


def signed_settings(**push_server: Any) -> override_settings:
    return with_locations(
        SIGNED_LOCATION,
        {"type": PUBLISHER, "url": r"/send-update/([^/]+)"},
        signed_url_secrets=[NEW_SECRET, OLD_SECRET],
        **push_server,
    )


def token_of(url: str) -> str:
    base, _, query = url.partition("?")
    name, _, token = query.partition("=")
    assert name == TOKEN_PARAMETER and base.startswith("http://")
    return token


def test_a_signed_location_url_carries_a_token_for_the_lifetime_signed_by_the_first_secret() -> (
    None
):
    before = time.time()
    with signed_settings():
        url = subscriber_url("news feed")
    after = time.time()
    assert url.startswith("http://127.0.0.1:8001/signed/news%20feed?token=")
    token = token_of(url)
    expires = int(token.split(".")[0])
    assert math.ceil(before + 3600) <= expires <= math.ceil(after + 3600)
    assert verify([NEW_SECRET], ["news feed"], token, after) is None
    assert verify([NEW_SECRET], ["news feed"], token, expires) == TOKEN_EXPIRED
    assert verify([OLD_SECRET], ["news feed"], token, after) == TOKEN_INVALID


def test_the_lifetime_comes_from_the_setting_the_call_or_the_tag() -> None:
    now = time.time()
    with signed_settings(signed_url_lifetime=60):
        by_setting = token_of(subscriber_url("a"))
        by_call = token_of(channel_url("a", lifetime=5))
        by_tag = token_of(render('{% load pushserver %}{% channel_url "a" lifetime=600 %}'))
    for token, lifetime in ((by_setting, 60), (by_call, 5), (by_tag, 600)):
        assert 0 <= int(token.split(".")[0]) - (now + lifetime) <= 2, (token, lifetime)
    with signed_settings(), pytest.raises(ValueError, match="positive number of seconds"):
        channel_url("a", lifetime=0)


def test_the_tag_on_a_signed_location_outputs_the_url_with_its_token() -> None:
    with signed_settings():
        rendered = render("{% load pushserver %}{% channel_url pk %}", pk=42)
        stored = render("{% load pushserver %}{% channel_url pk as url %}[{{ url }}]", pk=42)
    assert rendered.startswith("http://127.0.0.1:8001/signed/42?token=")
    assert verify([NEW_SECRET], ["42"], token_of(rendered), time.time()) is None
    assert stored.startswith("[http://127.0.0.1:8001/signed/42?token=") and stored.endswith("]")


def test_a_pattern_names_its_configured_location_and_so_whether_it_is_signed() -> None:
    with signed_settings():
        assert "?token=" in channel_url("a", location=SIGNED_LOCATION["url"])
        assert channel_url("a", location=r"/raw/(.+)") == "http://127.0.0.1:8001/raw/a"
        assert publisher_url("a") == "http://127.0.0.1:8001/send-update/a"


def test_a_signed_location_without_a_secret_is_improperly_configured() -> None:
    with (
        with_locations(SIGNED_LOCATION),
        pytest.raises(ImproperlyConfigured, match="signed_url_secrets"),
    ):
        subscriber_url("a")


# -- several channels: one stream ------------------------------------------------


def test_several_ids_give_one_stream_url_each_encoded_and_joined_by_a_comma() -> None:
    with override_settings(PUSH_SERVER={}):
        expected = "http://127.0.0.1:8001/updates/news,a%2Cb,user%2F42"
        assert subscriber_url("news", "a,b", "user/42") == expected
        assert channel_url(["news", "a,b", "user/42"]) == expected
        rendered = render(
            '{% load pushserver %}{% channel_url "news" other pk %}', other="a,b", pk=7
        )
        assert rendered == "http://127.0.0.1:8001/updates/news,a%2Cb,7"
        # One id with a comma of its own is one channel, never several.
        assert subscriber_url("a,b") == "http://127.0.0.1:8001/updates/a%2Cb"


def test_a_stream_url_of_too_many_or_repeated_ids_or_for_a_publisher_is_a_value_error() -> None:
    with with_locations({"type": SUBSCRIBER, "stream_max_channels": 2}):
        assert subscriber_url("a", "b").endswith("/updates/a,b")
        with pytest.raises(ValueError, match="at most 2 channels"):
            subscriber_url("a", "b", "c")
        with pytest.raises(ValueError, match="named twice"):
            subscriber_url("a", "a")
    with override_settings(PUSH_SERVER={}), pytest.raises(ValueError, match="names one channel"):
        channel_url(["a", "b"], PUBLISHER)


def test_a_signed_stream_urls_token_opens_exactly_its_list_of_channels() -> None:
    with signed_settings():
        url = subscriber_url("a", "b")
    assert url.startswith("http://127.0.0.1:8001/signed/a,b?token=")
    token = token_of(url)
    assert verify([NEW_SECRET], ["a", "b"], token, time.time()) is None
    assert verify([NEW_SECRET], ["b", "a"], token, time.time()) == TOKEN_INVALID
    assert verify([NEW_SECRET], ["a"], token, time.time()) == TOKEN_INVALID


def test_awkward_ids_in_one_stream_url_reach_a_real_edge_each_as_given(
    edge: tuple[Process, str],
) -> None:
    _, base = edge
    host = {"location": base.removeprefix("http://"), "secure": False}
    push_server = {
        "subscriber_host": host,
        "publisher_host": host,
        "locations": ROUND_TRIP_LOCATIONS,
    }
    channel_ids = [f"{channel_id} {uuid.uuid4().hex[:6]}" for channel_id in AWKWARD_IDS]
    comma = f"comma,inside {uuid.uuid4().hex[:6]}"
    with override_settings(PUSH_SERVER=push_server):
        url = subscriber_url(*channel_ids, comma)
        for channel_id in [*channel_ids, comma]:
            httpx.post(publisher_url(channel_id), content=f"for {channel_id}".encode(), timeout=10)
    with EventStream(base, url.removeprefix(base)) as stream:
        assert stream.status == 200, stream.body
        events = stream.events_of(len(channel_ids) + 1)
    assert sorted(event.data for event in events) == sorted(
        f"for {channel_id}" for channel_id in [*channel_ids, comma]
    )
