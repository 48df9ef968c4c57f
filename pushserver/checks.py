"""System checks for the PUSH_SERVER setting.

A wrong value found here fails `manage.py check`, `runserver` and
`runpushserver` at startup with a message naming the key, what was expected
and what arrived, instead of a traceback from deep inside an edge later.
`pushserver.conf` trusts what these checks accept.

The table (`pushserver.schema`) names each key's rule; this module walks
the setting's nesting, judges each value by its rule, and judges the rules
that span keys: one store for the cluster, ``min_messages`` against
``max_messages``, a location's ``store`` against the stores configured,
``authorize`` against ``passthrough``, ``signed`` against
``signed_url_secrets``, the length of those secrets, distinct broker
endpoints, the key files ``curve`` names (each on disk and holding a key
of its kind), and broker endpoints beyond loopback without CURVE. Which
keys a host must name depends on the part it runs, which a system check
does not know: `check_curve_role` judges that, called by ``runpushserver``
and by `send_update` as they start.

Ids: each names one cause, and no cause has two; `pushserver.rules.CHECKS`
lists them, and the README's "System checks" list is that list.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import checks

from broker import curve
from pushserver import conf, rules, schema
from pushserver.rules import Check
from pushserver.schema import SETTING, Group, Setting


def register() -> None:
    checks.register(check_settings)


def check_settings(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Every problem with PUSH_SERVER and PUSH_SERVER_IGNORE_ERRORS, as check messages."""
    ignore_errors = schema.IGNORE_ERRORS
    messages = list(
        _judge(
            ignore_errors.key,
            ignore_errors.check,
            getattr(settings, ignore_errors.key, ignore_errors.default),
        )
    )
    value = getattr(settings, SETTING, None)
    if value is None:
        return messages
    if not isinstance(value, dict):
        messages.append(
            _message(
                rules.NOT_A_DICT,
                f"{SETTING} must be a dict, got {type(value).__name__}",
                hint="Write PUSH_SERVER = {} to run with the defaults.",
            )
        )
        return messages
    messages.extend(_unknown_keys(SETTING, value, schema.TOP.keys))
    for setting in schema.TOP.settings:
        # Unset at the top level means the default.
        if value.get(setting.key) is not None:
            messages.extend(
                _judge(f"{SETTING}[{setting.key!r}]", setting.check, value[setting.key])
            )
    # Each part below skips what the table's shape rules above already refused.
    parts = (_stores, _hosts, _locations, _broker, _standby, _signed_url_secrets, _curve)
    for part in (*parts, _open_ports):
        messages.extend(part(value))
    return messages


def _message(check: Check, msg: str, hint: str | None = None) -> checks.CheckMessage:
    level = checks.Warning if check.is_warning else checks.Error
    return level(msg, hint=hint, id=check.id)


def _judge(
    where: str, check: Check, value: Any, hint: str | None = None
) -> Iterator[checks.CheckMessage]:
    for problem in check.problems(value):
        yield _message(check, f"{where} {problem.text}", problem.hint or hint)


def _accepted(setting: Setting, value: Any) -> bool:
    return not setting.check.problems(value)


def _judge_group(
    where: str, group: Group, written: Mapping[str, Any], also_known: Iterable[str] = ()
) -> Iterator[checks.CheckMessage]:
    """Every key of `group`, as written or else its default (None is a value here)."""
    yield from _unknown_keys(where, written, group.keys | set(also_known))
    merged = group.merged(written)
    for setting in group.settings:
        yield from _judge(f"{where}[{setting.key!r}]", setting.check, merged[setting.key])


def _unknown_keys(
    where: str, value: Mapping[Any, Any], known: Iterable[str]
) -> Iterator[checks.CheckMessage]:
    unknown = sorted(str(key) for key in set(value) - set(known))
    if unknown:
        yield _message(
            rules.UNKNOWN_KEY,
            f"{where} has unknown keys {', '.join(map(repr, unknown))}; they are ignored",
            hint=f"Known keys: {', '.join(sorted(known))}.",
        )


def _stores(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    written = (value.get("store"), value.get("stores"))
    if any(shape is not None and not isinstance(shape, dict) for shape in written):
        return
    stores = conf.named_stores()
    if len(stores) > 1:
        yield _message(
            rules.SEVERAL_STORES,
            f"{SETTING} names {len(stores)} stores ({', '.join(map(repr, stores))}); "
            "one store serves the whole cluster",
            hint="Keep one store; the broker holds every channel's history.",
        )
    for name, written in stores.items():
        where = f"{SETTING}['store']" if len(stores) == 1 else f"{SETTING} store {name!r}"
        if not isinstance(written, dict):
            yield from _judge(where, rules.STORE_SHAPE, written)
            continue
        yield from _judge_group(where, schema.STORE, written)
        merged = schema.STORE.merged(written)
        least, most = merged["min_messages"], merged["max_messages"]
        if (
            _accepted(schema.STORE["min_messages"], least)
            and _accepted(schema.STORE["max_messages"], most)
            and least > most
        ):
            yield _message(
                rules.MIN_OVER_MAX,
                f"{where}['min_messages'] ({least}) must not exceed max_messages ({most})",
            )


def _hosts(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    for kind in (schema.PUBLISHER, schema.SUBSCRIBER):
        key = f"{kind}_host"
        if isinstance(value.get(key), dict):
            yield from _judge_group(f"{SETTING}[{key!r}]", schema.HOST, value[key])


def _locations(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    written = value.get("locations")
    if not isinstance(written, list | tuple):
        return
    store_names = set(conf.named_stores()) or {conf.DEFAULT_STORE_NAME}
    secrets = value.get("signed_url_secrets")
    for index, location in enumerate(written):
        where = f"{SETTING}['locations'][{index}]"
        if not isinstance(location, dict):
            yield from _judge(where, rules.LOCATION_SHAPE, location)
            continue
        kind = location.get("type")
        group = schema.LOCATIONS.get(kind) if isinstance(kind, str) else None
        if group is None:
            yield _message(
                rules.LOCATION_TYPE,
                f"{where}['type'] must be {' or '.join(map(repr, schema.LOCATIONS))}, got {kind!r}",
            )
            continue
        yield from _judge_group(where, group, location, also_known={"type"})
        merged = group.merged(location)
        if isinstance(merged["store"], str) and merged["store"] not in store_names:
            yield _message(
                rules.LOCATION_STORE,
                f"{where}['store'] names store {merged['store']!r}, which is not configured; "
                f"expected one of {', '.join(map(repr, sorted(store_names)))}",
            )
        if kind == schema.SUBSCRIBER and merged["authorize"] and not merged["passthrough"]:
            yield _message(
                rules.AUTHORIZE_WITHOUT_PASSTHROUGH,
                f"{where}['authorize'] needs a 'passthrough' URL: "
                "Django's passthrough view decides who may subscribe",
            )
        origins = merged.get("allow_origin")
        if (
            kind == schema.SUBSCRIBER
            and merged["allow_credentials"] is True
            and (origins == "*" or (isinstance(origins, list | tuple) and "*" in origins))
        ):
            yield _message(
                rules.ANY_ORIGIN_WITH_CREDENTIALS,
                f"{where} has allow_origin '*' with allow_credentials: the edge then echoes "
                "any page's origin with credentials, so any site can read what a logged-in "
                "user's channels carry",
                hint="List the origins of your own pages in 'allow_origin'.",
            )
        if kind == schema.SUBSCRIBER and merged["signed"] is True and not secrets:
            yield _message(
                rules.SIGNED_WITHOUT_SECRET,
                f"{where}['signed'] needs {SETTING}['signed_url_secrets']: "
                "without a secret no URL can be signed and every poll is refused",
            )


def _signed_url_secrets(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    secrets = value.get("signed_url_secrets")
    if secrets is not None and _accepted(schema.TOP["signed_url_secrets"], secrets):
        yield from _judge(f"{SETTING}['signed_url_secrets']", rules.SHORT_SIGNING_SECRET, secrets)


def _broker(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    written = value.get("broker")
    if not isinstance(written, dict):
        return
    where = f"{SETTING}['broker']"
    yield from _unknown_keys(where, written, schema.BROKER.keys)
    for setting in schema.BROKER.settings:
        if written.get(setting.key) is not None:
            yield from _judge(
                f"{where}[{setting.key!r}]",
                setting.check,
                written[setting.key],
                hint=None if setting.default is None else f"For example {setting.default!r}.",
            )
    bound = list(conf.broker_endpoints().values())
    # Ephemeral ports (`*` or 0) differ by construction.
    fixed = [str(endpoint) for endpoint in bound if not str(endpoint).endswith((":*", ":0"))]
    if len(set(fixed)) != len(fixed):
        yield _message(
            rules.BROKER_ENDPOINTS_SHARED,
            f"{where} endpoints must differ from each other, got {bound!r}",
        )


def _standby(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    written = value.get("standby")
    if not isinstance(written, dict):
        return
    where = f"{SETTING}['standby']"
    yield from _judge_group(
        where, schema.STANDBY, {k: v for k, v in written.items() if v is not None}
    )
    section = conf.standby_section()
    assert section is not None
    peer = section["peer"]
    ours = [section[key] for key in schema.BROKER_ENDPOINTS]
    if isinstance(peer, list | tuple):
        ours += list(peer)
    theirs = list(conf.broker_endpoints().values())
    fixed = [str(e) for e in ours + theirs if not str(e).endswith((":*", ":0"))]
    if len(set(fixed)) != len(fixed):
        yield _message(
            rules.STANDBY_ENDPOINTS_SHARED,
            f"{where} endpoints must differ from each other and from the broker's, "
            f"got {ours!r} beside {theirs!r}",
        )
    timeout, interval = section["failover_timeout"], value.get("heartbeat_interval")
    interval = schema.TOP["heartbeat_interval"].default if interval is None else interval
    if (
        _accepted(schema.STANDBY["failover_timeout"], timeout)
        and _accepted(schema.TOP["heartbeat_interval"], interval)
        and timeout < 3 * interval
    ):
        yield _message(
            rules.FAILOVER_TOO_QUICK,
            f"{where}['failover_timeout'] ({timeout} s) is under three heartbeat_interval "
            f"({interval} s)",
            hint="A paired broker heartbeats its peer several times per failover_timeout.",
        )


PUBLISHER = schema.PUBLISHER_ROLE
EDGE = schema.EDGE_ROLE
BROKER = schema.BROKER_ROLE
_KEYS_HINT = "Run `manage.py pushserver_keys DIR`: it writes every file and prints the setting."


def _curve(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    written = value.get("curve")
    if not isinstance(written, dict):
        return
    where = f"{SETTING}['curve']"
    yield from _judge_group(where, schema.CURVE, written)
    if all(written.get(setting.key) is None for setting in schema.CURVE.settings):
        yield _message(
            rules.CURVE_ROLE_KEY_MISSING,
            f"{where} turns CURVE on and names no key file: no part can connect",
            hint=_KEYS_HINT,
        )
    for setting in schema.CURVE.settings:
        key = setting.key
        path = written.get(key)
        if path is None or not _accepted(setting, path):
            continue
        yield from _judge_key_path(f"{where}[{key!r}]", key, Path(path))


def _judge_key_path(where: str, key: str, path: Path) -> Iterator[checks.CheckMessage]:
    folder = key in schema.CURVE_LISTS
    if not path.exists():
        kind = "an allow-list folder" if folder else "a key file"
        yield _message(
            rules.CURVE_FILE_MISSING, f"{where} names {kind}, {str(path)!r}, that does not exist"
        )
        return
    if folder != path.is_dir() or not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        expected = "a readable folder" if folder else "a readable file"
        yield _message(
            rules.CURVE_FILE_UNREADABLE, f"{where} must name {expected}, got {str(path)!r}"
        )
        return
    try:
        if key in schema.CURVE_PAIRS:
            curve.key_pair(path)
        elif key in schema.CURVE_PUBLIC:
            curve.public_key(path)
        else:
            curve.allow_list(path)
    except curve.KeyFileError as error:
        # An unreadable key file inside an allow-list is the list's problem to read.
        unreadable = "cannot be read" in str(error)
        yield _message(
            rules.CURVE_FILE_UNREADABLE if unreadable else rules.CURVE_NOT_A_KEY,
            f"{where}: {error}",
            hint=_KEYS_HINT,
        )


def check_curve_role(role: str) -> list[checks.CheckMessage]:
    """With CURVE on, the `curve` keys a part needs that the settings leave unnamed.

    `role` is BROKER, EDGE or PUBLISHER (`send_update`).
    """
    keys = conf.curve()
    if keys is None:
        return []
    missing = [key for key in schema.CURVE_ROLES[role] if keys.get(key) is None]
    if not missing:
        return []
    names = ", ".join(f"{SETTING}['curve'][{key!r}]" for key in missing)
    return [
        _message(
            rules.CURVE_ROLE_KEY_MISSING,
            f"with CURVE on, the {role} needs {names}",
            hint=_KEYS_HINT,
        )
    ]


def _is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this host only (ipc and inproc are)."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    # A source address (`tcp://src;dst`) aside, the host is a name, an address or `*`.
    host = host.rpartition(";")[2].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_ports(value: dict[str, Any]) -> Iterator[checks.CheckMessage]:
    if value.get("curve") is not None or not isinstance(value.get("broker", {}) or {}, dict):
        return
    endpoints = conf.broker_endpoints()
    if not all(_accepted(schema.BROKER[name], value) for name, value in endpoints.items()):
        return
    beyond = {name: endpoint for name, endpoint in endpoints.items() if not _is_loopback(endpoint)}
    if beyond:
        shown = ", ".join(f"{name} {endpoint!r}" for name, endpoint in beyond.items())
        yield _message(
            rules.OPEN_BROKER_PORTS,
            f"{SETTING}['broker'] listens beyond loopback ({shown}) and {SETTING}['curve'] "
            "is not set: anyone who reaches these ports can publish, read every channel and "
            "delete channels",
            hint=_KEYS_HINT + " Or keep the ports on a network no one else reaches.",
        )
