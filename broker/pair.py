"""Which broker of a standby pair is active: the Binary Star state machine, with epochs.

A pair is a primary and a backup (the ZeroMQ guide, chapter 4). Each
starts *waiting*, tells the other its role, state and epoch a few times per
failover timeout, and ends up *active* (sequences, serves, replicates) or
*passive* (keeps a replica, refuses clients). Pure bookkeeping with an
injected clock, so every transition is tested without sockets; the sockets
are `broker.server`'s.

The rules, Binary Star's with two changes:

* failover by vote: a passive (or waiting) broker becomes active only when
  its peer has been silent for `failover_timeout` *and* a client (a
  publisher, an edge) came to it. A broken link between the two brokers
  alone leaves the clients with the active one, so it never makes two
  actives;
* epochs instead of aborting: each activation starts an epoch strictly
  greater than any the broker has seen (and, being read from the wall
  clock in milliseconds, than any a restarted pair had). Where Binary Star
  aborts on seeing two actives, the one with the older epoch steps down to
  passive and copies the other's state; clients never accept an older epoch
  once they saw a newer one (`broker.choice`).

The trap is a broker that was frozen (SIGSTOP, a VM paused) rather than
dead: resumed, everything it knew is stale, yet its clock says its peer has
been silent for a long time. `stalled` moves the peer's deadline past the
stall, so a resumed broker hears its peer again before it judges it gone.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class Role(enum.Enum):
    PRIMARY = "primary"
    BACKUP = "backup"


class State(enum.Enum):
    # Started, has not yet heard the peer nor been voted active.
    WAITING = "waiting"
    ACTIVE = "active"
    PASSIVE = "passive"


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a broker tells its peer about itself on every message between them."""

    role: Role
    state: State
    epoch: int
    # A passive broker that holds a complete replica of the active one's state.
    synced: bool


@dataclass(frozen=True, slots=True)
class Transition:
    before: State
    after: State
    reason: str


def _rank(epoch: int, role: Role) -> tuple[int, bool]:
    # Two activations in the same millisecond with the same newest epoch seen
    # tie; the primary's wins, so exactly one of the two steps down.
    return (epoch, role is Role.PRIMARY)


class Pair:
    """One broker's view of its pair.

    >>> pair = Pair(Role.BACKUP, failover_timeout=2.0)
    >>> pair.on_peer(PeerStatus(Role.PRIMARY, State.ACTIVE, 1, False)).after
    <State.PASSIVE: 'passive'>
    """

    def __init__(
        self,
        role: Role,
        failover_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.role = role
        self.failover_timeout = failover_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self.state = State.WAITING
        # The epoch this broker is active in, or was last active in; 0 never.
        self.epoch = 0
        # The newest epoch seen anywhere: its own, its peer's, a client's.
        self.newest_epoch = 0
        # A passive broker's replica is complete (set by the replication).
        self.synced = False
        self.peer: PeerStatus | None = None
        # Silent peer from this time on: counted from start, so a broker
        # started alone waits a failover timeout before a client may vote it in.
        self._peer_expiry = clock() + failover_timeout
        # Passive (or waiting) brokers voted active while their peer was silent.
        self.failovers = 0

    @property
    def active(self) -> bool:
        return self.state is State.ACTIVE

    def status(self) -> PeerStatus:
        return PeerStatus(self.role, self.state, self.epoch, self.synced)

    def peer_silent(self) -> bool:
        """The peer has not been heard for `failover_timeout`."""
        return self._clock() >= self._peer_expiry

    def stalled(self) -> None:
        """This broker did not run for a while (frozen, paused): whatever it knew of its
        peer is stale, so it waits a whole failover timeout to hear it again."""
        self._peer_expiry = max(self._peer_expiry, self._clock() + self.failover_timeout)

    def saw_epoch(self, epoch: int) -> Transition | None:
        """An epoch seen in a client's or a peer's message; an active broker that learns of
        a newer one steps down."""
        self.newest_epoch = max(self.newest_epoch, epoch)
        if self.state is State.ACTIVE and epoch > self.epoch:
            return self._step_down(f"epoch {epoch} is newer than this broker's {self.epoch}")
        return None

    def on_peer(self, peer: PeerStatus) -> Transition | None:
        """The peer's status arrived (a heartbeat, a batch, a confirmation)."""
        self.peer = peer
        self._peer_expiry = self._clock() + self.failover_timeout
        self.newest_epoch = max(self.newest_epoch, peer.epoch)
        state = self.state
        if state is State.ACTIVE:
            if peer.state is State.ACTIVE and _rank(peer.epoch, peer.role) > _rank(
                self.epoch, self.role
            ):
                return self._step_down(f"the peer is active in epoch {peer.epoch}")
            return None
        if peer.state is State.ACTIVE:
            if state is State.WAITING:
                return self._become(State.PASSIVE, "the peer is active")
            return None
        if state is State.WAITING:
            if peer.state is State.WAITING and self.role is Role.PRIMARY:
                return self._activate("the pair starts; the primary serves")
            if peer.state is State.PASSIVE and not peer.synced:
                # Its replica is incomplete: this broker's own history is the better copy.
                return self._activate("the peer is passive without a complete replica")
            return None
        # Passive, the peer not active.
        if peer.state is State.WAITING and self.synced:
            return self._activate("the peer restarted; this broker holds the replica")
        if peer.state is State.PASSIVE and (
            (self.synced and not peer.synced)
            or (self.synced == peer.synced and self.role is Role.PRIMARY)
        ):
            return self._activate("both brokers were passive")
        return None

    def on_client(self) -> tuple[bool, Transition | None]:
        """A client (publisher or edge) came to this broker: the vote. Returns whether the
        broker serves it, and the transition the vote caused, if any."""
        if self.state is State.ACTIVE:
            return True, None
        if not self.peer_silent():
            return False, None
        if self.state is State.PASSIVE:
            self.failovers += 1
        return True, self._activate("the peer is silent and a client came")

    def _activate(self, reason: str) -> Transition:
        # Strictly greater than any epoch seen, and than any a previous run of the
        # pair can have had (the wall clock, in milliseconds).
        epoch = max(self.newest_epoch + 1, int(self._wall_clock() * 1000))
        self.epoch = self.newest_epoch = epoch
        return self._become(State.ACTIVE, reason)

    def _step_down(self, reason: str) -> Transition:
        self.synced = False
        return self._become(State.PASSIVE, reason)

    def _become(self, state: State, reason: str) -> Transition:
        before, self.state = self.state, state
        return Transition(before, state, reason)
