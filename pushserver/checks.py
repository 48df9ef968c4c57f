"""System checks for the PUSH_SERVER setting.

A wrong value found here fails `manage.py check`, `runserver` and
`runpushserver` at startup with a message naming the key, what was expected
and what arrived, instead of a traceback from deep inside an edge later.
`pushserver.conf` trusts what these checks accept.

Ids: E001 not a dict, E002 several stores, E003 store type, E004 store
numbers, E005 address or port, E006 publisher/subscriber host, E007
location shape, E008 location url, E009 polling, E010 allow_origin, E011
allow_from or secret, E012 broker endpoints, E013 timeouts and sizes, E014
history_file, E015 PUSH_SERVER_IGNORE_ERRORS, E016 passthrough_secret, E017
metrics_allow_from; W001 unknown keys.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

from pushserver import conf

SETTING = "PUSH_SERVER"
ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
STORE_KEYS = frozenset(conf.STORE_DEFAULTS)
HOST_KEYS = frozenset({"location", "secure"})
LOCATION_KEYS = {
    kind: frozenset({"type", *defaults}) for kind, defaults in conf.LOCATION_DEFAULTS.items()
}
# Keys the original's locations took that have no effect here.
IGNORED_LOCATION_KEYS = frozenset({"prefix", "create_on_post"})


def register() -> None:
    checks.register(check_settings)


def check_settings(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Every problem with PUSH_SERVER and PUSH_SERVER_IGNORE_ERRORS, as check messages."""
    messages = list(_ignore_errors())
    value = getattr(settings, SETTING, None)
    if value is None:
        return messages
    if not isinstance(value, dict):
        messages.append(
            _error(
                f"{SETTING} must be a dict, got {type(value).__name__}",
                "E001",
                hint="Write PUSH_SERVER = {} to run with the defaults.",
            )
        )
        return messages
    messages.extend(_unknown_keys(SETTING, value, conf.KNOWN_KEYS))
    parts = (
        _stores,
        _address_and_port,
        _hosts,
        _locations,
        _broker,
        _numbers,
        _history_file,
        _passthrough_secret,
        _metrics_allow_from,
        _events_hwm,
    )
    for part in parts:
        messages.extend(part(value))
    return messages


def _error(msg: str, number: str, hint: str | None = None) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"pushserver.{number}")


def _unknown_keys(
    where: str, value: dict[Any, Any], known: Iterable[str]
) -> Iterator[checks.CheckMessage]:
    unknown = sorted(str(key) for key in set(value) - set(known))
    if unknown:
        yield checks.Warning(
            f"{where} has unknown keys {', '.join(map(repr, unknown))}; they are ignored",
            hint=f"Known keys: {', '.join(sorted(known))}.",
            id="pushserver.W001",
        )


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ignore_errors() -> Iterator[checks.CheckMessage]:
    value = getattr(settings, "PUSH_SERVER_IGNORE_ERRORS", False)
    if not isinstance(value, bool):
        yield _error(f"PUSH_SERVER_IGNORE_ERRORS must be True or False, got {value!r}", "E015")


def _stores(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    if "stores" in value and not isinstance(value["stores"], dict):
        yield _error(
            f"{SETTING}['stores'] must be a dict of store name to store dict, "
            f"got {type(value['stores']).__name__}",
            "E003",
        )
        return
    stores = conf.named_stores()
    if len(stores) > 1:
        yield _error(
            f"{SETTING} names {len(stores)} stores ({', '.join(map(repr, stores))}); "
            "one store serves the whole cluster",
            "E002",
            hint="Keep one store; the broker holds every channel's history.",
        )
    for name, written in stores.items():
        where = f"{SETTING}['store']" if len(stores) == 1 else f"{SETTING} store {name!r}"
        if not isinstance(written, dict):
            yield _error(f"{where} must be a dict, got {type(written).__name__}", "E003")
            continue
        store_type = written.get("type", conf.STORE_DEFAULTS["type"])
        if store_type != "memory":
            yield _error(
                f"{where}['type'] must be 'memory', got {store_type!r}",
                "E003",
                hint="The broker keeps history in memory (and in history_file, when set).",
            )
        yield from _unknown_keys(where, written, STORE_KEYS)
        yield from _store_numbers(where, {**conf.STORE_DEFAULTS, **written})


def _store_numbers(where: str, store: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    max_messages = store["max_messages"]
    min_messages = store["min_messages"]
    timeout = store["message_timeout"]
    good_max = _is_integer(max_messages) and max_messages > 0
    good_min = _is_integer(min_messages) and min_messages >= 0
    if not good_max:
        yield _error(
            f"{where}['max_messages'] must be a positive integer, got {max_messages!r}",
            "E004",
            hint="Each channel's history lives in the broker's memory, so it must be bounded.",
        )
    if not good_min:
        yield _error(
            f"{where}['min_messages'] must be an integer of 0 or more, got {min_messages!r}",
            "E004",
        )
    if good_max and good_min and min_messages > max_messages:
        yield _error(
            f"{where}['min_messages'] ({min_messages}) must not exceed "
            f"max_messages ({max_messages})",
            "E004",
        )
    if not (_is_number(timeout) and timeout >= 0):
        yield _error(
            f"{where}['message_timeout'] must be a number of seconds, 0 or more "
            f"(0 keeps messages until max_messages pushes them out), got {timeout!r}",
            "E004",
        )


def _port_problem(port: Any) -> str | None:
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not _is_integer(port) or not 0 <= port <= 65535:
        return f"must be an integer from 0 to 65535, got {port!r}"
    return None


def _address_and_port(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    if "port" in value and value["port"] is not None:
        problem = _port_problem(value["port"])
        if problem:
            yield _error(f"{SETTING}['port'] {problem}", "E005")
    if (
        "address" in value
        and value["address"] is not None
        and not isinstance(value["address"], str)
    ):
        yield _error(
            f"{SETTING}['address'] must be a host name or IP address string, "
            f"got {value['address']!r}",
            "E005",
        )


def _hosts(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    for key in conf.HOST_KEYS:
        if value.get(key) is None:
            continue
        where = f"{SETTING}[{key!r}]"
        written = value[key]
        if not isinstance(written, dict):
            yield _error(
                f"{where} must be a dict like {{'location': 'push.example.com:443', "
                f"'secure': True}}, got {written!r}",
                "E006",
            )
            continue
        yield from _unknown_keys(where, written, HOST_KEYS)
        location = written.get("location")
        if location is not None:
            problem = _host_location_problem(location)
            if problem:
                yield _error(f"{where}['location'] {problem}", "E006")
        if not isinstance(written.get("secure", False), bool):
            yield _error(
                f"{where}['secure'] must be True or False, got {written['secure']!r}", "E006"
            )


def _host_location_problem(location: Any) -> str | None:
    expected = "must be 'host' or 'host:port' without scheme or path"
    if not isinstance(location, str) or not location:
        return f"{expected}, got {location!r}"
    if "://" in location or "/" in location:
        return f"{expected}, got {location!r}"
    try:
        parts = urlsplit(f"//{location}")
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{expected}, got {location!r}"
    if not parts.hostname:
        return f"{expected}, got {location!r}"
    return None


def _locations(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    written = value.get("locations")
    if written is None:
        return
    if not isinstance(written, list | tuple):
        yield _error(
            f"{SETTING}['locations'] must be a list of location dicts, "
            f"got {type(written).__name__}",
            "E007",
        )
        return
    store_names = set(conf.named_stores()) or {conf.DEFAULT_STORE_NAME}
    for index, location in enumerate(written):
        where = f"{SETTING}['locations'][{index}]"
        if not isinstance(location, dict):
            yield _error(f"{where} must be a dict, got {type(location).__name__}", "E007")
            continue
        kind = location.get("type")
        if not isinstance(kind, str) or kind not in conf.LOCATION_DEFAULTS:
            yield _error(
                f"{where}['type'] must be 'subscriber' or 'publisher', got {kind!r}", "E007"
            )
            continue
        merged = {**conf.LOCATION_DEFAULTS[kind], **location}
        yield from _unknown_keys(where, location, LOCATION_KEYS[kind] | IGNORED_LOCATION_KEYS)
        yield from _url(where, merged["url"])
        if merged["store"] is not None and merged["store"] not in store_names:
            yield _error(
                f"{where}['store'] names store {merged['store']!r}, which is not configured; "
                f"expected one of {', '.join(map(repr, sorted(store_names)))}",
                "E007",
            )
        if kind == conf.SUBSCRIBER:
            yield from _subscriber(where, merged)
        else:
            yield from _publisher(where, merged)


def _url(where: str, url: Any) -> Iterator[checks.CheckMessage]:
    if not isinstance(url, str) or not url.startswith(("/", "^/")):
        yield _error(
            f"{where}['url'] must be a regular expression string matching the path from its "
            f"leading '/', got {url!r}",
            "E008",
        )
        return
    try:
        groups = re.compile(url).groups
    except re.error as exc:
        yield _error(f"{where}['url'] {url!r} is not a valid regular expression: {exc}", "E008")
        return
    if groups != 1:
        yield _error(
            f"{where}['url'] {url!r} must have exactly one group (the channel id), has {groups}",
            "E008",
            hint="Use (?:...) for groups that are not the channel id.",
        )


def _subscriber(where: str, location: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    if location["polling"] not in conf.POLLING_MODES:
        yield _error(
            f"{where}['polling'] must be 'long' or 'interval', got {location['polling']!r}",
            "E009",
        )
    for key in ("create_on_get", "allow_credentials", "authorize"):
        if not isinstance(location[key], bool):
            yield _error(f"{where}[{key!r}] must be True or False, got {location[key]!r}", "E007")
    passthrough = location["passthrough"]
    if passthrough is not None and not (
        isinstance(passthrough, str) and urlsplit(passthrough).scheme in ("http", "https")
    ):
        yield _error(
            f"{where}['passthrough'] must be an http:// or https:// URL, got {passthrough!r}",
            "E007",
        )
    for key in ("passthrough_grace", "authorize_cache"):
        seconds = location[key]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            yield _error(
                f"{where}[{key!r}] must be a number of seconds >= 0, got {seconds!r}", "E007"
            )
    if location["authorize"] and not passthrough:
        yield _error(
            f"{where}['authorize'] needs a 'passthrough' URL: "
            "Django's passthrough view decides who may subscribe",
            "E007",
        )
    yield from _allow_origin(where, location["allow_origin"])


def _allow_origin(where: str, allow_origin: Any) -> Iterator[checks.CheckMessage]:
    origins = [allow_origin] if isinstance(allow_origin, str) else allow_origin
    if not isinstance(origins, list | tuple) or not origins:
        yield _error(
            f"{where}['allow_origin'] must be '*', an origin or a list of origins, "
            f"got {allow_origin!r}",
            "E010",
        )
        return
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin) if isinstance(origin, str) else None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.path
            or parts.query
            or parts.fragment
        ):
            yield _error(
                f"{where}['allow_origin'] entries must be '*' or an origin like "
                f"'https://example.com' (scheme and host, no path), got {origin!r}",
                "E010",
            )


def _publisher(where: str, location: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    allow_from = location["allow_from"]
    networks = [allow_from] if isinstance(allow_from, str) else allow_from
    if not isinstance(networks, list | tuple):
        yield _error(
            f"{where}['allow_from'] must be a list of networks like '10.0.0.0/8', "
            f"got {allow_from!r}",
            "E011",
        )
    else:
        for network in networks:
            try:
                ipaddress.ip_network(network)
            except (TypeError, ValueError) as exc:
                yield _error(
                    f"{where}['allow_from'] entries must be networks like '10.0.0.0/8' or "
                    f"'::1/128', got {network!r} ({exc})",
                    "E011",
                )
    secret = location["secret"]
    if secret is not None and not (isinstance(secret, str) and secret):
        yield _error(
            f"{where}['secret'] must be a non-empty string or None, got {secret!r}", "E011"
        )


def _broker(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    written = value.get("broker")
    if written is None:
        return
    if not isinstance(written, dict):
        yield _error(
            f"{SETTING}['broker'] must be a dict of 'ingress', 'events' and 'control' "
            f"ZeroMQ endpoints, got {type(written).__name__}",
            "E012",
        )
        return
    yield from _unknown_keys(f"{SETTING}['broker']", written, conf.BROKER_DEFAULTS)
    for key in conf.BROKER_DEFAULTS:
        endpoint = written.get(key)
        if endpoint is None:
            continue
        if (
            not isinstance(endpoint, str)
            or not endpoint.startswith(ENDPOINT_SCHEMES)
            or (endpoint in ENDPOINT_SCHEMES)
        ):
            yield _error(
                f"{SETTING}['broker'][{key!r}] must be a ZeroMQ endpoint starting with "
                f"tcp://, ipc:// or inproc://, got {endpoint!r}",
                "E012",
                hint=f"For example {conf.BROKER_DEFAULTS[key]!r}.",
            )
    # Ephemeral ports (`*` or 0) differ by construction.
    bound = [written.get(key) or conf.BROKER_DEFAULTS[key] for key in conf.BROKER_DEFAULTS]
    fixed = [endpoint for endpoint in bound if not str(endpoint).endswith((":*", ":0"))]
    if len(set(fixed)) != len(fixed):
        yield _error(
            f"{SETTING}['broker'] endpoints must differ from each other, got {bound!r}", "E012"
        )


def _numbers(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    for key in conf.NUMBER_DEFAULTS:
        number = value.get(key)
        if number is None:
            continue
        if key in conf.ZERO_ALLOWED_KEYS:
            if not (_is_integer(number) and number >= 0):
                yield _error(
                    f"{SETTING}[{key!r}] must be an integer of 0 (off) or more, got {number!r}",
                    "E013",
                )
        elif key in conf.INTEGER_KEYS:
            if not (_is_integer(number) and number > 0):
                yield _error(
                    f"{SETTING}[{key!r}] must be a positive integer, got {number!r}", "E013"
                )
        elif not (_is_number(number) and number > 0):
            yield _error(
                f"{SETTING}[{key!r}] must be a positive number of seconds, got {number!r}", "E013"
            )


def _events_hwm(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    hwm = value.get("events_hwm")
    if hwm is not None and (isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 0):
        yield _error(
            f"{SETTING}['events_hwm'] must be a number of messages >= 0 (0: unbounded), "
            f"got {hwm!r}",
            "E013",
        )


def _metrics_allow_from(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    networks = value.get("metrics_allow_from")
    if networks is None:
        return
    for network in [networks] if isinstance(networks, str) else networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except (TypeError, ValueError):
            yield _error(
                f"{SETTING}['metrics_allow_from'] must list networks like '10.0.0.0/8', "
                f"got {network!r}",
                "E017",
            )


def _passthrough_secret(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    secret = value.get("passthrough_secret")
    if secret is not None and not (isinstance(secret, str) and secret):
        yield _error(
            f"{SETTING}['passthrough_secret'] must be a non-empty string or None, got {secret!r}",
            "E016",
        )


def _history_file(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    path = value.get("history_file")
    if path is not None and not ((isinstance(path, str) and path) or isinstance(path, os.PathLike)):
        yield _error(f"{SETTING}['history_file'] must be a file path or None, got {path!r}", "E014")
