"""The standby pair's state machine and the clients' choice of broker, with the clocks in
the test's hands: the vote, epochs, a frozen broker's return, a broken link between the two."""

from __future__ import annotations

import msgpack
import pytest

from broker import wire
from broker.choice import Choice
from broker.pair import Pair, PeerStatus, Role, State
from broker.replication import Replication
from broker.standby import CONFIRM_SHARE
from tests.clock import Clock

TIMEOUT = 2.0


def pair(role: Role, clock: Clock, wall: Clock | None = None) -> Pair:
    return Pair(role, TIMEOUT, clock, wall or Clock(1_000.0))


def started(clock: Clock) -> tuple[Pair, Pair]:
    """A primary and a backup that heard each other: active and passive."""
    primary, backup = pair(Role.PRIMARY, clock), pair(Role.BACKUP, clock)
    primary.on_peer(backup.status())
    backup.on_peer(primary.status())
    assert (primary.state, backup.state) == (State.ACTIVE, State.PASSIVE)
    return primary, backup


def test_a_pair_starting_together_makes_the_primary_active_and_the_backup_passive(
    clock: Clock,
) -> None:
    primary, backup = started(clock)
    assert primary.epoch > 0
    assert backup.newest_epoch == primary.epoch


def test_a_backup_starting_beside_an_active_primary_goes_passive(clock: Clock) -> None:
    primary, _ = started(clock)
    late = pair(Role.BACKUP, clock)
    transition = late.on_peer(primary.status())
    assert transition is not None and transition.after is State.PASSIVE


def test_a_waiting_backup_does_not_take_over_from_a_waiting_primary(clock: Clock) -> None:
    primary, backup = pair(Role.PRIMARY, clock), pair(Role.BACKUP, clock)
    assert backup.on_peer(primary.status()) is None
    assert backup.state is State.WAITING


def test_the_passive_backup_refuses_clients_while_the_primary_is_heard(clock: Clock) -> None:
    primary, backup = started(clock)
    clock.now += TIMEOUT - 0.1
    serves, transition = backup.on_client()
    assert not serves and transition is None
    assert backup.state is State.PASSIVE


def test_the_passive_backup_takes_over_when_the_primary_is_silent_and_a_client_comes(
    clock: Clock,
) -> None:
    primary, backup = started(clock)
    clock.now += TIMEOUT
    serves, transition = backup.on_client()
    assert serves and transition is not None and transition.after is State.ACTIVE
    assert backup.epoch > primary.epoch
    assert backup.failovers == 1


def test_a_silent_primary_alone_does_not_make_the_backup_active(clock: Clock) -> None:
    _, backup = started(clock)
    clock.now += 10 * TIMEOUT
    assert backup.peer_silent()
    assert backup.state is State.PASSIVE


def test_a_broken_link_between_the_brokers_alone_never_makes_two_actives(clock: Clock) -> None:
    primary, backup = started(clock)
    # The link breaks: neither hears the other; clients keep reaching the primary,
    # and one that tries the backup is refused while it still hears the primary.
    for _ in range(10):
        clock.now += TIMEOUT / 2
        assert primary.on_client() == (True, None)
    assert backup.peer_silent() and primary.peer_silent()
    assert primary.state is State.ACTIVE and backup.state is State.PASSIVE


def cut_off_under_load(clock: Clock, tick_phase: float, client_phase: float) -> list[str]:
    """A pair whose link breaks just after the active broker sent a batch, and a client
    waiting for that batch's ack; the broker ticks every `TIMEOUT / 6` (its longest tick)
    from `tick_phase`, the client last heard it `client_phase` before the break. Returns
    the acks released; fails if the client voted the backup in."""
    primary, backup = started(clock)
    replication: Replication[str] = Replication(TIMEOUT * CONFIRM_SHARE, clock)
    number, _ = replication.begin_copy()
    replication.confirmed(number)
    start = clock.now
    clock.now -= client_phase
    client = Choice(2, TIMEOUT / 3, clock)
    clock.now = start
    replication.record(b"m")
    assert replication.hold("ack")
    replication.close()
    released: list[str] = []
    next_tick = start + tick_phase
    while clock.now < start + 3 * TIMEOUT:
        clock.now += 0.01
        if clock.now >= next_tick:
            next_tick += TIMEOUT / 6
            if replication.overdue():
                released += replication.lost()
        if client.current == 1:
            serves, _ = backup.on_client()
            assert not serves, f"the backup was voted active {clock.now - start:.2f} s in"
            client.refused(1)
        elif released:
            client.heard(0, active=True, epoch=primary.epoch)
        else:
            client.silent()
    assert backup.state is State.PASSIVE and client.current == 0
    return released


@pytest.mark.parametrize("tick_phase", [TIMEOUT / 6 * n / 4 for n in range(4)])
@pytest.mark.parametrize("client_phase", [TIMEOUT / 3 * n / 4 for n in range(4)])
def test_a_broken_link_releases_the_acks_held_for_the_standby_before_a_client_could_vote(
    clock: Clock, tick_phase: float, client_phase: float
) -> None:
    """The active broker holds each ack until its standby confirms; with only the link
    between the two broken, a client without acks tries the backup every third of the
    failover timeout, and one that reaches it after the whole timeout makes it active."""
    assert cut_off_under_load(clock, tick_phase, client_phase) == ["ack"]


def test_a_client_that_tries_the_backup_during_a_mere_hiccup_is_refused(clock: Clock) -> None:
    primary, backup = started(clock)
    clock.now += TIMEOUT / 2
    backup.on_peer(primary.status())
    clock.now += TIMEOUT / 2
    assert backup.on_client() == (False, None)


def test_a_frozen_active_broker_steps_down_on_hearing_the_newer_epoch(clock: Clock) -> None:
    primary, backup = started(clock)
    primary.synced = True
    clock.now += TIMEOUT + 5  # the primary is stopped (SIGSTOP)
    backup.on_client()
    assert backup.active
    # The primary resumes: its last word on the peer is long stale.
    primary.stalled()
    assert not primary.peer_silent()
    transition = primary.on_peer(backup.status())
    assert transition is not None and transition.after is State.PASSIVE
    assert not primary.synced  # must copy the new active's state
    assert backup.on_peer(primary.status()) is None
    assert backup.active


def test_an_active_broker_ignores_an_older_active_peer_which_steps_down(clock: Clock) -> None:
    primary, backup = started(clock)
    clock.now += TIMEOUT
    backup.on_client()
    assert backup.on_peer(primary.status()) is None
    assert backup.active


def test_an_active_broker_that_learns_of_a_newer_epoch_from_a_client_steps_down(
    clock: Clock,
) -> None:
    primary, _ = started(clock)
    transition = primary.saw_epoch(primary.epoch + 1)
    assert transition is not None and transition.after is State.PASSIVE


def test_two_activations_in_one_millisecond_leave_the_primary_active(clock: Clock) -> None:
    wall = Clock(1_000.0)
    primary, backup = pair(Role.PRIMARY, clock, wall), pair(Role.BACKUP, clock, wall)
    clock.now += TIMEOUT
    primary.on_client()
    backup.on_client()
    assert primary.epoch == backup.epoch
    assert backup.on_peer(primary.status()) is not None
    assert primary.on_peer(backup.status()) is None
    assert primary.active and not backup.active


def test_epochs_only_increase_even_when_the_wall_clock_steps_back(clock: Clock) -> None:
    wall = Clock(2_000.0)
    primary, backup = pair(Role.PRIMARY, clock, wall), pair(Role.BACKUP, clock, wall)
    primary.on_peer(backup.status())
    backup.on_peer(primary.status())
    first = primary.epoch
    wall.now = 1_000.0
    clock.now += TIMEOUT
    backup.on_client()
    assert backup.epoch > first


def test_a_synced_passive_takes_over_when_its_restarted_peer_is_waiting(clock: Clock) -> None:
    primary, backup = started(clock)
    backup.synced = True
    restarted = pair(Role.PRIMARY, clock)
    transition = backup.on_peer(restarted.status())
    assert transition is not None and transition.after is State.ACTIVE
    assert restarted.on_peer(backup.status()) is not None
    assert restarted.state is State.PASSIVE


def test_a_waiting_broker_takes_over_from_a_passive_peer_without_a_replica(clock: Clock) -> None:
    lonely_passive = PeerStatus(Role.BACKUP, State.PASSIVE, 5, synced=False)
    primary = pair(Role.PRIMARY, clock)
    transition = primary.on_peer(lonely_passive)
    assert transition is not None and transition.after is State.ACTIVE
    assert primary.epoch > 5


def test_a_broker_started_alone_serves_once_its_peer_was_silent_for_the_timeout(
    clock: Clock,
) -> None:
    primary = pair(Role.PRIMARY, clock)
    assert primary.on_client() == (False, None)
    clock.now += TIMEOUT
    serves, transition = primary.on_client()
    assert serves and transition is not None and primary.active
    assert primary.failovers == 0  # a start, not a failover


# -- the clients' choice ---------------------------------------------------------


def test_a_client_starts_with_the_primary_and_moves_to_an_active_backup(clock: Clock) -> None:
    choice = Choice(2, TIMEOUT, clock)
    assert choice.current == 0
    assert choice.heard(1, active=False, epoch=3)
    assert choice.current == 0
    assert choice.heard(1, active=True, epoch=4)
    assert choice.current == 1 and choice.accepts(1) and not choice.accepts(0)


def test_a_client_refuses_an_older_epoch_once_it_saw_a_newer_one(clock: Clock) -> None:
    choice = Choice(2, TIMEOUT, clock)
    choice.heard(0, active=True, epoch=5)
    choice.heard(1, active=True, epoch=9)
    # The old active comes back, still saying active in its epoch.
    assert not choice.heard(0, active=True, epoch=5)
    assert choice.current == 1


def test_a_client_moves_on_when_told_the_broker_is_not_active(clock: Clock) -> None:
    choice = Choice(2, TIMEOUT, clock)
    assert choice.refused(0)
    assert choice.current == 1
    assert not choice.refused(0)  # an old word from the one it left


def test_a_client_votes_by_moving_to_the_other_broker_after_silence(clock: Clock) -> None:
    choice = Choice(2, TIMEOUT, clock)
    clock.now += TIMEOUT - 0.1
    assert not choice.silent()
    choice.heard(0, active=True, epoch=1)
    clock.now += TIMEOUT - 0.1
    assert not choice.silent()
    clock.now += 0.2
    assert choice.silent()
    assert choice.current == 1
    clock.now += TIMEOUT
    assert choice.silent()  # and back again, until one answers
    assert choice.current == 0


def test_a_client_of_a_single_broker_never_moves(clock: Clock) -> None:
    choice = Choice(1, TIMEOUT, clock)
    clock.now += 10 * TIMEOUT
    assert not choice.silent() and not choice.refused(0)
    assert choice.current == 0


# -- what the pair says on the wire ----------------------------------------------


def test_a_peer_message_carries_its_senders_status_and_its_records() -> None:
    message = wire.PeerMessage(
        wire.PEER_BATCH, "primary", "active", 1_700_000_000_000, False, 7, 0, (b"r1", b"r2")
    )
    assert wire.decode_peer(wire.encode_peer(message)) == message


def test_an_active_brokers_message_says_whether_it_still_counts_its_standby() -> None:
    dropped = wire.PeerMessage(
        wire.PEER_HEARTBEAT, "primary", "active", 5, False, counts_peer=False
    )
    assert not wire.decode_peer(wire.encode_peer(dropped)).counts_peer
    # A peer that never says (an older release) is taken as counting, as it always was.
    header = {"v": wire.VERSION, "k": "hb", "r": "primary", "s": "active", "e": 5, "n": 0}
    assert wire.decode_peer([msgpack.packb(header)]).counts_peer


@pytest.mark.parametrize(
    "header",
    [
        {"v": wire.VERSION, "k": "batch", "r": "primary", "s": "active", "e": "1", "n": 1},
        {"v": wire.VERSION, "k": "nonsense", "r": "primary", "s": "active", "e": 1, "n": 1},
        {"v": wire.VERSION, "k": "hb", "r": "tertiary", "s": "active", "e": 1, "n": 1},
        {"v": wire.VERSION, "k": "hb", "r": "primary", "s": "dormant", "e": 1, "n": 1},
    ],
)
def test_a_peer_header_without_a_known_kind_role_state_or_whole_epoch_is_refused(
    header: dict[str, object],
) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_peer([msgpack.packb(header)])


def test_a_passive_brokers_refusal_and_an_acks_epoch_reach_the_publisher() -> None:
    assert wire.decode_answer(wire.encode_not_active(wire.NotActive(5))) == wire.NotActive(5)
    ack = wire.Ack(b"p" * 16, 3, False, 1_700_000_000_000)
    assert wire.decode_answer(wire.encode_ack(ack)) == ack


def test_a_heartbeat_says_whether_its_broker_is_active_and_in_which_epoch() -> None:
    heartbeat = wire.Heartbeat("run", 1.5, False, 42)
    assert wire.decode_event(wire.encode_heartbeat(heartbeat)) == heartbeat
    alone = wire.Heartbeat("run", 1.5)
    # A broker without a pair sends the heartbeat it always sent.
    assert b"\xa1n" not in wire.encode_heartbeat(alone)[1]
    assert wire.decode_event(wire.encode_heartbeat(alone)) == alone
