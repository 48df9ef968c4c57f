"""The PUSH_SERVER checks, its translation into configurations, runpushserver refusing bad ones."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test.utils import override_settings

from broker.config import DEFAULT_INGRESS
from edge.config import LOOPBACK

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


def only(push_server: Any, check_id: str, **extra: Any) -> str:
    """The one message `push_server` gets; it must carry `check_id`."""
    found = messages_for(push_server, **extra)
    assert [message.id for message in found] == [check_id], [str(m) for m in found]
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
    assert "pushserver.E001" in [message.id for message in found]


def test_not_a_dict() -> None:
    message = only([("port", 8001)], "pushserver.E001")
    assert "must be a dict, got list" in message


def test_several_named_stores_are_refused() -> None:
    stores = {"default": {"type": "memory"}, "other": {"type": "memory"}}
    message = only({"store": stores}, "pushserver.E002")
    assert "2 stores" in message and "'other'" in message and "one store" in message
    message = only({"stores": stores}, "pushserver.E002")
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
    message = only(push_server, "pushserver.E007")
    assert "'elsewhere'" in message and "'default'" in message


def test_store_type_other_than_memory() -> None:
    message = only({"store": {"type": "redis"}}, "pushserver.E003")
    assert "must be 'memory', got 'redis'" in message


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ({"max_messages": -3}, "['max_messages'] must be a positive integer, got -3"),
        ({"max_messages": 0}, "['max_messages'] must be a positive integer, got 0"),
        ({"min_messages": -1}, "['min_messages'] must be an integer of 0 or more, got -1"),
        ({"min_messages": 5, "max_messages": 3}, "(5) must not exceed max_messages (3)"),
        ({"message_timeout": "10"}, "['message_timeout'] must be a number of seconds"),
    ],
)
def test_bad_store_numbers(store: dict[str, Any], expected: str) -> None:
    message = only({"store": {"type": "memory", **store}}, "pushserver.E004")
    assert expected in message


@pytest.mark.parametrize("port", [-1, 70000, "http", True])
def test_bad_port(port: Any) -> None:
    message = only({"port": port}, "pushserver.E005")
    assert f"PUSH_SERVER['port'] must be an integer from 0 to 65535, got {port!r}" in message


@pytest.mark.parametrize(
    "host", [{"location": "http://push.example.com", "secure": True}, {"location": "a:b"}, "x"]
)
def test_bad_host_locations(host: Any) -> None:
    message = only({"subscriber_host": host}, "pushserver.E006")
    assert "PUSH_SERVER['subscriber_host']" in message


def test_host_secure_must_be_a_bool() -> None:
    message = only({"publisher_host": {"location": "h:1", "secure": "yes"}}, "pushserver.E006")
    assert "['secure'] must be True or False, got 'yes'" in message


@pytest.mark.parametrize(
    ("location", "check_id", "expected"),
    [
        ({"url": "/x/(.+)"}, "pushserver.E007", "['type'] must be 'subscriber' or 'publisher'"),
        ({"type": "relay"}, "pushserver.E007", "got 'relay'"),
        ({"type": "subscriber", "url": "/x/(["}, "pushserver.E008", "not a valid regular"),
        ({"type": "subscriber", "url": "/x/(a)/(b)"}, "pushserver.E008", "exactly one group"),
        ({"type": "publisher", "url": "/x/.+"}, "pushserver.E008", "has 0"),
        ({"type": "subscriber", "polling": "short"}, "pushserver.E009", "got 'short'"),
        ({"type": "subscriber", "allow_origin": "example.com"}, "pushserver.E010", "origin"),
        (
            {"type": "subscriber", "allow_origin": ["https://a.example/path"]},
            "pushserver.E010",
            "no path",
        ),
        ({"type": "publisher", "allow_from": ["10.0.0.0/33"]}, "pushserver.E011", "10.0.0.0/33"),
        ({"type": "publisher", "allow_from": ["intranet"]}, "pushserver.E011", "'intranet'"),
        ({"type": "subscriber", "passthrough": "/passthrough"}, "pushserver.E007", "http://"),
    ],
)
def test_bad_locations(location: dict[str, Any], check_id: str, expected: str) -> None:
    message = only({"locations": (location,)}, check_id)
    assert "PUSH_SERVER['locations'][0]" in message and expected in message


def test_locations_must_be_a_list() -> None:
    message = only({"locations": "/updates/(.+)"}, "pushserver.E007")
    assert "must be a list of location dicts, got str" in message


def test_allow_origin_accepts_one_origin_a_list_or_star() -> None:
    for allow_origin in ("*", "https://a.example", ["https://a.example", "http://b.example:8000"]):
        location = {"type": "subscriber", "allow_origin": allow_origin}
        assert messages_for({"locations": (location,)}) == []


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5560", "http://127.0.0.1:5560", 5560, "tcp://"])
def test_bad_broker_endpoints(endpoint: Any) -> None:
    message = only({"broker": {"ingress": endpoint}}, "pushserver.E012")
    assert "must be a ZeroMQ endpoint starting with tcp://, ipc:// or inproc://" in message


def test_broker_endpoints_must_differ_unless_ephemeral() -> None:
    message = only({"broker": {"events": DEFAULT_INGRESS}}, "pushserver.E012")
    assert "must differ" in message
    ephemeral = dict.fromkeys(("ingress", "events", "control"), "tcp://127.0.0.1:*")
    assert messages_for({"broker": ephemeral}) == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("send_timeout", 0, "must be a positive number of seconds, got 0"),
        ("long_poll_timeout", -5, "must be a positive number of seconds, got -5"),
        ("broker_unreachable_timeout", "3", "got '3'"),
        ("send_queue_size", 1.5, "must be a positive integer, got 1.5"),
        ("max_message_size", 0, "must be a positive integer, got 0"),
        ("drop_live_every", -1, "must be an integer of 0 (off) or more, got -1"),
    ],
)
def test_bad_timeouts_and_sizes(key: str, value: Any, expected: str) -> None:
    message = only({key: value}, "pushserver.E013")
    assert f"PUSH_SERVER[{key!r}]" in message and expected in message


def test_history_file_must_be_a_path() -> None:
    message = only({"history_file": 3}, "pushserver.E014")
    assert "must be a file path or None, got 3" in message


def test_ignore_errors_must_be_a_bool() -> None:
    message = only({}, "pushserver.E015", PUSH_SERVER_IGNORE_ERRORS="yes")
    assert "got 'yes'" in message


def test_unknown_keys_are_a_warning_not_an_error() -> None:
    found = messages_for({"prot": 8001, "store": {"type": "memory", "max_mesages": 5}})
    assert [message.id for message in found] == ["pushserver.W001", "pushserver.W001"]
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


def test_a_bind_all_broker_endpoint_is_reached_on_loopback() -> None:
    from pushserver import conf

    with override_settings(PUSH_SERVER={"broker": {"events": "tcp://*:6001"}}):
        assert conf.broker_config().events == "tcp://*:6001"
        assert conf.edge_config().events == "tcp://127.0.0.1:6001"


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
    with pytest.raises(SystemCheckError, match=r"pushserver\.E003"):
        call_command("runpushserver", *role, stdout=io.StringIO())


@pytest.mark.parametrize("addrport", ["host:http", "127.0.0.1:", "[::1]"])
def test_runpushserver_refuses_an_addrport_runserver_would_refuse(addrport: str) -> None:
    with pytest.raises(CommandError, match="not a valid port number"):
        call_command("runpushserver", addrport)


def test_runpushserver_broker_takes_no_address() -> None:
    with pytest.raises(CommandError, match="for edges"):
        call_command("runpushserver", "8011", "--role=broker")
