"""The PUSH_SERVER setting as values, and its translation into the parts' configurations.

Everything else in the app asks this module, never ``settings`` directly.
Keys, defaults and conversions come from the table in `pushserver.schema`;
this module only knows how the setting is nested (the legacy shapes of the
original django-pushserver 0.3.4 included). The setting is read on every
call, so ``override_settings`` works; the values are not validated here
(`pushserver.checks` does that, and ``runpushserver`` runs the checks first).

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
from django.utils.crypto import salted_hmac

from broker.config import BrokerConfig
from broker.curve import ClientFiles, ServerFiles
from edge.config import EdgeConfig, PublisherLocation, SubscriberLocation
from pushserver import schema

# Re-exported: the location types, as `pushserver.locations` names them.
from pushserver.schema import PUBLISHER as PUBLISHER
from pushserver.schema import SUBSCRIBER as SUBSCRIBER

# The store name a single 'store' dict goes by, as in the original.
DEFAULT_STORE_NAME = "default"
# Each location type's keys with their defaults, as a location is merged with them.
LOCATION_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    kind: group.defaults() for kind, group in schema.LOCATIONS.items()
}


def push_server() -> dict[str, Any]:
    """The raw PUSH_SERVER setting; an empty dict when it is missing or not a dict."""
    value = getattr(settings, schema.SETTING, None)
    return value if isinstance(value, dict) else {}


def _unset(value: Any) -> bool:
    return value is None or value == ""


def value(key: str) -> Any:
    """A top-level key's value in its configuration type; its default when unset."""
    setting = schema.TOP[key]
    written = push_server().get(key)
    return setting.convert(setting.default if _unset(written) else written)


def number(key: str) -> float:
    """A top-level number (seconds, sizes, counts); an int where the key holds one."""
    found: float = value(key)
    return found


# Salt of the passthrough secret derived from SECRET_KEY (Django's salted_hmac).
PASSTHROUGH_SALT = "pushserver.passthrough"


def passthrough_secret() -> str | None:
    """The secret edges send to the passthrough view, so it trusts them from any address:
    PUSH_SERVER's, else one derived from SECRET_KEY. Every process reading the site's
    settings (runpushserver's edges, the view) derives the same one, so edges are told
    from a balancer on their host without configuring anything; None without either."""
    secret: str | None = value("passthrough_secret")
    if secret is None and settings.SECRET_KEY:
        secret = salted_hmac(PASSTHROUGH_SALT, "edges", algorithm="sha256").hexdigest()
    return secret


def ignore_errors() -> bool:
    setting = schema.IGNORE_ERRORS
    return bool(getattr(settings, setting.key, setting.default))


def edge_address() -> str:
    address: str = value("address")
    return address


def edge_port(default: int | None = None) -> int:
    """The configured port, or `default` (else the table's) when the setting names none."""
    if default is not None and _unset(push_server().get("port")):
        return default
    port: int = value("port")
    return port


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
    written = push_server().get(f"{kind}_host") or {}
    merged = schema.HOST.merged(written)
    location = merged["location"] or f"{bracket_ipv6(edge_address())}:{edge_port()}"
    return Host(str(location), bool(merged["secure"]))


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
    return schema.STORE.merged(written if isinstance(written, dict) else {})


def locations() -> list[dict[str, Any]]:
    """The locations, each merged with its type's defaults (an unknown type is kept as written)."""
    written = push_server().get("locations")
    if written is None:
        written = ({"type": SUBSCRIBER}, {"type": PUBLISHER})
    return [
        {**LOCATION_DEFAULTS.get(str(location.get("type")), {}), **location} for location in written
    ]


def broker_section() -> dict[str, Any]:
    """The `broker` dict; a key written as None is its default."""
    written = push_server().get("broker") or {}
    return {
        key: default if written.get(key) is None else written[key]
        for key, default in schema.BROKER.defaults().items()
    }


def broker_endpoints() -> dict[str, str]:
    """Where the broker binds its ZeroMQ sockets, by name."""
    section = broker_section()
    return {key: section[key] for key in schema.BROKER_ENDPOINTS}


def standby_section() -> dict[str, Any] | None:
    """The `standby` dict with every key (a key written as None is its default), or None
    without a standby pair."""
    written = push_server().get("standby")
    if written is None:
        return None
    return {
        key: default if written.get(key) is None else written[key]
        for key, default in schema.STANDBY.defaults().items()
    }


def switch_after() -> float:
    """How long a client of a pair waits on a silent broker before it tries the other."""
    section = standby_section()
    return 1.0 if section is None else float(section["failover_timeout"]) / 3


def curve() -> dict[str, Any] | None:
    """The `curve` dict with every key (None where unwritten), or None when CURVE is off."""
    written = push_server().get("curve")
    return None if written is None else schema.CURVE.merged(written)


def _curve_path(keys: Mapping[str, Any], key: str) -> Path:
    # The part's role check (`checks.check_curve_role`) has made sure the key is named.
    return Path(keys[key])


def broker_curve() -> ServerFiles | None:
    """The files the broker reads with CURVE on (the checks made sure they are named)."""
    keys = curve()
    if keys is None:
        return None
    return ServerFiles(
        _curve_path(keys, "broker_secret_key"),
        _curve_path(keys, "publisher_keys"),
        _curve_path(keys, "edge_keys"),
    )


def _client_curve(secret_key: str) -> ClientFiles | None:
    keys = curve()
    if keys is None:
        return None
    return ClientFiles(_curve_path(keys, "broker_public_key"), _curve_path(keys, secret_key))


def edge_curve() -> ClientFiles | None:
    return _client_curve("edge_secret_key")


def publisher_curve() -> ClientFiles | None:
    """What `send_update`'s sockets read with CURVE on."""
    return _client_curve("publisher_secret_key")


_WILDCARD_HOST = re.compile(r"^(tcp://)(\*|0\.0\.0\.0|\[::\]|\[\*\])(:.*)$")


def connect_endpoint(endpoint: str) -> str:
    """`endpoint` as a connecting socket reaches it: a bind-all host becomes loopback."""
    match = _WILDCARD_HOST.match(endpoint)
    if match is None:
        return endpoint
    scheme, bound, rest = match.groups()
    loopback = "[::1]" if bound.startswith("[") else "127.0.0.1"
    return f"{scheme}{loopback}{rest}"


def _top_level_fields(target: type) -> dict[str, Any]:
    return {
        setting.key: value(setting.key)
        for setting in schema.TOP.settings
        if setting.feeds is target
    }


def broker_config(backup: bool = False) -> BrokerConfig:
    """The broker's configuration: the primary's, or with `backup` the standby pair's
    backup's (its endpoints from `standby`)."""
    config = _broker_config()
    pair = standby_section()
    if pair is None:
        return config
    peer = pair["peer"]
    own, other = (peer[1], peer[0]) if backup else (peer[0], peer[1])
    fields: dict[str, Any] = {
        "peer_bind": own,
        "peer_connect": connect_endpoint(other),
        "backup": backup,
        "failover_timeout": float(pair["failover_timeout"]),
    }
    if backup:
        fields.update({key: pair[key] for key in schema.BROKER_ENDPOINTS})
        fields["metrics"] = pair["metrics"]
        if pair["history_file"] is not None:
            fields["history_file"] = Path(pair["history_file"])
    return dataclasses.replace(config, **fields)


def _broker_config() -> BrokerConfig:
    config = BrokerConfig(
        **_top_level_fields(BrokerConfig),
        **schema.STORE.fields(store(), BrokerConfig),
        **schema.BROKER.fields(broker_section(), BrokerConfig),
        # The edges' limit on bodies; the broker derives its frame limit from it.
        max_message_size=int(value("max_message_size")),
        curve=broker_curve(),
    )
    hwm = value("events_hwm")
    return config if hwm is None else dataclasses.replace(config, events_sndhwm=int(hwm))


def _edge_standby_fields() -> dict[str, Any]:
    pair = standby_section()
    if pair is None:
        return {}
    return {
        "standby_events": connect_endpoint(pair["events"]),
        "standby_control": connect_endpoint(pair["control"]),
        "standby_ingress": connect_endpoint(pair["ingress"]),
        "failover_timeout": float(pair["failover_timeout"]),
    }


def edge_config(address: str | None = None, port: int | None = None) -> EdgeConfig:
    """The edge's configuration; `address` and `port` win over the settings, as
    ``runpushserver``'s address:port argument does."""
    endpoints = broker_endpoints()
    merged = locations()
    fields = _top_level_fields(EdgeConfig)
    if address:
        fields["address"] = address
    if port is not None:
        fields["port"] = port
    fields["passthrough_secret"] = passthrough_secret()
    config = EdgeConfig(
        **fields,
        events=connect_endpoint(endpoints["events"]),
        control=connect_endpoint(endpoints["control"]),
        ingress=connect_endpoint(endpoints["ingress"]),
        **_edge_standby_fields(),
        max_messages=int(store()["max_messages"]),
        curve=edge_curve(),
        subscribers=tuple(
            SubscriberLocation(**schema.SUBSCRIBER_LOCATION.fields(loc, SubscriberLocation))
            for loc in merged
            if loc.get("type") == SUBSCRIBER
        ),
        publishers=tuple(
            PublisherLocation(**schema.PUBLISHER_LOCATION.fields(loc, PublisherLocation))
            for loc in merged
            if loc.get("type") == PUBLISHER
        ),
    )
    hwm = value("events_hwm")
    return config if hwm is None else dataclasses.replace(config, events_rcvhwm=int(hwm))
