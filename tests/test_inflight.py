"""The bytes of large bodies libzmq holds for the events socket, against their budget."""

from __future__ import annotations

from dataclasses import dataclass

from broker.inflight import InFlight

MIB = 1024 * 1024


@dataclass
class Sent:
    done: bool = False


def test_large_bodies_go_out_until_the_budget_is_held_and_again_once_released() -> None:
    in_flight = InFlight(3 * MIB)
    sent = []
    while in_flight.admits(MIB):
        sent.append(Sent())
        in_flight.sent(sent[-1], MIB)
    assert len(sent) == 3 and in_flight.bytes == 3 * MIB
    sent[0].done = True
    assert in_flight.admits(MIB)
    assert in_flight.bytes == 2 * MIB


def test_a_body_larger_than_the_budget_goes_out_when_nothing_else_is_held() -> None:
    in_flight = InFlight(MIB)
    assert in_flight.admits(4 * MIB)
    first = Sent()
    in_flight.sent(first, 4 * MIB)
    assert not in_flight.admits(4 * MIB)
    first.done = True
    assert in_flight.admits(4 * MIB)


def test_no_budget_admits_everything() -> None:
    in_flight = InFlight(0)
    for _ in range(100):
        assert in_flight.admits(4 * MIB)
        in_flight.sent(Sent(), 4 * MIB)
