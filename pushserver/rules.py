"""What each PUSH_SERVER value must be, and the one check id for each way it can be wrong.

One id, one cause: a user who searches for an id finds the one thing to
fix, and the message names the key, what was expected and what arrived.
A check with a `judge` is a rule for a single value; the settings table
(`pushserver.schema`) says which keys follow it. A check without one spans
keys, and `pushserver.checks` judges it. `CHECKS` is every id, in order;
the README's list of system checks is that list.

No Django here, so the table and its tests import this module freely.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edge.config import INTERVAL_POLL, LONG_POLL

ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with one value; `text` follows the key: "must be …, got …"."""

    text: str
    hint: str | None = None


Judge = Callable[[Any], Iterator[Problem]]


@dataclass(frozen=True, slots=True)
class Check:
    id: str
    cause: str
    # Finds the cause in one value; None for a check across keys.
    judge: Judge | None = None

    @property
    def is_warning(self) -> bool:
        return ".W" in self.id

    def problems(self, value: Any) -> list[Problem]:
        return [] if self.judge is None else list(self.judge(value))


_CHECKS: dict[str, Check] = {}


def _check(check_id: str, cause: str, judge: Judge | None = None) -> Check:
    if check_id in _CHECKS:
        raise ValueError(f"check id {check_id} is taken by {_CHECKS[check_id].cause!r}")
    _CHECKS[check_id] = check = Check(check_id, cause, judge)
    return check


def must_be(
    expected: str,
    accepts: Callable[[Any], bool],
    *,
    hint: str | None = None,
    shown: Callable[[Any], str] = repr,
) -> Judge:
    def judge(value: Any) -> Iterator[Problem]:
        if not accepts(value):
            yield Problem(f"must be {expected}, got {shown(value)}", hint)

    return judge


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    # A container's repr would bury the message.
    return type(value).__name__


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _text_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def _port(value: Any) -> bool:
    number = int(value) if isinstance(value, str) and value.isdigit() else value
    return is_integer(number) and 0 <= number <= 65535


def _host_location(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or not value or "://" in value or "/" in value:
        return False
    try:
        parts = urlsplit(f"//{value}")
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return bool(parts.hostname)


def _listen_address_or_none(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str) or not _host_location(value):
        return False
    port = urlsplit(f"//{value}").port
    return port is not None


def _http_url_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and urlsplit(value).scheme in ("http", "https"))


def _path_or_none(value: Any) -> bool:
    return (
        value is None or (isinstance(value, str) and bool(value)) or isinstance(value, os.PathLike)
    )


def _endpoint(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith(ENDPOINT_SCHEMES)
        and value not in ENDPOINT_SCHEMES
    )


def _judge_url(value: Any) -> Iterator[Problem]:
    if not isinstance(value, str) or not value.startswith(("/", "^/")):
        yield Problem(
            "must be a regular expression string matching the path from its leading '/', "
            f"got {value!r}"
        )
        return
    try:
        groups = re.compile(value).groups
    except re.error as exc:
        yield Problem(f"{value!r} is not a valid regular expression: {exc}")
        return
    if groups != 1:
        yield Problem(
            f"{value!r} must have exactly one group (the channel id), has {groups}",
            "Use (?:...) for groups that are not the channel id.",
        )


def _judge_allow_origin(value: Any) -> Iterator[Problem]:
    origins = [value] if isinstance(value, str) else value
    if not isinstance(origins, list | tuple) or not origins:
        yield Problem(f"must be '*', an origin or a list of origins, got {value!r}")
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
            yield Problem(
                "entries must be '*' or an origin like 'https://example.com' "
                f"(scheme and host, no path), got {origin!r}"
            )


def _judge_secrets(value: Any) -> Iterator[Problem]:
    secrets = [value] if isinstance(value, str) else value
    if not isinstance(secrets, list | tuple) or not all(
        isinstance(secret, str) and secret for secret in secrets
    ):
        yield Problem(
            f"must be a list of non-empty strings, the first signing, got {value!r}",
            "Add a new secret first, and remove an old one once pages signed with it expired.",
        )


def _networks(*, strict: bool) -> Judge:
    # strict=False reads '10.1.2.3/8' as its network instead of refusing the host bits.
    def judge(value: Any) -> Iterator[Problem]:
        networks = [value] if isinstance(value, str) else value
        if not isinstance(networks, list | tuple):
            yield Problem(f"must be a list of networks like '10.0.0.0/8', got {value!r}")
            return
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=strict)
            except (TypeError, ValueError) as exc:
                yield Problem(
                    "entries must be networks like '10.0.0.0/8' or '::1/128', "
                    f"got {network!r} ({exc})"
                )

    return judge


STORE_TYPE = "memory"

NOT_A_DICT = _check("pushserver.E001", "PUSH_SERVER is not a dict")
SEVERAL_STORES = _check("pushserver.E002", "the settings name more than one store")
STORE_TYPE_NOT_MEMORY = _check(
    "pushserver.E003",
    f"a store's `type` is not `{STORE_TYPE!r}`",
    must_be(
        repr(STORE_TYPE),
        lambda value: value == STORE_TYPE,
        hint="The broker keeps history in memory (and in history_file, when set).",
    ),
)
MAX_MESSAGES = _check(
    "pushserver.E004",
    "a store's `max_messages` is not a positive integer",
    must_be(
        "a positive integer",
        lambda value: is_integer(value) and value > 0,
        hint="Each channel's history lives in the broker's memory, so it must be bounded.",
    ),
)
PORT = _check(
    "pushserver.E005",
    "`port` is not an integer from 0 to 65535",
    must_be("an integer from 0 to 65535", _port),
)
HOST_LOCATION = _check(
    "pushserver.E006",
    "the `location` of `publisher_host` or `subscriber_host` is not `'host'` or `'host:port'`",
    must_be("'host' or 'host:port' without scheme or path", _host_location),
)
LOCATION_TYPE = _check(
    "pushserver.E007", "a location's `type` is not `'subscriber'` or `'publisher'`"
)
LOCATION_URL = _check(
    "pushserver.E008",
    "a location's `url` is not a regular expression from the leading `/` with exactly one "
    "group, the channel id",
    _judge_url,
)
POLLING = _check(
    "pushserver.E009",
    f"a subscriber's `polling` is not `{LONG_POLL!r}` or `{INTERVAL_POLL!r}`",
    must_be(
        f"{LONG_POLL!r} or {INTERVAL_POLL!r}", lambda value: value in (LONG_POLL, INTERVAL_POLL)
    ),
)
ALLOW_ORIGIN = _check(
    "pushserver.E010",
    "a subscriber's `allow_origin` is not `'*'`, an origin or a list of them",
    _judge_allow_origin,
)
ALLOW_FROM = _check(
    "pushserver.E011",
    "a publisher's `allow_from` is not a list of networks (CIDR)",
    _networks(strict=True),
)
BROKER_ENDPOINT = _check(
    "pushserver.E012",
    "a `broker` endpoint is not a ZeroMQ endpoint (`tcp://`, `ipc://` or `inproc://`)",
    must_be("a ZeroMQ endpoint starting with tcp://, ipc:// or inproc://", _endpoint),
)
SECONDS = _check(
    "pushserver.E013",
    "a timeout or interval is not a positive number of seconds",
    must_be("a positive number of seconds", lambda value: is_number(value) and value > 0),
)
HISTORY_FILE = _check(
    "pushserver.E014",
    "`history_file` is not a file path or None",
    must_be("a file path or None", _path_or_none),
)
IGNORE_ERRORS_FLAG = _check(
    "pushserver.E015",
    "PUSH_SERVER_IGNORE_ERRORS is not True or False",
    must_be("True or False", _is_bool),
)
PASSTHROUGH_SECRET = _check(
    "pushserver.E016",
    "`passthrough_secret` is not a non-empty string or None",
    must_be("a non-empty string or None", _text_or_none),
)
METRICS_ALLOW_FROM = _check(
    "pushserver.E017",
    "`metrics_allow_from` is not a list of networks (CIDR)",
    _networks(strict=False),
)
STORES_SHAPE = _check(
    "pushserver.E018",
    "`stores` is not a dict of store names to store dicts",
    must_be("a dict of store name to store dict", _is_dict, shown=_type_name),
)
STORE_SHAPE = _check(
    "pushserver.E019", "a store is not a dict", must_be("a dict", _is_dict, shown=_type_name)
)
MIN_MESSAGES = _check(
    "pushserver.E020",
    "a store's `min_messages` is not an integer of 0 or more",
    must_be("an integer of 0 or more", lambda value: is_integer(value) and value >= 0),
)
MIN_OVER_MAX = _check("pushserver.E021", "a store's `min_messages` exceeds its `max_messages`")
MESSAGE_TIMEOUT = _check(
    "pushserver.E022",
    "a store's `message_timeout` is not a number of seconds, 0 or more",
    must_be(
        "a number of seconds, 0 or more (0 keeps messages until max_messages pushes them out)",
        lambda value: is_number(value) and value >= 0,
    ),
)
ADDRESS = _check(
    "pushserver.E023",
    "`address` is not a string",
    must_be("a host name or IP address string", lambda value: isinstance(value, str)),
)
HOST_SHAPE = _check(
    "pushserver.E024",
    "`publisher_host` or `subscriber_host` is not a dict",
    must_be("a dict like {'location': 'push.example.com:443', 'secure': True}", _is_dict),
)
HOST_SECURE = _check(
    "pushserver.E025",
    "the `secure` of `publisher_host` or `subscriber_host` is not True or False",
    must_be("True or False", _is_bool),
)
LOCATIONS_SHAPE = _check(
    "pushserver.E026",
    "`locations` is not a list",
    must_be(
        "a list of location dicts",
        lambda value: isinstance(value, list | tuple),
        shown=_type_name,
    ),
)
LOCATION_SHAPE = _check(
    "pushserver.E027", "a location is not a dict", must_be("a dict", _is_dict, shown=_type_name)
)
# The judge sees the shape only; checks.py compares the name with the stores configured.
LOCATION_STORE = _check(
    "pushserver.E028",
    "a location's `store` is not None or the name of a configured store",
    must_be("None or the name of a store", lambda value: value is None or isinstance(value, str)),
)
SUBSCRIBER_FLAG = _check(
    "pushserver.E029",
    "a subscriber's `create_on_get`, `allow_credentials` or `authorize` is not True or False",
    must_be("True or False", _is_bool),
)
PASSTHROUGH_URL = _check(
    "pushserver.E030",
    "a subscriber's `passthrough` is not None or an http(s) URL",
    must_be("an http:// or https:// URL", _http_url_or_none),
)
SUBSCRIBER_SECONDS = _check(
    "pushserver.E031",
    "a subscriber's `passthrough_grace` or `authorize_cache` is not a number of seconds, 0 or more",
    must_be("a number of seconds >= 0", lambda value: is_number(value) and value >= 0),
)
AUTHORIZE_WITHOUT_PASSTHROUGH = _check(
    "pushserver.E032", "a subscriber has `authorize` on and no `passthrough` URL"
)
PUBLISHER_SECRET = _check(
    "pushserver.E033",
    "a publisher's `secret` is not a non-empty string or None",
    must_be("a non-empty string or None", _text_or_none),
)
BROKER_SHAPE = _check(
    "pushserver.E034",
    "`broker` is not a dict",
    must_be(
        "a dict of 'ingress', 'events' and 'control' ZeroMQ endpoints",
        _is_dict,
        shown=_type_name,
    ),
)
BROKER_ENDPOINTS_SHARED = _check(
    "pushserver.E035", "two `broker` endpoints are the same (ephemeral ports aside)"
)
COUNT = _check(
    "pushserver.E036",
    "a size or count is not a positive integer",
    must_be("a positive integer", lambda value: is_integer(value) and value > 0),
)
EVENTS_HWM = _check(
    "pushserver.E037",
    "`events_hwm` is not an integer of 0 or more",
    must_be(
        "a number of messages >= 0 (0: unbounded)",
        lambda value: value is None or (is_integer(value) and value >= 0),
    ),
)
FORWARDED_ALLOW_IPS = _check(
    "pushserver.E038",
    "`forwarded_allow_ips` is not a list of networks (CIDR)",
    _networks(strict=False),
)
SIGNED_FLAG = _check(
    "pushserver.E039",
    "a subscriber's `signed` is not True or False",
    must_be("True or False", _is_bool),
)
SIGNED_URL_SECRETS = _check(
    "pushserver.E040",
    "`signed_url_secrets` is not a list of non-empty strings",
    _judge_secrets,
)
SIGNED_WITHOUT_SECRET = _check(
    "pushserver.E041", "a subscriber has `signed` on and no `signed_url_secrets`"
)
BYTES_OR_OFF = _check(
    "pushserver.E042",
    "a byte bound that 0 turns off is not an integer of 0 or more",
    must_be("a number of bytes >= 0 (0: off)", lambda value: is_integer(value) and value >= 0),
)
CURVE_SHAPE = _check(
    "pushserver.E043",
    "`curve` is not a dict",
    must_be(
        "a dict of key files, like the one `manage.py pushserver_keys` prints",
        _is_dict,
        shown=_type_name,
    ),
)
CURVE_PATH = _check(
    "pushserver.E044",
    "a `curve` key is not a path or None",
    must_be("a path to a key file or an allow-list folder, or None", _path_or_none),
)
CURVE_FILE_MISSING = _check(
    "pushserver.E045", "a key file or allow-list directory that `curve` names does not exist"
)
CURVE_FILE_UNREADABLE = _check(
    "pushserver.E046",
    "a key file or allow-list directory that `curve` names cannot be read (or is a "
    "directory where a file belongs, or a file where a directory belongs)",
)
CURVE_NOT_A_KEY = _check(
    "pushserver.E047",
    "a file that `curve` names, or a `.key` file in an allow-list, holds no CURVE key of "
    "the kind it must (a key pair in a `.key_secret` file, a public key in a `.key` file)",
)
CURVE_ROLE_KEY_MISSING = _check(
    "pushserver.E048",
    "CURVE is on and a part lacks a key file it needs: the one starting (the broker, an "
    "edge, `send_update`), or every part when `curve` names none",
)
METRICS_ADDRESS = _check(
    "pushserver.E049",
    "`broker['metrics']` is not None or a `'host:port'` address",
    must_be("None or 'host:port', like '127.0.0.1:9560'", _listen_address_or_none),
)
# The most channels one stream may be allowed: their ids and cursors travel in its URL.
MOST_STREAM_CHANNELS = 1024
STREAM_KEEPALIVE = _check(
    "pushserver.E055",
    "a subscriber's `stream_keepalive` is not a positive number of seconds",
    must_be(
        "a positive number of seconds",
        lambda value: is_number(value) and value > 0,
        hint="Keep it well under your balancer's read timeout (60 s in the configs in ops/).",
    ),
)
STREAM_RETRY = _check(
    "pushserver.E056",
    "a subscriber's `stream_retry` is not a positive integer of milliseconds",
    must_be(
        "a positive integer of milliseconds",
        lambda value: is_integer(value) and value > 0,
        hint="EventSource's retry: field counts milliseconds: 3000 is three seconds.",
    ),
)
STREAM_BUFFER = _check(
    "pushserver.E057",
    "a subscriber's `stream_buffer` is not a positive integer of bytes",
    must_be("a positive integer of bytes", lambda value: is_integer(value) and value > 0),
)
STREAM_MAX_CHANNELS = _check(
    "pushserver.E058",
    f"a subscriber's `stream_max_channels` is not an integer from 1 to {MOST_STREAM_CHANNELS}",
    must_be(
        f"an integer from 1 to {MOST_STREAM_CHANNELS}",
        lambda value: is_integer(value) and 1 <= value <= MOST_STREAM_CHANNELS,
    ),
)
STANDBY_SHAPE = _check(
    "pushserver.E065",
    "`standby` is not a dict",
    must_be(
        "a dict of the backup broker's 'ingress', 'events' and 'control' endpoints and the "
        "pair's 'peer' endpoints",
        _is_dict,
        shown=_type_name,
    ),
)
STANDBY_ENDPOINT = _check(
    "pushserver.E066",
    "a `standby` endpoint is not a ZeroMQ endpoint (`tcp://`, `ipc://` or `inproc://`)",
    must_be("a ZeroMQ endpoint starting with tcp://, ipc:// or inproc://", _endpoint),
)
STANDBY_PEER = _check(
    "pushserver.E067",
    "`standby['peer']` is not two different ZeroMQ endpoints (the primary's, the backup's)",
    must_be(
        "a list of two different ZeroMQ endpoints: where the primary and the backup each "
        "bind the link to the other",
        lambda value: (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(_endpoint(endpoint) for endpoint in value)
            and value[0] != value[1]
        ),
    ),
)
FAILOVER_TIMEOUT = _check(
    "pushserver.E068",
    "`standby['failover_timeout']` is not a positive number of seconds",
    must_be("a positive number of seconds", lambda value: is_number(value) and value > 0),
)
STANDBY_ENDPOINTS_SHARED = _check(
    "pushserver.E069",
    "a `standby` endpoint is the same as a `broker` endpoint, or as another `standby` one",
)
STANDBY_HISTORY_FILE = _check(
    "pushserver.E070",
    "`standby['history_file']` is not a file path or None",
    must_be("a file path or None", _path_or_none),
)
UNKNOWN_KEY = _check("pushserver.W001", "a key no setting has (a typo?); it is ignored")
# Shorter than a SHA-256 key's 32 bytes, a secret is easier to guess than the MAC.
SHORT_SECRET_LENGTH = 32


def _judge_secret_lengths(value: Any) -> Iterator[Problem]:
    secrets = [value] if isinstance(value, str) else value
    for index, secret in enumerate(secrets if isinstance(secrets, list | tuple) else ()):
        if isinstance(secret, str) and 0 < len(secret) < SHORT_SECRET_LENGTH:
            yield Problem(
                f"holds a secret of {len(secret)} characters (item {index}); "
                f"use at least {SHORT_SECRET_LENGTH} random ones",
                "For example: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )


SHORT_SIGNING_SECRET = _check(
    "pushserver.W002",
    f"a secret in `signed_url_secrets` is shorter than {SHORT_SECRET_LENGTH} characters",
    _judge_secret_lengths,
)

ANY_ORIGIN_WITH_CREDENTIALS = _check(
    "pushserver.W003",
    "a subscriber allows any origin (`'*'`) with `allow_credentials`: any site a logged-in "
    "user visits can read that user's channels",
)

OPEN_BROKER_PORTS = _check(
    "pushserver.W004",
    "a `broker` endpoint listens beyond loopback and `curve` is off: anyone who reaches "
    "the port can publish, read every channel and delete channels",
)

FAILOVER_TOO_QUICK = _check(
    "pushserver.W007",
    "`standby['failover_timeout']` is under three `heartbeat_interval`s: a pair whose "
    "heartbeats are merely late fails over",
)

# Every id this app reports, in id order.
CHECKS: tuple[Check, ...] = tuple(sorted(_CHECKS.values(), key=lambda check: check.id))
