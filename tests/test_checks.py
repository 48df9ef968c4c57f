"""The PUSH_SERVER checks, its translation into configurations, runpushserver refusing bad ones."""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test.utils import override_settings

from broker.config import DEFAULT_INGRESS, BrokerConfig
from edge.config import LOOPBACK, EdgeConfig
from pushserver import rules, schema
from pushserver.rules import Check

# The block the original django-pushserver 0.3.4 documented; it must keep working unchanged.
ORIGINAL_0_3_4 = {
    "port": 8001,
    "address": "127.0.0.1",
    "publisher_host": {"location": "127.0.0.1:8001", "secure": False},
    "subscriber_host": {"location": "127.0.0.1:8001", "secure": False},
    "store": {"type": "memory", "min_messages": 0, "max_messages": 100, "message_timeout": 10},
    "locations": (
        {
            "type": "subscriber",
            "url": r"/updates/([^/]+)",
            "polling": "long",
            "create_on_get": True,
            "allow_origin": "http://127.0.0.1:8000",
            "allow_credentials": True,
            "passthrough": "http://127.0.0.1:8000/passthrough",
        },
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    ),
}


@pytest.fixture(scope="module", autouse=True)
def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_settings")
    django.setup()


def messages_for(push_server: Any, **extra: Any) -> list[checks.CheckMessage]:
    from pushserver.checks import check_settings

    with override_settings(PUSH_SERVER=push_server, **extra):
        return check_settings()


def only(push_server: Any, check: Check, **extra: Any) -> str:
    """The one message `push_server` gets; it must carry `check`'s id."""
    found = messages_for(push_server, **extra)
    assert [message.id for message in found] == [check.id], [str(m) for m in found]
    return str(found[0].msg)


def test_the_original_0_3_4_block_passes_without_any_message() -> None:
    assert messages_for(ORIGINAL_0_3_4) == []


def test_an_empty_block_passes_without_any_message() -> None:
    assert messages_for({}) == []


def test_a_missing_setting_passes_without_any_message() -> None:
    from pushserver.checks import check_settings

    with override_settings():
        del settings.PUSH_SERVER
        assert check_settings() == []


def test_the_registered_check_runs_with_djangos_checks() -> None:
    with override_settings(PUSH_SERVER=[]):
        found = checks.run_checks()
    assert rules.NOT_A_DICT.id in [message.id for message in found]


def test_not_a_dict() -> None:
    message = only([("port", 8001)], rules.NOT_A_DICT)
    assert "must be a dict, got list" in message


def test_several_named_stores_are_refused() -> None:
    stores = {"default": {"type": "memory"}, "other": {"type": "memory"}}
    message = only({"store": stores}, rules.SEVERAL_STORES)
    assert "2 stores" in message and "'other'" in message and "one store" in message
    message = only({"stores": stores}, rules.SEVERAL_STORES)
    assert "2 stores" in message


def test_exactly_one_named_store_is_accepted_and_used() -> None:
    from pushserver import conf

    push_server = {
        "stores": {"main": {"type": "memory", "max_messages": 7}},
        "locations": ({"type": "subscriber", "store": "main"}, {"type": "publisher"}),
    }
    assert messages_for(push_server) == []
    with override_settings(PUSH_SERVER=push_server):
        assert conf.broker_config().max_messages == 7


def test_a_location_naming_a_missing_store() -> None:
    push_server = {"locations": ({"type": "subscriber", "store": "elsewhere"},)}
    message = only(push_server, rules.LOCATION_STORE)
    assert "'elsewhere'" in message and "'default'" in message


def test_a_store_written_as_none_leaves_the_named_stores_checked() -> None:
    message = only({"store": None, "stores": {"a": {}, "b": {}}}, rules.SEVERAL_STORES)
    assert "2 stores ('a', 'b')" in message


def test_store_type_other_than_memory() -> None:
    message = only({"store": {"type": "redis"}}, rules.STORE_TYPE_NOT_MEMORY)
    assert "must be 'memory', got 'redis'" in message


@pytest.mark.parametrize(
    ("store", "check", "expected"),
    [
        (
            {"max_messages": -3},
            rules.MAX_MESSAGES,
            "['max_messages'] must be a positive integer, got -3",
        ),
        ({"max_messages": 0}, rules.MAX_MESSAGES, "['max_messages'] must be a positive integer"),
        (
            {"min_messages": -1},
            rules.MIN_MESSAGES,
            "['min_messages'] must be an integer of 0 or more, got -1",
        ),
        (
            {"min_messages": 5, "max_messages": 3},
            rules.MIN_OVER_MAX,
            "(5) must not exceed max_messages (3)",
        ),
        (
            {"message_timeout": "10"},
            rules.MESSAGE_TIMEOUT,
            "['message_timeout'] must be a number of seconds",
        ),
    ],
)
def test_bad_store_numbers(store: dict[str, Any], check: Check, expected: str) -> None:
    message = only({"store": {"type": "memory", **store}}, check)
    assert "PUSH_SERVER['store']" in message and expected in message


@pytest.mark.parametrize("port", [-1, 70000, "http", True])
def test_bad_port(port: Any) -> None:
    message = only({"port": port}, rules.PORT)
    assert f"PUSH_SERVER['port'] must be an integer from 0 to 65535, got {port!r}" in message


@pytest.mark.parametrize(
    "host", [{"location": "http://push.example.com", "secure": True}, {"location": "a:b"}]
)
def test_bad_host_locations(host: Any) -> None:
    message = only({"subscriber_host": host}, rules.HOST_LOCATION)
    assert "PUSH_SERVER['subscriber_host']['location'] must be 'host' or 'host:port'" in message
    assert f"got {host['location']!r}" in message


def test_a_host_must_be_a_dict() -> None:
    message = only({"subscriber_host": "x"}, rules.HOST_SHAPE)
    assert "PUSH_SERVER['subscriber_host'] must be a dict like {'location'" in message
    assert "got 'x'" in message


def test_host_secure_must_be_a_bool() -> None:
    message = only({"publisher_host": {"location": "h:1", "secure": "yes"}}, rules.HOST_SECURE)
    assert "['secure'] must be True or False, got 'yes'" in message


@pytest.mark.parametrize(
    ("location", "check", "expected"),
    [
        ({"url": "/x/(.+)"}, rules.LOCATION_TYPE, "['type'] must be 'subscriber' or 'publisher'"),
        ({"type": "relay"}, rules.LOCATION_TYPE, "got 'relay'"),
        ({"type": "subscriber", "url": "/x/(["}, rules.LOCATION_URL, "not a valid regular"),
        ({"type": "subscriber", "url": "/x/(a)/(b)"}, rules.LOCATION_URL, "exactly one group"),
        ({"type": "publisher", "url": "/x/.+"}, rules.LOCATION_URL, "has 0"),
        ({"type": "publisher", "url": "x/(.+)"}, rules.LOCATION_URL, "from its leading '/'"),
        ({"type": "subscriber", "polling": "short"}, rules.POLLING, "got 'short'"),
        ({"type": "subscriber", "polling": None}, rules.POLLING, "got None"),
        ({"type": "subscriber", "allow_origin": "example.com"}, rules.ALLOW_ORIGIN, "origin"),
        (
            {"type": "subscriber", "allow_origin": ["https://a.example/path"]},
            rules.ALLOW_ORIGIN,
            "no path",
        ),
        ({"type": "publisher", "allow_from": ["10.0.0.0/33"]}, rules.ALLOW_FROM, "10.0.0.0/33"),
        ({"type": "publisher", "allow_from": ["intranet"]}, rules.ALLOW_FROM, "'intranet'"),
        ({"type": "publisher", "secret": ""}, rules.PUBLISHER_SECRET, "got ''"),
        ({"type": "subscriber", "passthrough": "/passthrough"}, rules.PASSTHROUGH_URL, "http://"),
        (
            {"type": "subscriber", "authorize": 1, "passthrough": "http://127.0.0.1:8000/p"},
            rules.SUBSCRIBER_FLAG,
            "['authorize'] must be True or False, got 1",
        ),
        (
            {"type": "subscriber", "create_on_get": "no"},
            rules.SUBSCRIBER_FLAG,
            "['create_on_get'] must be True or False, got 'no'",
        ),
        (
            {"type": "subscriber", "passthrough_grace": -1},
            rules.SUBSCRIBER_SECONDS,
            "['passthrough_grace'] must be a number of seconds >= 0, got -1",
        ),
        ({"type": "subscriber", "authorize": True}, rules.AUTHORIZE_WITHOUT_PASSTHROUGH, "needs"),
        ({"type": "publisher", "store": 5}, rules.LOCATION_STORE, "got 5"),
    ],
)
def test_bad_locations(location: dict[str, Any], check: Check, expected: str) -> None:
    message = only({"locations": (location,)}, check)
    assert "PUSH_SERVER['locations'][0]" in message and expected in message


def test_locations_must_be_a_list() -> None:
    message = only({"locations": "/updates/(.+)"}, rules.LOCATIONS_SHAPE)
    assert "must be a list of location dicts, got str" in message


def test_each_location_must_be_a_dict() -> None:
    message = only({"locations": [{"type": "subscriber"}, "publisher"]}, rules.LOCATION_SHAPE)
    assert "PUSH_SERVER['locations'][1] must be a dict, got str" in message


def test_the_originals_location_keys_are_accepted_and_ignored() -> None:
    location = {"type": "subscriber", "prefix": "/updates/", "create_on_post": True}
    assert messages_for({"locations": (location,), "servername": "push"}) == []


def test_allow_origin_accepts_one_origin_a_list_or_star() -> None:
    for allow_origin in ("*", "https://a.example", ["https://a.example", "http://b.example:8000"]):
        location = {"type": "subscriber", "allow_origin": allow_origin}
        assert messages_for({"locations": (location,)}) == []


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:5560", "http://127.0.0.1:5560", 5560, "tcp://", ["tcp://127.0.0.1:1"]]
)
def test_bad_broker_endpoints(endpoint: Any) -> None:
    message = only({"broker": {"ingress": endpoint}}, rules.BROKER_ENDPOINT)
    assert "must be a ZeroMQ endpoint starting with tcp://, ipc:// or inproc://" in message


def test_broker_endpoints_must_differ_unless_ephemeral() -> None:
    message = only({"broker": {"events": DEFAULT_INGRESS}}, rules.BROKER_ENDPOINTS_SHARED)
    assert "must differ" in message
    ephemeral = dict.fromkeys(("ingress", "events", "control"), "tcp://127.0.0.1:*")
    assert messages_for({"broker": ephemeral}) == []


def test_broker_must_be_a_dict() -> None:
    message = only({"broker": "tcp://127.0.0.1:5560"}, rules.BROKER_SHAPE)
    assert "PUSH_SERVER['broker'] must be a dict of 'ingress', 'events' and 'control'" in message


@pytest.mark.parametrize(
    ("key", "value", "check", "expected"),
    [
        ("send_timeout", 0, rules.SECONDS, "must be a positive number of seconds, got 0"),
        ("long_poll_timeout", -5, rules.SECONDS, "must be a positive number of seconds, got -5"),
        ("broker_unreachable_timeout", "3", rules.SECONDS, "got '3'"),
        ("send_queue_size", 1.5, rules.COUNT, "must be a positive integer, got 1.5"),
        ("max_message_size", 0, rules.COUNT, "must be a positive integer, got 0"),
        ("events_hwm", -1, rules.EVENTS_HWM, "must be a number of messages >= 0"),
    ],
)
def test_bad_timeouts_and_sizes(key: str, value: Any, check: Check, expected: str) -> None:
    message = only({key: value}, check)
    assert f"PUSH_SERVER[{key!r}]" in message and expected in message


def test_history_file_must_be_a_path() -> None:
    message = only({"history_file": 3}, rules.HISTORY_FILE)
    assert "must be a file path or None, got 3" in message


def test_ignore_errors_must_be_a_bool() -> None:
    message = only({}, rules.IGNORE_ERRORS_FLAG, PUSH_SERVER_IGNORE_ERRORS="yes")
    assert "PUSH_SERVER_IGNORE_ERRORS must be True or False, got 'yes'" in message


LONG_SECRET = "a-signing-secret-of-forty-characters-...."


def test_signed_locations_need_a_secret_and_take_several() -> None:
    signed = {"locations": ({"type": "subscriber", "signed": True},)}
    message = only(signed, rules.SIGNED_WITHOUT_SECRET)
    assert "PUSH_SERVER['locations'][0]['signed'] needs PUSH_SERVER['signed_url_secrets']" in (
        message
    )
    assert only({**signed, "signed_url_secrets": []}, rules.SIGNED_WITHOUT_SECRET)
    for secrets in (LONG_SECRET, [LONG_SECRET], (LONG_SECRET, LONG_SECRET.upper())):
        assert messages_for({**signed, "signed_url_secrets": secrets}) == []


def test_a_signing_secret_under_32_characters_is_a_warning_naming_it() -> None:
    found = messages_for({"signed_url_secrets": [LONG_SECRET, "x" * 31]})
    assert [message.id for message in found] == [rules.SHORT_SIGNING_SECRET.id]
    assert not found[0].is_serious()
    assert "a secret of 31 characters (item 1)" in str(found[0].msg)
    assert messages_for({"signed_url_secrets": ["x" * 32]}) == []


@pytest.mark.parametrize("secrets", ["", [""], [LONG_SECRET, 5], {"key": LONG_SECRET}])
def test_signing_secrets_must_be_non_empty_strings(secrets: Any) -> None:
    message = only({"signed_url_secrets": secrets}, rules.SIGNED_URL_SECRETS)
    assert "must be a list of non-empty strings, the first signing" in message


def test_forwarded_allow_ips_takes_networks_and_may_be_empty() -> None:
    for allowed in ([], "10.0.0.0/8", ["127.0.0.1", "10.1.2.3/8", "::1/128"]):
        assert messages_for({"forwarded_allow_ips": allowed}) == []
    message = only({"forwarded_allow_ips": ["10.0.0.0/33"]}, rules.FORWARDED_ALLOW_IPS)
    assert "PUSH_SERVER['forwarded_allow_ips']" in message and "10.0.0.0/33" in message


# One setting that shows each cause, and nothing else.
EXAMPLES: dict[Check, dict[str, Any]] = {
    rules.NOT_A_DICT: {"PUSH_SERVER": ["port"]},
    rules.SEVERAL_STORES: {"PUSH_SERVER": {"stores": {"a": {}, "b": {}}}},
    rules.STORE_TYPE_NOT_MEMORY: {"PUSH_SERVER": {"store": {"type": "redis"}}},
    rules.MAX_MESSAGES: {"PUSH_SERVER": {"store": {"max_messages": 0}}},
    rules.PORT: {"PUSH_SERVER": {"port": 65536}},
    rules.HOST_LOCATION: {"PUSH_SERVER": {"publisher_host": {"location": "https://h"}}},
    rules.LOCATION_TYPE: {"PUSH_SERVER": {"locations": [{"type": "relay"}]}},
    rules.LOCATION_URL: {"PUSH_SERVER": {"locations": [{"type": "publisher", "url": "/x"}]}},
    rules.POLLING: {"PUSH_SERVER": {"locations": [{"type": "subscriber", "polling": "short"}]}},
    rules.ALLOW_ORIGIN: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "allow_origin": []}]}
    },
    rules.ALLOW_FROM: {"PUSH_SERVER": {"locations": [{"type": "publisher", "allow_from": 8}]}},
    rules.BROKER_ENDPOINT: {"PUSH_SERVER": {"broker": {"control": "udp://x"}}},
    rules.SECONDS: {"PUSH_SERVER": {"topic_linger": 0}},
    rules.HISTORY_FILE: {"PUSH_SERVER": {"history_file": ""}},
    rules.IGNORE_ERRORS_FLAG: {"PUSH_SERVER_IGNORE_ERRORS": 1},
    rules.PASSTHROUGH_SECRET: {"PUSH_SERVER": {"passthrough_secret": ""}},
    rules.METRICS_ALLOW_FROM: {"PUSH_SERVER": {"metrics_allow_from": ["intranet"]}},
    rules.STORES_SHAPE: {"PUSH_SERVER": {"stores": [{"type": "memory"}]}},
    rules.STORE_SHAPE: {"PUSH_SERVER": {"store": "memory"}},
    rules.MIN_MESSAGES: {"PUSH_SERVER": {"store": {"min_messages": -1}}},
    rules.MIN_OVER_MAX: {"PUSH_SERVER": {"store": {"min_messages": 101}}},
    rules.MESSAGE_TIMEOUT: {"PUSH_SERVER": {"store": {"message_timeout": -1}}},
    rules.ADDRESS: {"PUSH_SERVER": {"address": 127}},
    rules.HOST_SHAPE: {"PUSH_SERVER": {"subscriber_host": "push.example.com"}},
    rules.HOST_SECURE: {"PUSH_SERVER": {"subscriber_host": {"secure": None}}},
    rules.LOCATIONS_SHAPE: {"PUSH_SERVER": {"locations": {"type": "subscriber"}}},
    rules.LOCATION_SHAPE: {"PUSH_SERVER": {"locations": ["subscriber"]}},
    rules.LOCATION_STORE: {"PUSH_SERVER": {"locations": [{"type": "publisher", "store": "x"}]}},
    rules.SUBSCRIBER_FLAG: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "allow_credentials": "yes"}]}
    },
    rules.PASSTHROUGH_URL: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "passthrough": "ftp://x"}]}
    },
    rules.SUBSCRIBER_SECONDS: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "authorize_cache": "60"}]}
    },
    rules.AUTHORIZE_WITHOUT_PASSTHROUGH: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "authorize": True}]}
    },
    rules.PUBLISHER_SECRET: {"PUSH_SERVER": {"locations": [{"type": "publisher", "secret": 1}]}},
    rules.BROKER_SHAPE: {"PUSH_SERVER": {"broker": ["tcp://127.0.0.1:5560"]}},
    rules.BROKER_ENDPOINTS_SHARED: {
        "PUSH_SERVER": {"broker": {"ingress": "ipc://x", "control": "ipc://x"}}
    },
    rules.COUNT: {"PUSH_SERVER": {"max_connections": 0}},
    rules.EVENTS_HWM: {"PUSH_SERVER": {"events_hwm": 1.5}},
    rules.FORWARDED_ALLOW_IPS: {"PUSH_SERVER": {"forwarded_allow_ips": ["balancer"]}},
    rules.SIGNED_FLAG: {"PUSH_SERVER": {"locations": [{"type": "subscriber", "signed": "yes"}]}},
    rules.SIGNED_URL_SECRETS: {"PUSH_SERVER": {"signed_url_secrets": [LONG_SECRET, ""]}},
    rules.SIGNED_WITHOUT_SECRET: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "signed": True}]}
    },
    rules.BYTES_OR_OFF: {"PUSH_SERVER": {"events_queue_bytes": -1}},
    rules.CURVE_SHAPE: {"PUSH_SERVER": {"curve": "/etc/pushserver/keys"}},
    rules.CURVE_PATH: {"PUSH_SERVER": {"curve": {"edge_keys": 5}}},
    rules.CURVE_FILE_MISSING: {
        "PUSH_SERVER": {"curve": {"broker_public_key": "/nonexistent/pushserver/broker.key"}}
    },
    # A folder where a key file belongs.
    rules.CURVE_FILE_UNREADABLE: {"PUSH_SERVER": {"curve": {"broker_public_key": "/"}}},
    # A file that is no key: this one.
    rules.CURVE_NOT_A_KEY: {"PUSH_SERVER": {"curve": {"edge_secret_key": __file__}}},
    rules.CURVE_ROLE_KEY_MISSING: {"PUSH_SERVER": {"curve": {}}},
    rules.METRICS_ADDRESS: {"PUSH_SERVER": {"broker": {"metrics": "9560"}}},
    rules.OPEN_BROKER_PORTS: {"PUSH_SERVER": {"broker": {"ingress": "tcp://10.0.0.10:5560"}}},
    rules.STREAM_KEEPALIVE: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "stream_keepalive": 0}]}
    },
    rules.STREAM_RETRY: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "stream_retry": 2.5}]}
    },
    rules.STREAM_BUFFER: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "stream_buffer": "1M"}]}
    },
    rules.STREAM_MAX_CHANNELS: {
        "PUSH_SERVER": {"locations": [{"type": "subscriber", "stream_max_channels": 5000}]}
    },
    rules.STANDBY_SHAPE: {"PUSH_SERVER": {"standby": "tcp://10.0.0.11:5560"}},
    rules.STANDBY_ENDPOINT: {"PUSH_SERVER": {"standby": {"ingress": "10.0.0.11:5560"}}},
    rules.STANDBY_PEER: {"PUSH_SERVER": {"standby": {"peer": ["tcp://127.0.0.1:5563"]}}},
    rules.FAILOVER_TIMEOUT: {"PUSH_SERVER": {"standby": {"failover_timeout": 0}}},
    rules.STANDBY_ENDPOINTS_SHARED: {
        "PUSH_SERVER": {"standby": {"ingress": "tcp://127.0.0.1:5560"}}
    },
    rules.STANDBY_HISTORY_FILE: {"PUSH_SERVER": {"standby": {"history_file": 5}}},
    rules.FAILOVER_TOO_QUICK: {
        "PUSH_SERVER": {"heartbeat_interval": 1.0, "standby": {"failover_timeout": 2.0}}
    },
    rules.UNKNOWN_KEY: {"PUSH_SERVER": {"long_poll_timeuot": 5}},
    rules.SHORT_SIGNING_SECRET: {"PUSH_SERVER": {"signed_url_secrets": [LONG_SECRET, "short"]}},
    rules.ANY_ORIGIN_WITH_CREDENTIALS: {
        "PUSH_SERVER": {
            "locations": [{"type": "subscriber", "allow_origin": "*", "allow_credentials": True}]
        }
    },
}


def test_every_check_id_has_an_example_below() -> None:
    assert sorted(check.id for check in EXAMPLES) == [check.id for check in rules.CHECKS]


@pytest.mark.parametrize("check", list(EXAMPLES), ids=lambda check: check.id)
def test_each_check_id_is_reported_for_its_one_cause(check: Check) -> None:
    example = {"PUSH_SERVER": {}, **EXAMPLES[check]}
    found = messages_for(example.pop("PUSH_SERVER"), **example)
    assert [message.id for message in found] == [check.id], [str(m) for m in found]
    assert found[0].is_serious() is not check.is_warning


def test_no_two_check_ids_share_a_cause() -> None:
    causes = [check.cause for check in rules.CHECKS]
    assert len(set(causes)) == len(causes)


def test_fault_injection_is_not_a_setting() -> None:
    from pushserver import conf

    found = messages_for({"drop_live_every": 3})
    assert [message.id for message in found] == [rules.UNKNOWN_KEY.id]
    assert "'drop_live_every'" in str(found[0].msg)
    assert "drop_live_every" not in {field.name for field in dataclasses.fields(EdgeConfig)}
    with override_settings(PUSH_SERVER={"drop_live_every": 3}):
        # The passthrough secret is derived from SECRET_KEY when none is written.
        derived = dataclasses.replace(EdgeConfig(), passthrough_secret=conf.passthrough_secret())
        assert conf.edge_config() == derived


def test_unknown_keys_are_a_warning_not_an_error() -> None:
    found = messages_for({"prot": 8001, "store": {"type": "memory", "max_mesages": 5}})
    assert [message.id for message in found] == [rules.UNKNOWN_KEY.id] * 2
    assert all(not message.is_serious() for message in found)
    assert "'prot'" in str(found[0].msg) and "'max_mesages'" in str(found[1].msg)


def test_settings_translate_into_the_parts_configurations() -> None:
    from pushserver import conf

    with override_settings(PUSH_SERVER=ORIGINAL_0_3_4):
        broker = conf.broker_config()
        edge = conf.edge_config()
        moved = conf.edge_config("::1", 8011)
    assert (broker.max_messages, broker.min_messages, broker.message_timeout) == (100, 0, 10.0)
    assert (edge.address, edge.port) == ("127.0.0.1", 8001)
    assert (moved.address, moved.port) == ("::1", 8011)
    (subscriber,) = edge.subscribers
    assert subscriber.allow_origin == ("http://127.0.0.1:8000",)
    assert subscriber.allow_credentials is True
    assert subscriber.passthrough == "http://127.0.0.1:8000/passthrough"
    (publisher,) = edge.publishers
    assert publisher.url == r"/send-update/([^/]+)" and publisher.allow_from == LOOPBACK


def test_defaults_run_on_one_machine() -> None:
    from pushserver import conf

    with override_settings():
        del settings.PUSH_SERVER
        broker = conf.broker_config()
        edge = conf.edge_config()
    assert edge.events == broker.events and edge.control == broker.control
    assert (edge.address, edge.port) == ("127.0.0.1", 8001)
    assert [s.url for s in edge.subscribers] == [r"/updates/([^/]+)"]
    assert [p.url for p in edge.publishers] == [r"/send-update/([^/]+)"]
    assert edge.subscribers[0].create_on_get is True


def test_without_settings_the_parts_get_their_own_defaults() -> None:
    from pushserver import conf

    with override_settings():
        del settings.PUSH_SERVER
        assert conf.broker_config() == BrokerConfig()
        # But for the passthrough secret, derived from SECRET_KEY when none is written.
        derived = dataclasses.replace(EdgeConfig(), passthrough_secret=conf.passthrough_secret())
        assert conf.edge_config() == derived


# A value other than the default for every top-level key that fills a configuration field.
WRITTEN = {
    "address": "::1",
    "port": 8011,
    "history_file": "/var/lib/pushserver/history",
    "long_poll_timeout": 20,
    "max_message_size": 1024,
    "head_timeout": 4,
    "body_timeout": 6,
    "topic_linger": 7,
    "broker_timeout": 2.5,
    "heartbeat_interval": 0.25,
    "max_connections": 50,
    "metrics_allow_from": "10.0.0.0/8",
    "passthrough_secret": "s3cret",
    "passthrough_timeout": 1,
    "passthrough_concurrency": 3,
    "send_queue_size": 20,
    "channel_linger": 9,
    "events_queue_bytes": 1_000_000,
    "idempotency_window": 5,
    "idempotency_keys": 10,
    "forwarded_allow_ips": ["10.0.0.0/8"],
    "signed_url_secrets": [LONG_SECRET],
}


def test_every_key_that_fills_a_configuration_field_has_an_example_above() -> None:
    feeding = {setting.key for setting in schema.TOP.settings if setting.feeds is not None}
    assert feeding == set(WRITTEN)


@pytest.mark.parametrize("key", list(WRITTEN))
def test_a_written_top_level_key_reaches_its_configuration_field(key: str) -> None:
    from pushserver import conf

    setting = schema.TOP[key]
    with override_settings(PUSH_SERVER={key: WRITTEN[key]}):
        assert messages_for({key: WRITTEN[key]}) == []
        built = conf.broker_config() if setting.feeds is BrokerConfig else conf.edge_config()
    assert getattr(built, key) == setting.convert(WRITTEN[key]) != setting.default
    assert type(getattr(built, key)) is type(setting.default) or setting.default is None


def test_a_bind_all_broker_endpoint_is_reached_on_loopback() -> None:
    from pushserver import conf

    with override_settings(PUSH_SERVER={"broker": {"events": "tcp://*:6001"}}):
        assert conf.broker_config().events == "tcp://*:6001"
        assert conf.edge_config().events == "tcp://127.0.0.1:6001"
    # Edges publish HTTP POSTs to the ingress, as send_update does.
    with override_settings(PUSH_SERVER={"broker": {"ingress": "tcp://*:6000"}}):
        assert conf.edge_config().ingress == "tcp://127.0.0.1:6000"


def test_hosts_default_to_where_the_edge_listens() -> None:
    from pushserver import conf

    with override_settings(PUSH_SERVER={"address": "::1", "port": 8011}):
        assert conf.host(conf.SUBSCRIBER).base_url == "http://[::1]:8011"
    secure = {"publisher_host": {"location": "push.example.com", "secure": True}}
    with override_settings(PUSH_SERVER=secure):
        assert conf.host(conf.PUBLISHER).base_url == "https://push.example.com"


@pytest.mark.parametrize(
    ("addrport", "use_ipv6", "expected"),
    [
        (None, False, (None, None)),
        (None, True, ("::1", None)),
        ("8011", False, (None, 8011)),
        ("127.0.0.1:8011", False, ("127.0.0.1", 8011)),
        ("[::1]:8011", False, ("::1", 8011)),
        ("0:8011", False, ("0.0.0.0", 8011)),
        ("localhost:8011", True, ("localhost", 8011)),
    ],
)
def test_runpushserver_reads_addrport_as_runserver_does(
    addrport: str | None, use_ipv6: bool, expected: tuple[str | None, int | None]
) -> None:
    from pushserver.management.commands.runpushserver import Command

    assert Command()._parse_addrport(addrport, use_ipv6) == expected


@pytest.fixture
def bad_settings() -> Iterator[None]:
    with override_settings(PUSH_SERVER={"store": {"type": "redis"}}):
        yield


@pytest.mark.usefixtures("bad_settings")
@pytest.mark.parametrize("role", [[], ["--role=broker"], ["--role=edge"]])
def test_runpushserver_refuses_to_start_with_invalid_settings(role: list[str]) -> None:
    with pytest.raises(SystemCheckError, match=re.escape(rules.STORE_TYPE_NOT_MEMORY.id)):
        call_command("runpushserver", *role, stdout=io.StringIO())


@pytest.mark.parametrize("addrport", ["host:http", "127.0.0.1:", "[::1]"])
def test_runpushserver_refuses_an_addrport_runserver_would_refuse(addrport: str) -> None:
    with pytest.raises(CommandError, match="not a valid port number"):
        call_command("runpushserver", addrport)


def test_runpushserver_broker_takes_no_address() -> None:
    with pytest.raises(CommandError, match="for edges"):
        call_command("runpushserver", "8011", "--role=broker")
