"""A paired broker's link to its peer: heartbeats, batches, copies, confirmations, the vote.

The rules are `broker.pair`'s (who is active) and `broker.replication`'s
(what goes to the standby and when acks may leave); this module carries
them over one DEALER to the peer's ROUTER and one ROUTER from it, and
tells the broker (`broker.server`) what follows: hold an action, run
released ones, replace its state with a copy, take over, step down.

The trap is the order after a stall: a broker resumed after SIGSTOP must
not judge its peer gone (and release held acks alone) before reading what
the peer said meanwhile; `tick` notices a loop that did not run and moves
the peer's deadline past it (`Pair.stalled`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from broker import curve, wire
from broker.config import BrokerConfig
from broker.history import state_records
from broker.pair import Pair, PeerStatus, Role, State, Transition
from broker.replication import Backup, Replica, Replication, Verdict, frames_of
from broker.sockets import configure_heartbeats

if TYPE_CHECKING:
    from broker.server import Broker

log = logging.getLogger("pushserver.broker")

# An action held back until the standby confirms: ("e", event frames),
# ("i", [(route, frames), ...]) for the ingress, ("c", frames) for the control port.
Action = tuple[str, Any]
# A copy asked for again at most this often (seconds).
COPY_RETRY = 1.0
# Peer messages queued at most on the link; a batch dropped beyond it costs a copy.
PEER_SNDHWM = 100_000
# While this many batches await confirmation, the open batch keeps filling (up to
# `BATCH_RECORDS`) instead of being sent: under load batches grow to what one round
# trip to the standby carries, so the pair's cost per message stays that of a batch.
MAX_IN_FLIGHT = 2
BATCH_RECORDS = 2_000
# A joined standby that leaves a batch unconfirmed for this share of
# `failover_timeout` is dropped and its held acks go out. Clients try the
# other broker after a third of it without an ack, and one that reaches the
# backup once its peer has been silent for all of it makes it active: with
# only the link between the brokers broken, held acks that waited the whole
# timeout would make that second active broker themselves.
CONFIRM_SHARE = 0.5


class Standby:
    def __init__(self, broker: Broker, config: BrokerConfig) -> None:
        self.broker = broker
        self.config = config
        role = Role.BACKUP if config.backup else Role.PRIMARY
        self.pair = Pair(role, config.failover_timeout)
        self.replication: Replication[Action] = self._replication()
        self.replica = Replica(COPY_RETRY)
        self._router: zmq.asyncio.Socket | None = None
        self._dealer: zmq.Socket[bytes] | None = None
        self._dealer_owner: zmq.asyncio.Socket | None = None
        self._last_tick = time.monotonic()
        self._degraded_told = False
        self._figures: dict[str, tuple[str, float]] = {}
        self._measure()

    def _replication(self) -> Replication[Action]:
        return Replication(self.config.failover_timeout * CONFIRM_SHARE)

    # -- sockets -------------------------------------------------------------

    def bind(self, context: zmq.asyncio.Context, keys: curve.ServerKeys | None) -> str:
        config = self.config
        assert config.peer_bind is not None and config.peer_connect is not None
        router = context.socket(zmq.ROUTER)
        configure_heartbeats(router)
        router.setsockopt(zmq.LINGER, 0)
        owner = context.socket(zmq.DEALER)
        self._dealer_owner = owner
        # Sent on through a plain shadow: nothing here awaits a send.
        dealer: zmq.Socket[bytes] = zmq.Socket.shadow(owner.underlying)
        configure_heartbeats(dealer)
        dealer.setsockopt(zmq.LINGER, 0)
        # Nothing queued for a peer that is not there: a heartbeat or a batch
        # that waited would be stale when it arrived.
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
        if keys is not None:
            curve.apply_server(router, keys, curve.PEER)
            curve.apply_client(dealer, curve.peer_client_keys(keys))
        router.bind(config.peer_bind)
        dealer.connect(config.peer_connect)
        self._router, self._dealer = router, dealer
        return router.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def router(self) -> zmq.asyncio.Socket:
        assert self._router is not None
        return self._router

    def _send(
        self, kind: str, number: int = 0, records: tuple[bytes, ...] = (), follows: int = 0
    ) -> None:
        pair = self.pair
        message = wire.PeerMessage(
            kind,
            pair.role.value,
            pair.state.value,
            pair.epoch,
            pair.synced,
            number,
            follows,
            records,
            self.replication.counts_peer,
        )
        assert self._dealer is not None
        try:
            self._dealer.send_multipart(wire.encode_peer(message), zmq.NOBLOCK)
        except zmq.Again:
            self.broker.counters["peer_dropped"] += 1

    # -- what the broker asks ------------------------------------------------

    @property
    def active(self) -> bool:
        return self.pair.active

    def serves(self) -> bool:
        """A client came: whether this broker serves it (the vote may make it active)."""
        if self.pair.active:
            return True
        serves, transition = self.pair.on_client()
        if transition is not None:
            self._changed(transition)
        return serves

    def record(self, packed: bytes) -> None:
        self.replication.record(packed)

    def hold(self, action: Action) -> bool:
        return self.pair.active and self.replication.hold(action)

    def close_batch(self, force: bool = False) -> None:
        """Send what the open batch holds; run what it released. Unless `force`d, a batch
        waits while others are in flight and it is still small."""
        if not self.pair.active:
            return
        replication = self.replication
        if (
            not force
            and replication.in_flight >= MAX_IN_FLIGHT
            and replication.open_records < BATCH_RECORDS
        ):
            return
        batch = replication.close()
        if batch is not None:
            self._send(wire.PEER_BATCH, batch.number, tuple(frames_of(batch.records)))
        released = self.replication.take_released()
        if released:
            self.broker.run_actions(released)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick > self.config.failover_timeout / 2:
            log.warning("this broker did not run for %.1f s", now - self._last_tick)
            self.pair.stalled()
        self._last_tick = now
        pair, replication = self.pair, self.replication
        if pair.active:
            self.close_batch(force=True)
            if replication.backup is not Backup.ABSENT and (
                pair.peer_silent() or replication.overdue()
            ):
                log.warning(
                    "the standby broker at %s is gone; serving alone (degraded)",
                    self.config.peer_connect,
                )
                self.broker.counters["standby_lost"] += 1
                self.broker.run_actions(replication.lost())
            if replication.degraded and not self._degraded_told:
                self._degraded_told = True
                log.warning("degraded: acknowledging with no standby holding a copy")
        else:
            peer = pair.peer
            if (
                peer is not None
                and peer.state is State.ACTIVE
                and not pair.peer_silent()
                and self.replica.wants_copy()
            ):
                self._send(wire.PEER_WANT_COPY)
        self._send(wire.PEER_HEARTBEAT)
        self._measure()

    def metrics(self) -> dict[str, tuple[str, float]]:
        """The pair's figures as the last tick saw them (read from the metrics thread)."""
        return self._figures

    def _measure(self) -> None:
        pair = self.pair
        batches, age = self.replication.lag() if pair.active else (0, 0.0)
        self._figures = {
            "pushserver_broker_pair_active": (
                "1 while this broker is its pair's active one, 0 while passive or waiting.",
                1.0 if pair.active else 0.0,
            ),
            "pushserver_broker_pair_primary": (
                "1 for the pair's primary, 0 for its backup.",
                1.0 if pair.role is Role.PRIMARY else 0.0,
            ),
            "pushserver_broker_pair_epoch": (
                "The epoch this broker is (or was last) active in.",
                float(pair.epoch),
            ),
            "pushserver_broker_pair_degraded": (
                "1 while active with no standby holding a copy (acks on one copy).",
                1.0 if pair.active and self.replication.degraded else 0.0,
            ),
            "pushserver_broker_pair_synced": (
                "1 while passive with a complete replica of the active broker's state.",
                1.0 if pair.synced else 0.0,
            ),
            "pushserver_broker_replication_lag_batches": (
                "Batches sent to the standby and not yet confirmed.",
                float(batches),
            ),
            "pushserver_broker_replication_lag_seconds": (
                "Age of the oldest batch the standby has not confirmed.",
                age,
            ),
            "pushserver_broker_failovers_total": (
                "Times this broker took over from a silent peer by a client's vote.",
                float(pair.failovers),
            ),
        }

    # -- what the peer says --------------------------------------------------

    def on_peer(self, frames: list[bytes]) -> None:
        # The link's port is open to whoever reaches it (CURVE off): what it says
        # wrong is told as any port's, a few times a minute.
        if len(frames) < 2:
            self.broker.drop_malformed(curve.PEER, wire.WireError("no routing frame"))
            return
        try:
            message = wire.decode_peer(frames[1:])
        except wire.WireError as error:
            self.broker.drop_malformed(curve.PEER, error)
            return
        status = PeerStatus(Role(message.role), State(message.state), message.epoch, message.synced)
        transition = self.pair.on_peer(status)
        if transition is not None:
            self._changed(transition)
        if self._following(message) and self.replica.on_active(message.counts_peer):
            log.warning(
                "the active broker (epoch %d) went on without this replica; copying again",
                message.epoch,
            )
            self._copy_again()
        handle: Callable[[wire.PeerMessage], None] | None = {
            wire.PEER_BATCH: self._on_batch,
            wire.PEER_COPY: self._on_copy,
            wire.PEER_CONFIRM: self._on_confirm,
            wire.PEER_WANT_COPY: self._on_want_copy,
        }.get(message.kind)
        if handle is not None:
            handle(message)

    def _following(self, message: wire.PeerMessage) -> bool:
        pair = self.pair
        return (
            not pair.active
            and message.state == State.ACTIVE.value
            and message.epoch >= pair.newest_epoch
        )

    def _on_batch(self, message: wire.PeerMessage) -> None:
        if not self._following(message):
            return
        verdict = self.replica.on_batch(message.epoch, message.number)
        if verdict is Verdict.APPLY:
            self.broker.apply_replicated(message.records)
            self._confirm()
        elif verdict is Verdict.OLD:
            self._confirm()
        else:
            self._copy_again()

    def _copy_again(self) -> None:
        """The replica is not whole (a batch missing, or dropped by the active broker)."""
        self.pair.synced = False
        if self.replica.wants_copy():
            self._send(wire.PEER_WANT_COPY)

    def _on_copy(self, message: wire.PeerMessage) -> None:
        if not self._following(message):
            return
        self.broker.load_copy(message.records)
        self.replica.on_copy(message.epoch, message.number)
        self.pair.synced = True
        log.info(
            "copied the active broker's state (epoch %d, batch %d): %d channels",
            message.epoch,
            message.number,
            len(self.broker.sequencer),
        )
        self._confirm()

    def _confirm(self) -> None:
        applied = self.replica.applied
        if applied is not None:
            self._send(wire.PEER_CONFIRM, applied, follows=self.replica.epoch)

    def _on_confirm(self, message: wire.PeerMessage) -> None:
        if not self.pair.active or message.follows != self.pair.epoch:
            return
        was_degraded = self.replication.degraded
        released = self.replication.confirmed(message.number)
        if was_degraded and not self.replication.degraded:
            log.info("the standby broker holds a replica; acks wait for its copy")
            self._degraded_told = False
        if released:
            self.broker.run_actions(released)
        # What filled meanwhile goes now.
        self.close_batch()

    def _on_want_copy(self, message: wire.PeerMessage) -> None:
        if not self.pair.active:
            return
        self.close_batch(force=True)
        number, released = self.replication.begin_copy()
        if released:
            self.broker.run_actions(released)
        broker = self.broker
        records = state_records(broker.sequencer, broker.publishers, broker.keys)
        self._send(wire.PEER_COPY, number, tuple(frames_of(records)))
        log.info("sent the standby broker a copy standing at batch %d", number)

    # -- transitions ---------------------------------------------------------

    def _changed(self, transition: Transition) -> None:
        log.warning(
            "%s broker: %s -> %s (%s), epoch %d",
            self.pair.role.value,
            transition.before.value,
            transition.after.value,
            transition.reason,
            self.pair.epoch,
        )
        if transition.after is State.ACTIVE:
            self.replica.reset()
            # Held actions of an older activity are void; a new epoch starts afresh.
            self.replication = self._replication()
            self._degraded_told = False
            self.broker.took_over()
        elif transition.before is State.ACTIVE:
            # What was held was never confirmed: its publishers send it again to the
            # active broker, and nothing of it left this one.
            self.replication = self._replication()
            self.replica.reset()
            self.broker.stepped_down()
        self._send(wire.PEER_HEARTBEAT)

    def close(self) -> None:
        if self._dealer_owner is not None:
            self._dealer_owner.close(linger=0)
            self._dealer_owner = self._dealer = None
