"""What the link between a broker and the edge of the same process hands over, and when:
decided without sockets (the processes that use it are tested in test_cluster.py)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from broker import wire
from broker.local import ROUNDS, SUBSCRIBE, LocalLink


class Sides:
    """What each side of a link was handed, in the order it was handed."""

    def __init__(self, link: LocalLink) -> None:
        self.seen: list[tuple[str, object]] = []
        link.to_broker = lambda frames: self.seen.append(("broker", frames))
        link.to_broker_subscription = lambda frames: self.seen.append(("subscription", frames))
        link.to_broker_presence = lambda report: self.seen.append(("presence", report))
        link.to_ingress = lambda frames: self.seen.append(("ingress", frames))
        link.to_feed = lambda frames: self.seen.append(("feed", frames))


def message(channel_id: str, body: bytes) -> wire.Message:
    return wire.Message(channel_id, wire.MessageId(1, 0), None, None, None, body)


def hand_message(link: LocalLink, channel_id: str, body: bytes) -> None:
    """The broker sends a message on the channel's topic."""
    link.event(message(channel_id, body))


BEAT = wire.Heartbeat("epoch", 1.0, True, 0)
ANSWER = wire.Ack(b"publisher", 1)


async def next_turn() -> None:
    await asyncio.sleep(0)


def on_a_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """The test run on a loop of its own: the link delivers on the loop's next turn."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


@on_a_loop
async def test_nothing_is_handed_over_inside_the_call_that_hands_it() -> None:
    link = LocalLink()
    sides = Sides(link)
    link.connect("inproc://unused")
    link.subscribe(wire.topic("news"), again=False)
    assert link.publish(b"publish")
    hand_message(link, "news", b"1")
    link.answer(ANSWER)
    assert sides.seen == []
    await next_turn()
    assert sides.seen != []


@on_a_loop
async def test_events_come_before_answers_and_publishes_after_presence() -> None:
    link = LocalLink()
    sides = Sides(link)
    link.subscribe(wire.topic("news"), again=False)
    await next_turn()
    sides.seen.clear()
    link.publish(b"second publish")
    # A poll arrived before the publish: the broker counts it when it sequences the publish.
    held = wire.Presence({"news": (1, 1.0)}, full=False)
    link.report(held)
    link.answer(ANSWER)
    hand_message(link, "news", b"first")
    await next_turn()
    assert [side for side, _ in sides.seen] == ["feed", "ingress", "presence", "broker"]
    assert sides.seen[2] == ("presence", held)
    assert sides.seen[3] == ("broker", [b"second publish"])


@on_a_loop
async def test_only_events_of_followed_topics_reach_the_edge_and_the_heartbeat_always() -> None:
    link = LocalLink()
    sides = Sides(link)
    link.subscribe(wire.topic("news"), again=False)
    for channel_id in ("news", "sport", "news-2"):
        hand_message(link, channel_id, channel_id.encode())
    link.event(BEAT)
    await next_turn()
    fed = [event for side, event in sides.seen if side == "feed"]
    assert fed == [message("news", b"news"), BEAT]
    link.unsubscribe(wire.topic("news"))
    hand_message(link, "news", b"after")
    await next_turn()
    assert [event for side, event in sides.seen if side == "feed"] == fed


@on_a_loop
async def test_every_subscription_repeated_or_not_reaches_the_broker_which_answers_each() -> None:
    link = LocalLink()
    sides = Sides(link)
    link.connect("inproc://unused")
    link.subscribe(wire.topic("news"), again=False)
    link.subscribe(wire.topic("news"), again=True)
    await next_turn()
    assert sides.seen == [
        ("subscription", [SUBSCRIBE + wire.HEARTBEAT_TOPIC]),
        ("subscription", [SUBSCRIBE + wire.topic("news")]),
        ("subscription", [SUBSCRIBE + wire.topic("news")]),
    ]


@on_a_loop
async def test_publishes_are_handed_in_order_in_one_batch_and_kept_for_a_stopping_broker() -> None:
    link = LocalLink()
    sides = Sides(link)
    for n in range(5):
        link.publish(b"%d" % n)
    await next_turn()
    assert sides.seen == [("broker", [b"0", b"1", b"2", b"3", b"4"])]
    link.publish(b"5")
    # The broker stops before the next turn: it takes what is queued itself.
    assert link.queued_publishes() == [b"5"]
    await next_turn()
    assert sides.seen == [("broker", [b"0", b"1", b"2", b"3", b"4"])]


@on_a_loop
async def test_a_closed_edge_is_handed_no_more_events() -> None:
    link = LocalLink()
    sides = Sides(link)
    link.subscribe(wire.topic("news"), again=False)
    link.close()
    hand_message(link, "news", b"late")
    link.event(BEAT)
    await next_turn()
    assert [side for side, _ in sides.seen] == ["subscription"]


@on_a_loop
async def test_a_stopping_broker_keeps_what_it_was_handed_for_its_last_drain_then_takes_none() -> (
    None
):
    link = LocalLink()
    sides = Sides(link)
    link.publish(b"0")
    link.publish(b"1")
    # The broker stopped before the next turn: it hands the batch back, in order.
    link.to_broker = link.keep
    await next_turn()
    link.publish(b"2")
    assert link.queued_publishes() == [b"0", b"1", b"2"]
    link.detach_broker()
    link.publish(b"3")
    await next_turn()
    assert link.queued_publishes() == []
    assert sides.seen == []


@on_a_loop
async def test_a_publishs_event_and_answer_reach_the_edge_in_the_turn_it_reached_the_broker() -> (
    None
):
    link = LocalLink()
    sides = Sides(link)
    link.subscribe(wire.topic("news"), again=False)
    await next_turn()
    sides.seen.clear()

    def sequence(publishes: list[bytes]) -> None:
        sides.seen.append(("broker", publishes))
        hand_message(link, "news", b"published")
        link.answer(ANSWER)

    link.to_broker = sequence
    link.publish(b"publish")
    await next_turn()
    assert [side for side, _ in sides.seen] == ["broker", "feed", "ingress"]


@on_a_loop
async def test_sides_that_keep_handing_back_get_a_few_rounds_per_turn_and_the_loop_turns() -> None:
    link = LocalLink()
    rounds = {"broker": 0, "ingress": 0}

    def answer(publishes: list[bytes]) -> None:
        rounds["broker"] += 1
        link.answer(ANSWER)

    def publish_again(answers: list[wire.Answer]) -> None:
        rounds["ingress"] += 1
        link.publish(b"again")  # a pipelined POST behind the one answered

    link.to_broker, link.to_ingress = answer, publish_again
    link.publish(b"first")
    await next_turn()
    first_turn = sum(rounds.values())
    # Each round hands answers to the edge and then publishes to the broker.
    assert 2 <= first_turn <= 2 * ROUNDS
    for _ in range(10):
        await next_turn()
    assert sum(rounds.values()) >= first_turn + 10


@on_a_loop
async def test_what_a_failing_side_handed_back_before_failing_is_still_delivered() -> None:
    link = LocalLink()
    sides = Sides(link)

    def fail(publishes: list[bytes]) -> None:
        link.answer(ANSWER)
        raise RuntimeError("broken broker")

    link.to_broker = fail
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
    link.publish(b"publish")
    await next_turn()
    await next_turn()
    assert sides.seen == [("ingress", [ANSWER])]
