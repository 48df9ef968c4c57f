"""The link between a broker and the edge that runs in the same process.

`runpushserver` with no role runs both on one loop. Over ZeroMQ, each
HTTP publish would cross three sockets inside the process (the edge's
publish to the ingress, its answer back, the broker's event to the feed),
each a send, a hop through libzmq's I/O thread and a wake-up of the loop:
together more than the broker and the edge spend on the publish itself.
This link hands the edge's publishes to the broker, and the broker's
events and answers to the edge, as the values their frames would have
been decoded to (values of `broker.wire`, all immutable, so both sides
may hold them), so the broker's admission, numbering and acks, and the
feed's checks of every event's `prev`, are the same code whichever way
they came, without encoding for one side what the other decodes at once.
The edge's presence reports go over it too, as values: over ZeroMQ each
would be validated entry by entry, every channel it holds a poll on. What
stays on ZeroMQ: the control socket's requests and replies (snapshots,
channel info), and every other publisher and edge.

The trap: neither side may be called from inside the other's own call
(a publish answered while its connection is still writing it, an event
applied while the feed is subscribing to its topic), so each direction
queues what it hands over, and one callback on the loop's next turn
delivers it all: events first, so that an answer finds its message
already in the edge's buffer, then answers, then subscriptions, presence
and publishes for the broker. What those make the other side hand back
(a publish's event and answer) is delivered by the same callback, in a
few more rounds, rather than a turn of the loop later: a turn is a
system call and a look at every ready socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker import wire

# The route of the local edge's publishes among the ingress ROUTER's: libzmq's
# identities are never empty.
ROUTE = b""
# What a subscription looks like on an XPUB socket.
SUBSCRIBE = b"\x01"

# Rounds of delivery in one callback: a publish, then its event and answer; more
# only when an answer let a pipelined request publish again. The loop's other
# connections get a turn after that.
ROUNDS = 3

Take = Callable[[list[bytes]], None]
TakePublishes = Callable[[list[wire.Publish]], None]


def _nobody(handed: object) -> None:
    """What a side not attached yet is handed: nothing reaches it before it starts."""


class LocalLink:
    def __init__(self) -> None:
        # Topics the edge follows; the heartbeat's from the start, as its SUB socket's.
        self.topics: set[bytes] = {wire.HEARTBEAT_TOPIC}
        self._publishes: list[wire.Publish] = []
        self._subscriptions: list[bytes] = []
        self._presence: list[wire.Presence] = []
        self._answers: list[wire.Answer] = []
        self._events: list[wire.Event] = []
        # Set by each side: the broker's when it makes the link, the feed's when it is
        # made, the ingress link's when it starts.
        self.to_broker: TakePublishes = _nobody
        self.to_broker_subscription: Take = _nobody
        self.to_broker_presence: Callable[[wire.Presence], None] = _nobody
        self.to_ingress: Callable[[list[wire.Answer]], None] = _nobody
        self.to_feed: Callable[[wire.Event], None] = _nobody
        # Something waits to be delivered (and a delivery will come).
        self._scheduled = False
        self._delivering = False

    # -- the edge's side -------------------------------------------------------

    def publish(self, publish: wire.Publish) -> bool:
        """The ingress link's send: always taken, as a connected DEALER takes it."""
        self._publishes.append(publish)
        self._schedule()
        return True

    def connect(self, endpoint: str) -> None:
        """The feed starts: the broker hears of the heartbeat topic, as from a SUB socket."""
        self._subscriptions.append(SUBSCRIBE + wire.HEARTBEAT_TOPIC)
        self._schedule()

    def reconnect(self, endpoint: str) -> bool:
        """Nothing to connect again: the broker is in this process."""
        return False

    def subscribe(self, topic: bytes, again: bool) -> None:
        """Follow a topic; the broker answers each subscription, repeated or not, with a sync."""
        self.topics.add(topic)
        self._subscriptions.append(SUBSCRIBE + topic)
        self._schedule()

    def unsubscribe(self, topic: bytes) -> None:
        self.topics.discard(topic)

    def report(self, presence: wire.Presence) -> None:
        """The feed's presence report, as it would send it on the control socket."""
        self._presence.append(presence)
        self._schedule()

    def close(self) -> None:
        self.to_feed = _nobody
        self.topics = set()

    def queued_publishes(self) -> list[wire.Publish]:
        """What the edge handed over and the broker has not taken yet: at the broker's stop."""
        publishes, self._publishes = self._publishes, []
        return publishes

    def keep(self, publishes: list[wire.Publish]) -> None:
        """Publishes the stopping broker was handed and did not take, back in front of the
        queue for its last drain (`queued_publishes`), not handed over again before it."""
        self._publishes[:0] = publishes

    def detach_broker(self) -> None:
        """The broker took its last publishes: what comes later is dropped, and the edge's
        outbox, which keeps everything unacknowledged, gives it up at its own stop."""
        self.to_broker = _nobody
        self.to_broker_subscription = _nobody
        self.to_broker_presence = _nobody

    # -- the broker's side -----------------------------------------------------

    def event(self, event: wire.Event) -> None:
        """An event the broker sends its edges; the local one gets it if it follows the
        event's topic."""
        if wire.event_topic(event) in self.topics:
            self._events.append(event)
            self._schedule()

    def answer(self, answer: wire.Answer) -> None:
        self._answers.append(answer)
        self._schedule()

    # -- delivery ----------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            if not self._delivering:
                asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivering = True
        try:
            for _ in range(ROUNDS):
                self._scheduled = False
                self._deliver_round()
                if not self._scheduled:
                    break
        finally:
            self._delivering = False
            # Also after a side failed: what waits must not wait for a call never made.
            if self._scheduled:
                asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver_round(self) -> None:
        events, self._events = self._events, []
        for event in events:
            self.to_feed(event)
        answers, self._answers = self._answers, []
        if answers:
            self.to_ingress(answers)
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            self.to_broker_subscription([subscription])
        reports, self._presence = self._presence, []
        for presence in reports:
            self.to_broker_presence(presence)
        publishes, self._publishes = self._publishes, []
        if publishes:
            self.to_broker(publishes)
