"""The broker's configuration, built once by whoever starts it.

The defaults written here are also the PUSH_SERVER defaults of the keys
that fill these fields: `pushserver.schema` reads them from a default
instance, so this module stays free of Django and is the one place they
are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.curve import ServerFiles

DEFAULT_INGRESS = "tcp://127.0.0.1:5560"
DEFAULT_EVENTS = "tcp://127.0.0.1:5561"
DEFAULT_CONTROL = "tcp://127.0.0.1:5562"
# The largest body a message may have, by HTTP and by send_update; the broker
# and edges derive the largest frame they take from it (`broker.sockets`).
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_MESSAGES = 100
# Seconds a standby pair's broker may be silent before its peer may be voted active.
DEFAULT_FAILOVER_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where the broker binds and how much history it keeps.

    Endpoints are ZeroMQ addresses; a port of ``*`` binds an ephemeral
    port, which the broker reports once it is listening.
    """

    ingress: str = DEFAULT_INGRESS
    events: str = DEFAULT_EVENTS
    control: str = DEFAULT_CONTROL
    max_messages: int = DEFAULT_MAX_MESSAGES
    min_messages: int = 0
    # Seconds a message is kept; 0 keeps it until `max_messages` pushes it out.
    message_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    # How often the broker looks for channels that went quiet since they were
    # published to and repeats their newest id (`broker.trailing`), so an edge
    # that lost the last message of a burst notices without waiting for the
    # next message.
    sync_interval: float = 0.5
    # An edge that has not reported its subscribers for this long is gone.
    presence_timeout: float = 5.0
    # Seconds a channel that holds no message, has no subscriber on any edge
    # and is not asked for is kept before the broker forgets it.
    channel_linger: float = 60.0
    # Outgoing queue per edge on the events socket; 0 means unbounded.
    events_sndhwm: int = 100_000
    # Bytes of large bodies (16 KiB and more) the events socket may hold for
    # edges at once; beyond it they reach edges through snapshots (see
    # broker/inflight.py). 0 means no byte bound.
    events_queue_bytes: int = 64 * 1024 * 1024
    history_file: Path | None = None
    # Seconds a publish's idempotency key is remembered, and how many keys at most.
    idempotency_window: float = 60.0
    idempotency_keys: int = 100_000
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # CURVE on every port, with allow-lists (`broker.curve`); None leaves the ports open.
    curve: ServerFiles | None = None
    # `host:port` of a Prometheus endpoint with the broker's refusals and dropped
    # frames; None serves none.
    metrics: str | None = None
    # A standby pair (`broker.pair`): where this broker binds the link to its peer and
    # where the peer's is. None for both: a broker alone, as without `standby`.
    peer_bind: str | None = None
    peer_connect: str | None = None
    # This broker is the pair's backup (`runpushserver --standby`), not its primary.
    backup: bool = False
    failover_timeout: float = DEFAULT_FAILOVER_TIMEOUT

    @property
    def paired(self) -> bool:
        return self.peer_bind is not None and self.peer_connect is not None
