"""The PUSH_SERVER setting: defaults, and its translation into the parts' configurations.

Everything else in the app asks this module, never ``settings`` directly, so
there is one place that knows the defaults and the legacy shapes the
original django-pushserver 0.3.4 accepted. The setting is read on every
call, so ``override_settings`` works; the values are not validated here
(``checks.py`` does that, and ``runpushserver`` runs the checks first).

The one translation worth knowing about: broker endpoints are where the
broker binds and where publishers and edges connect, so a wildcard host
(``tcp://*:5560``) is replaced by loopback on the connecting side.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from broker.config import DEFAULT_CONTROL, DEFAULT_EVENTS, DEFAULT_INGRESS, BrokerConfig
from edge.config import (
    INTERVAL_POLL,
    LONG_POLL,
    LOOPBACK,
    EdgeConfig,
    PublisherLocation,
    SubscriberLocation,
)

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_IPV6_ADDRESS = "::1"
DEFAULT_PORT = 8001
# `runpushserver --allrequests` stands in for `runserver`, so it takes its port.
ALL_REQUESTS_PORT = 8000
# The store name a single 'store' dict goes by, as in the original.
DEFAULT_STORE_NAME = "default"

SUBSCRIBER = "subscriber"
PUBLISHER = "publisher"
POLLING_MODES = (LONG_POLL, INTERVAL_POLL)

STORE_DEFAULTS: Mapping[str, Any] = {
    "type": "memory",
    "min_messages": 0,
    "max_messages": 100,
    "message_timeout": 10,
}
LOCATION_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    SUBSCRIBER: {
        "url": r"/updates/([^/]+)",
        "polling": LONG_POLL,
        "create_on_get": True,
        "allow_origin": "*",
        "allow_credentials": False,
        "passthrough": None,
        "passthrough_grace": 0,
        "authorize": False,
        "authorize_cache": 60,
        "store": None,
    },
    PUBLISHER: {
        "url": r"/send-update/([^/]+)",
        "allow_from": list(LOOPBACK),
        "secret": None,
        "store": None,
    },
}
BROKER_DEFAULTS: Mapping[str, str] = {
    "ingress": DEFAULT_INGRESS,
    "events": DEFAULT_EVENTS,
    "control": DEFAULT_CONTROL,
}
# Seconds, except where the name says otherwise.
NUMBER_DEFAULTS: Mapping[str, float] = {
    "long_poll_timeout": 25.0,
    "max_message_size": 4 * 1024 * 1024,
    "topic_linger": 30.0,
    "broker_timeout": 5.0,
    "heartbeat_interval": 1.0,
    "max_connections": 10_000,
    "send_timeout": 0.5,
    "broker_unreachable_timeout": 3.0,
    "send_queue_size": 10_000,
    "exit_timeout": 1.0,
    "passthrough_timeout": 5.0,
    "passthrough_concurrency": 64,
    # Fault injection for tests of gap repair: an edge drops every Nth live
    # message from the broker. 0 drops nothing.
    "drop_live_every": 0,
}
INTEGER_KEYS = frozenset(
    {
        "max_message_size",
        "max_connections",
        "send_queue_size",
        "drop_live_every",
        "passthrough_concurrency",
    }
)
# Keys where 0 means "off"; every other number must be positive.
ZERO_ALLOWED_KEYS = frozenset({"drop_live_every"})
HOST_KEYS = ("publisher_host", "subscriber_host")
# Keys of the original that are accepted and have no effect here.
IGNORED_KEYS = frozenset({"servername"})
KNOWN_KEYS = frozenset(
    {
        "address",
        "port",
        "store",
        "stores",
        "locations",
        "broker",
        "history_file",
        "passthrough_secret",
        "metrics_allow_from",
        "events_hwm",
    }
    | set(HOST_KEYS)
    | set(NUMBER_DEFAULTS)
    | IGNORED_KEYS
)


def push_server() -> dict[str, Any]:
    """The raw PUSH_SERVER setting; an empty dict when it is missing or not a dict."""
    value = getattr(settings, "PUSH_SERVER", None)
    return value if isinstance(value, dict) else {}


def ignore_errors() -> bool:
    return bool(getattr(settings, "PUSH_SERVER_IGNORE_ERRORS", False))


def edge_address() -> str:
    value = push_server().get("address")
    return str(value) if value else DEFAULT_ADDRESS


def edge_port(default: int = DEFAULT_PORT) -> int:
    """The configured port, or `default` when the setting names none."""
    value = push_server().get("port")
    return default if value is None or value == "" else int(value)


@dataclass(frozen=True, slots=True)
class Host:
    """Where browsers (subscriber) or HTTP publishers reach the edges, e.g. through a balancer."""

    location: str
    secure: bool

    @property
    def base_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.location}"


def host(kind: str) -> Host:
    """The ``publisher_host`` or ``subscriber_host`` setting; `kind` is PUBLISHER or SUBSCRIBER."""
    value = push_server().get(f"{kind}_host") or {}
    location = value.get("location") or f"{bracket_ipv6(edge_address())}:{edge_port()}"
    return Host(str(location), bool(value.get("secure", False)))


def bracket_ipv6(host_name: str) -> str:
    return f"[{host_name}]" if ":" in host_name and not host_name.startswith("[") else host_name


def named_stores() -> dict[str, Any]:
    """Every store the settings name, by name, as written (not merged with defaults).

    The original took either one store dict under 'store' or a dict of named
    stores there; 'stores' is accepted for the latter as well.
    """
    conf = push_server()
    stores: dict[str, Any] = {}
    single = conf.get("store")
    if (
        isinstance(single, dict)
        and single
        and "type" not in single
        and all(isinstance(value, dict) for value in single.values())
    ):
        stores.update(single)
    elif single is not None:
        stores[DEFAULT_STORE_NAME] = single
    named = conf.get("stores")
    if isinstance(named, dict):
        stores.update(named)
    return stores


def store() -> dict[str, Any]:
    """The cluster's one store, merged with the defaults."""
    stores = named_stores()
    written = next(iter(stores.values())) if stores else {}
    return {**STORE_DEFAULTS, **(written if isinstance(written, dict) else {})}


def locations() -> list[dict[str, Any]]:
    """The locations, each merged with its type's defaults (an unknown type is kept as written)."""
    written = push_server().get("locations")
    if written is None:
        written = ({"type": SUBSCRIBER}, {"type": PUBLISHER})
    merged = []
    for location in written:
        defaults = LOCATION_DEFAULTS.get(str(location.get("type")), {})
        merged.append({**defaults, **location})
    return merged


def broker_endpoints() -> dict[str, str]:
    written = push_server().get("broker") or {}
    return {**BROKER_DEFAULTS, **written}


def number(key: str) -> float:
    value = push_server().get(key)
    if value is None:
        value = NUMBER_DEFAULTS[key]
    return int(value) if key in INTEGER_KEYS else float(value)


def events_hwm() -> int | None:
    """The events queue (messages) at both ends of the broker-edge link; None keeps each
    side's default. Small values make edges drop live messages under bursts and refill."""
    value = push_server().get("events_hwm")
    return None if value is None else int(value)


def metrics_allow_from() -> tuple[str, ...]:
    """Networks allowed to read an edge's metrics; loopback unless the settings say otherwise."""
    value = push_server().get("metrics_allow_from")
    return LOOPBACK if value is None else _strings(value)


def passthrough_secret() -> str | None:
    """The secret edges send to the passthrough view, so it trusts them from any address."""
    value = push_server().get("passthrough_secret")
    return str(value) if value else None


def history_file() -> Path | None:
    value = push_server().get("history_file")
    return Path(value) if value else None


_WILDCARD_HOST = re.compile(r"^(tcp://)(\*|0\.0\.0\.0|\[::\]|\[\*\])(:.*)$")


def connect_endpoint(endpoint: str) -> str:
    """`endpoint` as a connecting socket reaches it: a bind-all host becomes loopback."""
    match = _WILDCARD_HOST.match(endpoint)
    if match is None:
        return endpoint
    scheme, bound, rest = match.groups()
    loopback = "[::1]" if bound.startswith("[") else "127.0.0.1"
    return f"{scheme}{loopback}{rest}"


def broker_config() -> BrokerConfig:
    endpoints = broker_endpoints()
    limits = store()
    config = BrokerConfig(
        ingress=endpoints["ingress"],
        events=endpoints["events"],
        control=endpoints["control"],
        max_messages=int(limits["max_messages"]),
        min_messages=int(limits["min_messages"]),
        message_timeout=float(limits["message_timeout"]),
        heartbeat_interval=number("heartbeat_interval"),
        history_file=history_file(),
    )
    hwm = events_hwm()
    return config if hwm is None else dataclasses.replace(config, events_sndhwm=hwm)


def _strings(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _subscriber(location: dict[str, Any]) -> SubscriberLocation:
    return SubscriberLocation(
        url=location["url"],
        polling=location["polling"],
        create_on_get=bool(location["create_on_get"]),
        allow_origin=_strings(location["allow_origin"]),
        allow_credentials=bool(location["allow_credentials"]),
        passthrough=location["passthrough"] or None,
        passthrough_grace=float(location["passthrough_grace"]),
        authorize=bool(location["authorize"]),
        authorize_cache=float(location["authorize_cache"]),
    )


def _publisher(location: dict[str, Any]) -> PublisherLocation:
    return PublisherLocation(
        url=location["url"],
        allow_from=_strings(location["allow_from"]),
        secret=location["secret"] or None,
    )


def edge_config(address: str | None = None, port: int | None = None) -> EdgeConfig:
    """The edge's configuration; `address` and `port` win over the settings, as
    ``runpushserver``'s address:port argument does."""
    endpoints = broker_endpoints()
    merged = locations()
    config = EdgeConfig(
        address=address or edge_address(),
        port=edge_port() if port is None else port,
        events=connect_endpoint(endpoints["events"]),
        control=connect_endpoint(endpoints["control"]),
        subscribers=tuple(_subscriber(loc) for loc in merged if loc.get("type") == SUBSCRIBER),
        publishers=tuple(_publisher(loc) for loc in merged if loc.get("type") == PUBLISHER),
        long_poll_timeout=number("long_poll_timeout"),
        max_message_size=int(number("max_message_size")),
        topic_linger=number("topic_linger"),
        broker_timeout=number("broker_timeout"),
        max_connections=int(number("max_connections")),
        drop_live_every=int(number("drop_live_every")),
        passthrough_secret=passthrough_secret(),
        metrics_allow_from=metrics_allow_from(),
        passthrough_timeout=number("passthrough_timeout"),
        passthrough_concurrency=int(number("passthrough_concurrency")),
    )
    hwm = events_hwm()
    return config if hwm is None else dataclasses.replace(config, events_rcvhwm=hwm)
