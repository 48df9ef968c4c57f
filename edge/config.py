"""The edge's configuration, built once by whoever starts it.

The defaults written here are also the PUSH_SERVER defaults of the keys
that fill these fields: `pushserver.schema` reads them from a default
instance, so this module stays free of Django and is the one place they
are written.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.config import (
    DEFAULT_CONTROL,
    DEFAULT_EVENTS,
    DEFAULT_FAILOVER_TIMEOUT,
    DEFAULT_INGRESS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_MESSAGES,
)
from broker.curve import ClientFiles

LONG_POLL = "long"
INTERVAL_POLL = "interval"
LOOPBACK = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class SubscriberLocation:
    # A regular expression with one group, the channel id.
    url: str = r"/updates/([^/]+)"
    polling: str = LONG_POLL
    create_on_get: bool = True
    # Origins allowed by CORS; ("*",) allows any.
    allow_origin: tuple[str, ...] = ("*",)
    allow_credentials: bool = False
    # Django's passthrough URL, called on each subscribe and unsubscribe.
    passthrough: str | None = None
    # Seconds an unsubscribe waits for the same client to poll again; a
    # re-poll within it fires neither the unsubscribe nor a new subscribe.
    passthrough_grace: float = 0.0
    # Hold a poll only once Django's passthrough view admitted the client.
    authorize: bool = False
    # Seconds an admission is remembered per client and channel.
    authorize_cache: float = 60.0
    # Hold a poll only with a token (`edge.signing`) for its channel in the
    # query string, checked here without Django.
    signed: bool = False
    # EventSource streams (`edge.stream`): seconds between comment lines that keep
    # an idle stream from a balancer's read timeout (60 s in ops/), well under it.
    stream_keepalive: float = 15.0
    # The reconnection delay a stream tells EventSource (`retry:`, milliseconds),
    # jittered per stream so the browsers of a dead edge do not return in step.
    stream_retry: int = 3000
    # Bytes of a stream's output its client has not taken, above which the stream
    # is closed rather than queued further: the client resumes from its last id.
    stream_buffer: int = 1024 * 1024
    # Channels one stream may carry (`/updates/a,b,c`).
    stream_max_channels: int = 32


@dataclass(frozen=True, slots=True)
class PublisherLocation:
    url: str = r"/send-update/([^/]+)"
    # Networks (CIDR) whose callers may publish.
    allow_from: tuple[str, ...] = LOOPBACK
    # When set, a caller from outside `allow_from` may still publish with
    # this value in the `X-Push-Secret` header.
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    address: str = "127.0.0.1"
    port: int = 8001
    # Several edge processes on one port (SO_REUSEPORT): the kernel spreads
    # connections over them.
    reuse_port: bool = False
    events: str = DEFAULT_EVENTS
    control: str = DEFAULT_CONTROL
    # Where the publisher location sends HTTP publishes, as send_update does.
    ingress: str = DEFAULT_INGRESS
    # A standby pair's backup broker (`PUSH_SERVER['standby']`); None without one.
    standby_events: str | None = None
    standby_control: str | None = None
    standby_ingress: str | None = None
    failover_timeout: float = DEFAULT_FAILOVER_TIMEOUT
    subscribers: tuple[SubscriberLocation, ...] = (SubscriberLocation(),)
    publishers: tuple[PublisherLocation, ...] = (PublisherLocation(),)
    # Seconds a long-poll is held before 304; below common load-balancer
    # idle timeouts (nginx 60 s, many cloud balancers 30 s and up).
    long_poll_timeout: float = 25.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # The messages a channel holds on the broker (its store's `max_messages`): a
    # snapshot lists them all in one frame, which bounds what the edge takes.
    max_messages: int = DEFAULT_MAX_MESSAGES
    # HTTP publishes the broker has not acknowledged yet, at most; beyond
    # it a publish is answered 503 at once.
    send_queue_size: int = 10_000
    # Seconds a request's head, then its body, may take to arrive, counted from
    # its start and not renewed by each byte: a trickling or silent client
    # cannot hold a connection (or, at `max_connections`, the edge) for longer.
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    # Seconds a channel's topic stays subscribed after its last client left,
    # so a client re-polling after each message does not churn subscriptions.
    topic_linger: float = 30.0
    # Seconds to wait for the broker (a control reply, the first sync of a
    # channel) before answering 503; also the heartbeat silence that marks
    # the broker as away.
    broker_timeout: float = 5.0
    # Receive queue of the events socket; 0 means unbounded. Small values
    # make the edge drop live messages under bursts, which it then refills.
    events_rcvhwm: int = 0
    max_connections: int = 10_000
    cors_max_age: int = 86_400
    # Sent to Django's passthrough view so it trusts edges on other hosts.
    passthrough_secret: str | None = None
    passthrough_timeout: float = 5.0
    # Passthrough calls in flight at once; beyond it calls are dropped and counted.
    passthrough_concurrency: int = 64
    # Peers whose X-Forwarded-*, Forwarded and X-Real-IP headers the passthrough
    # passes on to Django, and behind which the publisher location and the
    # metrics judge the client address reported; from anyone else the edge
    # writes its own. Loopback: the balancer configs in ops/ run on the edge's
    # host and overwrite them.
    forwarded_allow_ips: tuple[str, ...] = LOOPBACK
    # Secrets that verify signed channel URLs; the first is the one Django signs with.
    signed_url_secrets: tuple[str, ...] = ()
    # Prometheus metrics, shown to callers from `metrics_allow_from` only.
    metrics_url: str = "/pushserver/metrics"
    metrics_allow_from: tuple[str, ...] = LOOPBACK
    # CURVE on the links to the broker (`broker.curve`); None connects without it.
    curve: ClientFiles | None = None
