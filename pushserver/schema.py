"""Every PUSH_SERVER key, written once: its type, default, rule (with its check id) and meaning.

`pushserver.conf` reads settings through this table, `pushserver.checks`
judges them by the rules it names (`pushserver.rules`), and the README's
settings table is this table (a test compares them). The module imports no
Django, so that test and any tool can read it without a settings module.

Where a default lives: a key the broker or an edge reads takes the default
of the field it fills in their own configuration dataclasses
(`BrokerConfig`, `EdgeConfig`, `SubscriberLocation`, `PublisherLocation`),
read from a default instance of each. Those dataclasses must not import
Django or this module, so the table reads them, never the other way round.
Keys only Django reads (``send_update``'s) have their default written here.

The trap: ``None`` means "use the default" only for top-level keys and the
``broker`` endpoints. Inside a store, a host or a location a key written as
``None`` is that value, judged by its rule (``'passthrough': None`` is
fine, ``'polling': None`` is not), as in the original django-pushserver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.config import BrokerConfig
from edge.config import INTERVAL_POLL, LONG_POLL, EdgeConfig, PublisherLocation, SubscriberLocation
from pushserver import rules
from pushserver.rules import STORE_TYPE, Check

SETTING = "PUSH_SERVER"
# `runpushserver --allrequests` stands in for `runserver`, so it takes its port.
ALL_REQUESTS_PORT = 8000
SUBSCRIBER = "subscriber"
PUBLISHER = "publisher"
# Keys of the original that are accepted and have no effect here.
IGNORED_KEYS = frozenset({"servername"})
IGNORED_LOCATION_KEYS = frozenset({"prefix", "create_on_post"})

_BROKER = BrokerConfig()
_EDGE = EdgeConfig()
_SUBSCRIBER = SubscriberLocation()
_PUBLISHER = PublisherLocation()


def strings(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """One string or several, as the tuple the parts' configurations hold."""
    return (value,) if isinstance(value, str) else tuple(value)


def _same(value: Any) -> Any:
    return value


def _text_or_none(value: Any) -> str | None:
    return str(value) if value else None


def _path_or_none(value: Any) -> Path | None:
    return Path(value) if value else None


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    # The type as the README shows it.
    shown_type: str
    default: Any
    # The rule a value must follow, and the id of the check that reports it.
    check: Check
    meaning: str
    # The configuration dataclass this key fills, in the field of the same name.
    feeds: type | None = None
    # Into the type that field holds; the value has passed `check`.
    convert: Callable[[Any], Any] = _same
    # The dicts nested in this key's value.
    parts: tuple[Group, ...] = ()


def _field(
    defaults: object,
    key: str,
    shown_type: str,
    check: Check,
    meaning: str,
    convert: Callable[[Any], Any] = _same,
) -> Setting:
    """A key that fills the field `key` of a part's configuration, with that field's default."""
    return Setting(
        key=key,
        shown_type=shown_type,
        default=getattr(defaults, key),
        check=check,
        meaning=meaning,
        feeds=type(defaults),
        convert=convert,
    )


@dataclass(frozen=True, slots=True)
class Group:
    """The keys of one dict: the top level, a store, a host, a location or the broker's."""

    # How the README names a key of this group; "{}" is the key.
    label: str
    settings: tuple[Setting, ...]
    # Keys accepted and ignored, from the original.
    ignored: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Setting:
        for setting in self.settings:
            if setting.key == key:
                return setting
        raise KeyError(key)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(setting.key for setting in self.settings) | self.ignored

    def defaults(self) -> dict[str, Any]:
        return {setting.key: setting.default for setting in self.settings}

    def merged(self, written: Mapping[str, Any]) -> dict[str, Any]:
        """`written` with every key it leaves out at its default."""
        return {**self.defaults(), **written}

    def fields(self, merged: Mapping[str, Any], target: type) -> dict[str, Any]:
        """The fields of the configuration `target` that these values (all keys) fill."""
        return {
            setting.key: setting.convert(merged[setting.key])
            for setting in self.settings
            if setting.feeds is target
        }


HOST = Group(
    "host `{}`",
    (
        Setting(
            "location",
            "str or None",
            None,
            rules.HOST_LOCATION,
            "`host` or `host:port` where they reach the edges (a balancer, say); "
            "`None`: where the edge listens, `address`:`port`",
        ),
        Setting("secure", "bool", False, rules.HOST_SECURE, "reached by `https` (else `http`)"),
    ),
)

STORE = Group(
    "`store['{}']`",
    (
        Setting(
            "type",
            "str",
            STORE_TYPE,
            rules.STORE_TYPE_NOT_MEMORY,
            f"only `{STORE_TYPE!r}`; several named stores are a check error",
        ),
        _field(
            _BROKER,
            "min_messages",
            "int",
            rules.MIN_MESSAGES,
            "messages kept even after they expire",
            int,
        ),
        _field(
            _BROKER,
            "max_messages",
            "int",
            rules.MAX_MESSAGES,
            "messages kept per channel; older ones are dropped",
            int,
        ),
        _field(
            _BROKER,
            "message_timeout",
            "float (s)",
            rules.MESSAGE_TIMEOUT,
            "seconds a message is kept; `0` keeps it until `max_messages` pushes it out",
            float,
        ),
    ),
)

_URL_MEANING = "path pattern; its one group is the channel id"
_STORE_NAME_MEANING = "the store's name; there is one store, so this only has to name it"

SUBSCRIBER_LOCATION = Group(
    "subscriber `{}`",
    (
        _field(_SUBSCRIBER, "url", "regex", rules.LOCATION_URL, _URL_MEANING),
        _field(
            _SUBSCRIBER, "polling", "str", rules.POLLING, f"`{LONG_POLL!r}` or `{INTERVAL_POLL!r}`"
        ),
        _field(
            _SUBSCRIBER,
            "create_on_get",
            "bool",
            rules.SUBSCRIBER_FLAG,
            "a GET of a missing channel creates it (else `403`)",
            bool,
        ),
        _field(
            _SUBSCRIBER,
            "allow_origin",
            "str or list",
            rules.ALLOW_ORIGIN,
            "CORS origins allowed; `'*'` allows any",
            strings,
        ),
        _field(
            _SUBSCRIBER,
            "allow_credentials",
            "bool",
            rules.SUBSCRIBER_FLAG,
            "send `Access-Control-Allow-Credentials` and echo the origin",
            bool,
        ),
        _field(
            _SUBSCRIBER,
            "passthrough",
            "URL or None",
            rules.PASSTHROUGH_URL,
            "Django URL (the passthrough view) the edges tell of each subscribe and unsubscribe",
            _text_or_none,
        ),
        _field(
            _SUBSCRIBER,
            "passthrough_grace",
            "float (s)",
            rules.SUBSCRIBER_SECONDS,
            "how long after a poll ends the edge waits for the same client to poll again "
            "before reporting the unsubscribe; `0` reports every poll",
            float,
        ),
        _field(
            _SUBSCRIBER,
            "authorize",
            "bool",
            rules.SUBSCRIBER_FLAG,
            "ask the passthrough view before holding a poll; a `PermissionDenied` from a "
            "`channel_subscribe` receiver gets the browser `403` (needs `passthrough`)",
            bool,
        ),
        _field(
            _SUBSCRIBER,
            "authorize_cache",
            "float (s)",
            rules.SUBSCRIBER_SECONDS,
            "how long a granted subscription is remembered per client and channel",
            float,
        ),
        _field(
            _SUBSCRIBER,
            "signed",
            "bool",
            rules.SIGNED_FLAG,
            "hold a poll only with a valid token for its channel in `?token=`, checked by the "
            'edge without Django; `{% channel_url %}` adds one (see "Signed channel URLs")',
            bool,
        ),
        _field(
            _SUBSCRIBER,
            "stream_keepalive",
            "float (s)",
            rules.STREAM_KEEPALIVE,
            "how long an EventSource stream may stay silent before the edge writes a comment "
            "line, keeping balancers and proxies from timing it out; also the interval of a "
            "WebSocket's pings, a peer silent since the last one being dropped",
            float,
        ),
        _field(
            _SUBSCRIBER,
            "stream_retry",
            "int (ms)",
            rules.STREAM_RETRY,
            "the reconnection delay a stream tells EventSource (`retry:`), each stream's "
            "drawn within half of it either side",
            int,
        ),
        _field(
            _SUBSCRIBER,
            "stream_buffer",
            "int (bytes)",
            rules.STREAM_BUFFER,
            "output a stream's or a WebSocket's reader may leave untaken; a live message "
            "finding more closes the stream (a WebSocket with `1013`; counted as `slow`), and "
            "the client resumes from its last id",
            int,
        ),
        _field(
            _SUBSCRIBER,
            "stream_max_channels",
            "int",
            rules.STREAM_MAX_CHANNELS,
            "channels one stream or WebSocket may carry (`/updates/a,b`); more get `400`",
            int,
        ),
        Setting("store", "str or None", None, rules.LOCATION_STORE, _STORE_NAME_MEANING),
    ),
    IGNORED_LOCATION_KEYS,
)

PUBLISHER_LOCATION = Group(
    "publisher `{}`",
    (
        _field(_PUBLISHER, "url", "regex", rules.LOCATION_URL, _URL_MEANING),
        _field(
            _PUBLISHER,
            "allow_from",
            "list of CIDR",
            rules.ALLOW_FROM,
            "networks whose callers may publish",
            strings,
        ),
        _field(
            _PUBLISHER,
            "secret",
            "str or None",
            rules.PUBLISHER_SECRET,
            "a caller outside `allow_from` may publish with it in `X-Push-Secret`",
            _text_or_none,
        ),
        Setting("store", "str or None", None, rules.LOCATION_STORE, _STORE_NAME_MEANING),
    ),
    IGNORED_LOCATION_KEYS,
)

LOCATIONS: Mapping[str, Group] = {
    SUBSCRIBER: SUBSCRIBER_LOCATION,
    PUBLISHER: PUBLISHER_LOCATION,
}

# The broker's three ZeroMQ endpoints, the other keys of its dict aside.
BROKER_ENDPOINTS = ("ingress", "events", "control")

BROKER = Group(
    "`broker['{}']`",
    (
        _field(
            _BROKER,
            "ingress",
            "str",
            rules.BROKER_ENDPOINT,
            "where `send_update` and the edges' publisher locations send messages and get "
            "them acknowledged (DEALER → ROUTER)",
        ),
        _field(
            _BROKER,
            "events",
            "str",
            rules.BROKER_ENDPOINT,
            "where edges subscribe to messages (XPUB → SUB)",
        ),
        _field(
            _BROKER,
            "control",
            "str",
            rules.BROKER_ENDPOINT,
            "snapshots, channel info, create and delete (ROUTER ← DEALER)",
        ),
        _field(
            _BROKER,
            "metrics",
            "str or None",
            rules.METRICS_ADDRESS,
            "`host:port` where the broker serves Prometheus metrics (connections CURVE "
            "refused and malformed frames dropped, by port); `None` serves none",
        ),
    ),
)

# The backup broker of a standby pair: its endpoints as `broker` names the
# primary's, and the link between the two.
STANDBY_DEFAULTS = {
    "ingress": "tcp://127.0.0.1:5565",
    "events": "tcp://127.0.0.1:5566",
    "control": "tcp://127.0.0.1:5567",
    "peer": ("tcp://127.0.0.1:5563", "tcp://127.0.0.1:5564"),
}

STANDBY = Group(
    "`standby['{}']`",
    (
        Setting(
            "ingress",
            "str",
            STANDBY_DEFAULTS["ingress"],
            rules.STANDBY_ENDPOINT,
            "the backup broker's `broker['ingress']`",
        ),
        Setting(
            "events",
            "str",
            STANDBY_DEFAULTS["events"],
            rules.STANDBY_ENDPOINT,
            "the backup broker's `broker['events']`",
        ),
        Setting(
            "control",
            "str",
            STANDBY_DEFAULTS["control"],
            rules.STANDBY_ENDPOINT,
            "the backup broker's `broker['control']`",
        ),
        Setting(
            "metrics",
            "str or None",
            None,
            rules.METRICS_ADDRESS,
            "the backup broker's `broker['metrics']`",
        ),
        Setting(
            "peer",
            "list of 2 str",
            STANDBY_DEFAULTS["peer"],
            rules.STANDBY_PEER,
            "where the primary and the backup each bind the link to the other (heartbeats, "
            "replication); each connects to the other's",
        ),
        Setting(
            "failover_timeout",
            "float (s)",
            _BROKER.failover_timeout,
            rules.FAILOVER_TIMEOUT,
            "how long the active broker may be silent before the backup takes over, once a "
            "client comes to it; clients try the other broker after a third of it",
            convert=float,
        ),
        Setting(
            "history_file",
            "path or None",
            None,
            rules.STANDBY_HISTORY_FILE,
            "the backup's `history_file`; `None`: the top-level one (a path on the backup's "
            "own host)",
            convert=_path_or_none,
        ),
    ),
)

# What each `curve` key names, and which part reads it.
CURVE_PAIRS = ("broker_secret_key", "publisher_secret_key", "edge_secret_key")
CURVE_PUBLIC = ("broker_public_key",)
CURVE_LISTS = ("publisher_keys", "edge_keys")
BROKER_ROLE = "broker"
EDGE_ROLE = "edge"
PUBLISHER_ROLE = "publisher"
CURVE_ROLES: Mapping[str, tuple[str, ...]] = {
    BROKER_ROLE: ("broker_secret_key", "publisher_keys", "edge_keys"),
    EDGE_ROLE: ("broker_public_key", "edge_secret_key"),
    PUBLISHER_ROLE: ("broker_public_key", "publisher_secret_key"),
}

_CURVE_FILE = "file path or None"
_CURVE_DIR = "folder path or None"

CURVE = Group(
    "`curve['{}']`",
    (
        Setting(
            "broker_public_key",
            _CURVE_FILE,
            None,
            rules.CURVE_PATH,
            "the broker's public key (`broker.key`); every edge and Django host",
        ),
        Setting(
            "broker_secret_key",
            _CURVE_FILE,
            None,
            rules.CURVE_PATH,
            "the broker's key pair (`broker.key_secret`); the broker's host only",
        ),
        Setting(
            "publisher_secret_key",
            _CURVE_FILE,
            None,
            rules.CURVE_PATH,
            "the key pair `send_update` connects with (`publisher.key_secret`); Django hosts",
        ),
        Setting(
            "edge_secret_key",
            _CURVE_FILE,
            None,
            rules.CURVE_PATH,
            "the key pair an edge connects with (`edge.key_secret`); edge hosts",
        ),
        Setting(
            "publisher_keys",
            _CURVE_DIR,
            None,
            rules.CURVE_PATH,
            "the broker's allow-list of publishers: each `*.key` file in it opens the "
            "ingress port; the broker's host",
        ),
        Setting(
            "edge_keys",
            _CURVE_DIR,
            None,
            rules.CURVE_PATH,
            "the broker's allow-list of edges: each `*.key` file in it opens the events, "
            "control and ingress ports; the broker's host",
        ),
    ),
)

TOP = Group(
    "`{}`",
    (
        _field(
            _EDGE,
            "address",
            "str",
            rules.ADDRESS,
            "address the edge listens on (`runpushserver`'s addrport overrides it)",
            str,
        ),
        _field(
            _EDGE,
            "port",
            "int",
            rules.PORT,
            "port the edge listens on; when unset, `--allrequests` uses "
            f"`{ALL_REQUESTS_PORT}` (the addrport argument overrides both)",
            int,
        ),
        Setting(
            "publisher_host",
            "host dict or None",
            None,
            rules.HOST_SHAPE,
            "where Django reaches a publisher location (the host keys below)",
            parts=(HOST,),
        ),
        Setting(
            "subscriber_host",
            "host dict or None",
            None,
            rules.HOST_SHAPE,
            "where browsers reach a subscriber location (the host keys below)",
            parts=(HOST,),
        ),
        Setting(
            "store",
            "dict or None",
            None,
            rules.STORE_SHAPE,
            "the history the broker keeps per channel (the keys below); one store for the "
            "whole cluster; the original's dict of one named store is accepted",
            parts=(STORE,),
        ),
        Setting(
            "stores",
            "dict or None",
            None,
            rules.STORES_SHAPE,
            "the store under a name, `{'name': {...}}`; another way to write `store`",
        ),
        Setting(
            "locations",
            "sequence of dicts or None",
            None,
            rules.LOCATIONS_SHAPE,
            "the HTTP locations every edge serves, each with a `type` (`'subscriber'` or "
            "`'publisher'`) and the keys below; `None`: one of each with the defaults",
            parts=(SUBSCRIBER_LOCATION, PUBLISHER_LOCATION),
        ),
        Setting(
            "broker",
            "dict or None",
            None,
            rules.BROKER_SHAPE,
            "ZeroMQ endpoints of the broker (the keys below)",
            parts=(BROKER,),
        ),
        Setting(
            "standby",
            "dict or None",
            None,
            rules.STANDBY_SHAPE,
            "a standby pair: the backup broker that takes over from the primary (`broker`) "
            "when it is lost (the keys below); `None`: one broker",
            parts=(STANDBY,),
        ),
        Setting(
            "curve",
            "dict or None",
            None,
            rules.CURVE_SHAPE,
            "CURVE encryption and authentication on every ZeroMQ link, with the broker's "
            "allow-lists (the keys below, each host naming the files it holds; "
            '`manage.py pushserver_keys` makes them, see "Securing the ZeroMQ links"); '
            "`None`: the links are open",
            parts=(CURVE,),
        ),
        _field(
            _BROKER,
            "history_file",
            "path or None",
            rules.HISTORY_FILE,
            "a file the broker appends every message (and every channel created or deleted) "
            "to before edges see it, and replays at start, so channels survive a restart "
            '(see "What a broker restart loses"); `None` keeps the history in memory only',
            _path_or_none,
        ),
        _field(
            _EDGE,
            "long_poll_timeout",
            "float (s)",
            rules.SECONDS,
            "how long a long-poll is held before `304`",
            float,
        ),
        _field(
            _EDGE,
            "max_message_size",
            "int (bytes)",
            rules.COUNT,
            "larger publisher bodies get `413`, larger `send_update` data a `ValueError`; "
            "every ZeroMQ socket refuses frames over it plus 64 KiB",
            int,
        ),
        _field(
            _EDGE,
            "head_timeout",
            "float (s)",
            rules.SECONDS,
            "how long a request head may take to arrive (not renewed by each byte); then `408`",
            float,
        ),
        _field(
            _EDGE,
            "body_timeout",
            "float (s)",
            rules.SECONDS,
            "how long a request body may take to arrive (not renewed by each byte); then `408`",
            float,
        ),
        _field(
            _EDGE,
            "topic_linger",
            "float (s)",
            rules.SECONDS,
            "how long an edge stays subscribed to a channel after its last client left or asked"
            " (up to a quarter longer when a held poll or stream left just after the edge last"
            " looked)",
            float,
        ),
        _field(
            _EDGE,
            "broker_timeout",
            "float (s)",
            rules.SECONDS,
            "how long an edge waits for the broker before answering `503`; also the "
            "heartbeat silence after which it counts the broker as away",
            float,
        ),
        _field(
            _BROKER,
            "heartbeat_interval",
            "float (s)",
            rules.SECONDS,
            "how often the broker sends heartbeats",
            float,
        ),
        _field(
            _EDGE,
            "max_connections",
            "int",
            rules.COUNT,
            "connections an edge accepts at once (fewer when the process may not open that "
            "many files)",
            int,
        ),
        _field(
            _EDGE,
            "metrics_allow_from",
            "list of CIDR",
            rules.METRICS_ALLOW_FROM,
            "networks whose callers may read an edge's `/pushserver/metrics`",
            strings,
        ),
        Setting(
            "events_hwm",
            "int or None",
            None,
            rules.EVENTS_HWM,
            "messages queued on the broker-to-edge link, at both ends; `0` is unbounded; "
            f"`None` keeps each end's own default (the broker's {_BROKER.events_sndhwm:,}, "
            f"the edge's {_EDGE.events_rcvhwm}). An edge that drops messages at this limit "
            "notices the gap and refills (`refills` in the metrics)",
        ),
        Setting(
            "send_timeout",
            "float (s)",
            0.5,
            rules.SECONDS,
            "longest a `send_update` call blocks",
            convert=float,
        ),
        Setting(
            "broker_unreachable_timeout",
            "float (s)",
            3.0,
            rules.SECONDS,
            "how long the broker may be unreachable before `send_update` raises",
            convert=float,
        ),
        _field(
            _EDGE,
            "send_queue_size",
            "int",
            rules.COUNT,
            "unacknowledged messages each sending thread, and each edge for its publisher "
            "locations, keeps (while the broker is away, or slow to acknowledge); beyond it "
            "`send_update` raises and an HTTP publish gets `503`",
            int,
        ),
        Setting(
            "exit_timeout",
            "float (s)",
            1.0,
            rules.SECONDS,
            "how long unacknowledged messages may delay interpreter exit",
            convert=float,
        ),
        _field(
            _BROKER,
            "channel_linger",
            "float (s)",
            rules.SECONDS,
            "how long a channel that holds no message, has no subscriber and is not asked for "
            "stays known to the broker before it is forgotten (a later message on it still gets "
            "a greater id)",
            float,
        ),
        _field(
            _BROKER,
            "events_queue_bytes",
            "int",
            rules.BYTES_OR_OFF,
            "bytes of large messages (16 KiB and more) the broker's events socket may hold "
            "for slow edges; beyond it large messages reach edges through their refill from "
            "the broker's snapshot, not live; `0` lifts the bound",
            int,
        ),
        _field(
            _BROKER,
            "idempotency_window",
            "float (s)",
            rules.SECONDS,
            "how long the broker remembers an HTTP publish's `Idempotency-Key`: a retry with "
            "the same key on the same channel within it is answered as the first was and not "
            "published again",
            float,
        ),
        _field(
            _BROKER,
            "idempotency_keys",
            "int",
            rules.COUNT,
            "idempotency keys the broker remembers at most; beyond it the oldest are forgotten "
            "before their window ends",
            int,
        ),
        _field(
            _EDGE,
            "passthrough_secret",
            "str or None",
            rules.PASSTHROUGH_SECRET,
            "sent by edges in `X-Passthrough-Secret`; the passthrough view admits a caller "
            "holding it from any address; `None`: one derived from `SECRET_KEY`",
            _text_or_none,
        ),
        _field(
            _EDGE,
            "passthrough_timeout",
            "float (s)",
            rules.SECONDS,
            "how long an edge waits for the passthrough view before counting the call as failed",
            float,
        ),
        _field(
            _EDGE,
            "passthrough_concurrency",
            "int",
            rules.COUNT,
            "passthrough calls an edge has in flight at once; beyond it calls are dropped, "
            "counted and logged",
            int,
        ),
        _field(
            _EDGE,
            "forwarded_allow_ips",
            "list of CIDR",
            rules.FORWARDED_ALLOW_IPS,
            "peers (your balancers) whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP` headers "
            "reach the passthrough view, and by whose reported client address the publisher "
            "location and the metrics judge a request; from any other peer the edge writes "
            "its own",
            strings,
        ),
        _field(
            _EDGE,
            "signed_url_secrets",
            "list of str",
            rules.SIGNED_URL_SECRETS,
            "secrets of signed channel URLs: the first signs, every one is accepted (rotation)",
            strings,
        ),
        Setting(
            "signed_url_lifetime",
            "float (s)",
            3600.0,
            rules.SECONDS,
            "how long a signed URL from `{% channel_url %}` opens its channel",
            convert=float,
        ),
    ),
    IGNORED_KEYS,
)

# Beside the dict, as in the original.
IGNORE_ERRORS = Setting(
    "PUSH_SERVER_IGNORE_ERRORS",
    "bool",
    False,
    rules.IGNORE_ERRORS_FLAG,
    "makes every `send_update` behave as if `ignore_errors=True`",
    convert=bool,
)
