"""A message's optional EventSource event name, end to end.

The rule (`broker.wire.event_name_problem`) is written once and checked at
every decoder, by `send_update` (ValueError) and by the HTTP publisher
(400). The name rides as the last, optional field of every format: the
publish frame, live events, snapshots, the control publish and the history
file; without a name each format is what it was before names existed. The
edge's own copy is observed in-process on a real `edge.feed.Feed` against
the real broker; the HTTP publisher, and a stream's `event:` lines, on a
real edge process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
import zmq

from broker import wire
from broker.history import History
from broker.publishers import Publishers
from broker.sequencer import Sequencer
from edge.config import EdgeConfig
from edge.feed import Feed
from edge.protocol import EVENTSOURCE_EVENT
from tests.brokers import ThreadBroker, snapshot
from tests.client import path
from tests.eventsource import EventStream
from tests.processes import Launcher, eventually
from tests.test_send_update import push_settings

A = b"publisher-a"
ID = wire.MessageId(2_000_000_000, 0)
LATER = wire.MessageId(2_000_000_000, 1)
LIMITS = wire.Limits(max_messages=10, min_messages=0, message_timeout=0)


# -- the rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "quote", "price.update", "chat:message", "A-Z_09", "x" * 64, "pushserver-x"]
)
def test_a_name_of_1_to_64_letters_digits_and_punctuation_is_an_event_name(name: str) -> None:
    assert wire.event_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is not 1 to 64"),
        ("x" * 65, "is not 1 to 64"),
        ("two words", "is not 1 to 64"),
        ("line\nbreak", "is not 1 to 64"),
        ("tick\r\nid: 1:1", "is not 1 to 64"),
        ("caf\u00e9", "is not 1 to 64"),
        ("a,b", "is not 1 to 64"),
        ("a\0", "is not 1 to 64"),
    ],
)
def test_anything_else_is_refused_with_the_rule(name: str, problem: str) -> None:
    assert problem in (wire.event_name_problem(name) or "")


@pytest.mark.parametrize("name", sorted(wire.RESERVED_EVENT_NAMES))
def test_the_names_edges_and_eventsource_use_themselves_are_reserved(name: str) -> None:
    assert wire.event_name_problem(name) == f"event name {name!r} is reserved"


def test_the_reserved_names_include_the_missed_and_deleted_events() -> None:
    assert {wire.MISSED_EVENT, wire.DELETED_EVENT} == {"pushserver-missed", "pushserver-deleted"}
    assert {"message", "open", "error"} < wire.RESERVED_EVENT_NAMES


# -- the frames ------------------------------------------------------------------


def test_a_publish_with_an_event_name_round_trips_and_carries_it_last() -> None:
    frame = wire.PublishPacker()("news", b"x", "text/plain", A, 4, 2, "k", True, "quote")
    assert msgpack.unpackb(frame)[-1] == "quote"
    assert wire.decode_publish([frame]) == wire.Publish(
        "news", "text/plain", b"x", A, 4, 2, "k", True, "quote"
    )


def test_a_publish_without_a_name_is_the_nine_fields_it_always_was() -> None:
    frame = wire.PublishPacker()("news", b"x", None, A, 0, 0)
    assert len(msgpack.unpackb(frame)) == 9
    assert wire.decode_publish([frame]).event is None


def test_a_live_message_carries_its_event_name_and_without_one_has_no_field_for_it() -> None:
    named = wire.Message("news", LATER, ID, None, "text/plain", b"x", "quote")
    frames = wire.encode_message(named)
    assert msgpack.unpackb(frames[1])["e"] == "quote"
    assert wire.decode_event(frames) == named
    plain = wire.Message("news", LATER, ID, None, None, b"y")
    frames = wire.encode_message(plain)
    assert "e" not in msgpack.unpackb(frames[1])
    decoded = wire.decode_event(frames)
    assert isinstance(decoded, wire.Message) and decoded.event is None


def test_a_snapshot_carries_each_message_event_name_or_none() -> None:
    messages = (
        wire.Message("news", ID, None, None, "text/plain", b"one", "quote"),
        wire.Message("news", LATER, ID, None, None, b"two"),
    )
    reply = wire.Reply(7, True, None, wire.Snapshot("news", True, LATER, None, LIMITS, messages))
    frames = wire.encode_reply(reply)
    entries = msgpack.unpackb(frames[0])["snap"]["ids"]
    assert [len(entry) for entry in entries] == [4, 3]
    decoded = wire.decode_reply(frames)
    assert decoded.snapshot is not None
    assert decoded.snapshot.messages == messages


def test_a_control_publish_carries_its_event_name() -> None:
    request = wire.Request(wire.PUBLISH, 3, "news", "text/plain", b"x", event="quote")
    assert wire.decode_request(wire.encode_request(request)) == request
    plain = wire.Request(wire.PUBLISH, 4, "news", None, b"x")
    assert "e" not in msgpack.unpackb(wire.encode_request(plain)[0])


def _header(**fields: object) -> bytes:
    packed: bytes = msgpack.packb({"v": wire.VERSION, **fields}, use_bin_type=True)
    return packed


BAD_NAMES = [7, "", "two words", "x" * 65, "a\r\nb", wire.DELETED_EVENT, "error"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_decoder_refuses_a_bad_event_name(name: object) -> None:
    message = [
        wire.topic("news"),
        _header(k="m", id=ID, prev=None, floor=None, t=None, e=name),
        b"x",
    ]
    snap = {
        "c": "news",
        "exists": True,
        "last": ID,
        "floor": None,
        "limits": [10, 0, 0.0],
        "ids": [(ID, None, None, name)],
    }
    decoders: list[Callable[[], object]] = [
        lambda: wire.decode_publish(
            [msgpack.packb([wire.VERSION, A, 0, "news", None, b"", 0, None, False, name])]
        ),
        lambda: wire.decode_event(message),
        lambda: wire.decode_reply([_header(r=1, found=True, info=None, id=None, snap=snap), b"x"]),
        lambda: wire.decode_request(
            [_header(k=wire.PUBLISH, r=1, c="news", t=None, create=False, e=name), b"x"]
        ),
    ]
    for decode in decoders:
        with pytest.raises(wire.WireError, match="event name"):
            decode()


def test_a_snapshot_entry_of_the_wrong_shape_is_a_wire_error() -> None:
    snap = {"c": "news", "exists": True, "last": ID, "floor": None, "limits": [10, 0, 0.0]}
    for entry in [(ID, None), (ID, None, None, "quote", "extra"), "entry"]:
        header = _header(r=1, found=True, info=None, id=None, snap={**snap, "ids": [entry]})
        with pytest.raises(wire.WireError, match="snapshot entry"):
            wire.decode_reply([header, b"x"])


# -- the history file ------------------------------------------------------------


def test_a_history_keeps_event_names_across_a_reload(tmp_path: Path) -> None:
    sequencer = Sequencer(LIMITS, clock=lambda: 2_000_000_000.0)
    history = History(tmp_path / "history")
    history.load(sequencer, Publishers())
    named = sequencer.publish("news", "text/plain", b"one", "quote")
    plain = sequencer.publish("news", None, b"two")
    history.published(named, (A, 0), "key-1")
    history.published(plain, (A, 1))
    history.close()

    def reloaded() -> tuple[list[tuple[bytes, str | None]], int | None]:
        again, publishers = Sequencer(LIMITS, clock=lambda: 2_000_000_001.0), Publishers()
        replayed = History(tmp_path / "history")
        replayed.load(again, publishers)
        replayed.close()
        channel = again.get("news")
        assert channel is not None
        return [(m.body, m.event) for m in channel.messages], publishers.last(A)

    # Once replayed from the appended records, once more from the compacted file.
    assert reloaded() == ([(b"one", "quote"), (b"two", None)], 1)
    assert reloaded() == ([(b"one", "quote"), (b"two", None)], 1)


def test_a_history_written_before_event_names_existed_keeps_loading(tmp_path: Path) -> None:
    """Records exactly as the broker wrote them before: no name anywhere."""
    file = tmp_path / "history"
    records = [
        ("v", 1),
        ("c", "news", None, None),
        ("m", "news", ID, None, "text/plain", b"one"),
        ("m", "news", LATER, ID, None, b"two", A, 5),
        ("m", "news", wire.MessageId(ID.time, 2), LATER, None, b"three", A, 6, "key-9"),
    ]
    file.write_bytes(b"".join(msgpack.packb(record, use_bin_type=True) for record in records))
    sequencer, publishers = Sequencer(LIMITS, clock=lambda: 2_000_000_001.0), Publishers()
    replayed = History(file)
    replayed.load(sequencer, publishers)
    replayed.close()
    channel = sequencer.get("news")
    assert channel is not None
    assert [(m.body, m.event) for m in channel.messages] == [
        (b"one", None),
        (b"two", None),
        (b"three", None),
    ]
    assert publishers.last(A) == 6


# -- send_update and the broker ----------------------------------------------------


@pytest.fixture
def sending(broker: ThreadBroker) -> Iterator[ThreadBroker]:
    """send_update pointed at the broker; the sender starts afresh before and after."""
    from django.test.utils import override_settings

    from pushserver import sender

    sender.close()
    with override_settings(PUSH_SERVER=push_settings(broker.ingress)):
        yield broker
        sender.close()


@pytest.mark.parametrize("name", ["", "two words", "x" * 65, "pushserver-missed", "message"])
def test_send_update_refuses_a_bad_event_name_with_a_value_error(
    sending: ThreadBroker, name: str
) -> None:
    from pushserver.utils import updates

    with pytest.raises(ValueError, match="event name"):
        updates.send_update("news", {"a": 1}, event=name)
    with pytest.raises(ValueError, match="event name"):
        updates.send_update("news", {"a": 1}, ignore_errors=True, event=name)


def test_send_update_refuses_an_event_name_that_is_not_a_str(sending: ThreadBroker) -> None:
    from pushserver.utils import updates

    with pytest.raises(TypeError, match="event must be a str or None, got bytes"):
        updates.send_update("news", {"a": 1}, event=b"quote")  # type: ignore[arg-type]


def _edge_config(broker: ThreadBroker) -> EdgeConfig:
    endpoints = broker.endpoints
    return EdgeConfig(
        events=endpoints["events"], control=endpoints["control"], ingress=endpoints["ingress"]
    )


def _held(feed: Feed, channel_id: str) -> list[wire.Message]:
    """The messages the edge holds for the channel, oldest first."""
    buffer = feed.buffers[channel_id]
    return [held.message for held in buffer.held]


def test_send_update_names_reach_the_edges_copy_by_snapshot_and_live(
    sending: ThreadBroker,
) -> None:
    from pushserver.utils import updates

    # Sequenced before the edge follows the channel: it arrives in the snapshot.
    updates.send_update("prices", {"n": 1}, event="quote")

    async def follow() -> list[wire.Message]:
        feed = Feed(_edge_config(sending))
        running = asyncio.get_running_loop().create_task(feed.run())
        try:
            assert await feed.channel("prices", create=False) is not None
            # Then live, from another thread as a Django view would send it.
            await asyncio.to_thread(updates.send_update, "prices", {"n": 2}, event="trade")
            await asyncio.to_thread(updates.send_update, "prices", {"n": 3})
            await updates.asend_update("prices", {"n": 4}, event="quote")
            deadline = time.monotonic() + 10
            while len(_held(feed, "prices")) < 4:
                assert time.monotonic() < deadline, _held(feed, "prices")
                await asyncio.sleep(0.01)
            return _held(feed, "prices")
        finally:
            feed.stop()
            await running

    held = asyncio.run(follow())
    assert [(m.body, m.event) for m in held] == [
        (b'{"n":1}', "quote"),
        (b'{"n":2}', "trade"),
        (b'{"n":3}', None),
        (b'{"n":4}', "quote"),
    ]


def test_event_names_survive_a_broker_restart_with_a_history_file(
    sending: ThreadBroker, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    updates.send_update("prices", {"n": 1}, event="quote")
    updates.send_update("prices", {"n": 2})
    deadline = time.monotonic() + 10
    while sender.pending():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sending.stop()
    sending.start()
    control = sending.endpoints["control"]
    assert [(m.body, m.event) for m in snapshot(context, control, "prices")] == [
        (b'{"n":1}', "quote"),
        (b'{"n":2}', None),
    ]


# -- the HTTP publisher ------------------------------------------------------------


@pytest.fixture
def edge(broker: ThreadBroker, launcher: Launcher) -> Iterator[str]:
    """An edge process on the broker of the test; its base URL."""
    _, base = launcher.edge(broker.endpoints)
    yield base


def test_the_http_publisher_passes_the_event_name_header_to_the_broker(
    broker: ThreadBroker, edge: str, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    url = edge + path("send-update", "prices")
    named = httpx.post(url, content=b"one", headers={EVENTSOURCE_EVENT: "quote"}, timeout=10)
    assert named.status_code in (201, 202), named.text
    plain = httpx.post(url, content=b"two", timeout=10)
    assert plain.status_code in (201, 202), plain.text
    control = broker.endpoints["control"]
    assert [(m.body, m.event) for m in snapshot(context, control, "prices")] == [
        (b"one", "quote"),
        (b"two", None),
    ]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("two words", "is not 1 to 64"),
        ("x" * 65, "is not 1 to 64"),
        ("caf\u00e9", "is not 1 to 64"),
        (wire.MISSED_EVENT, "is reserved"),
        ("open", "is reserved"),
    ],
)
def test_the_http_publisher_refuses_a_bad_event_name_with_400_and_publishes_nothing(
    broker: ThreadBroker,
    edge: str,
    context: zmq.Context[zmq.Socket[bytes]],
    value: str,
    why: str,
) -> None:
    url = edge + path("send-update", "refused")
    response = httpx.post(
        url, content=b"x", headers=[(EVENTSOURCE_EVENT, value.encode("latin-1"))], timeout=10
    )
    assert response.status_code == 400
    assert response.text.startswith(f"{EVENTSOURCE_EVENT}: event name")
    assert why in response.text
    assert snapshot(context, broker.endpoints["control"], "refused") == []


def test_two_event_name_headers_are_refused_since_they_read_as_one_with_a_comma(
    broker: ThreadBroker, edge: str
) -> None:
    url = edge + path("send-update", "refused")
    headers = [(EVENTSOURCE_EVENT, "quote"), (EVENTSOURCE_EVENT, "trade")]
    response = httpx.post(url, content=b"x", headers=headers, timeout=10)
    assert response.status_code == 400, response.text
    assert "'quote,trade'" in response.text


# -- to the browser ------------------------------------------------------------------


def test_a_named_message_reaches_an_eventsource_stream_as_its_event_and_a_poll_without_it(
    sending: ThreadBroker, launcher: Launcher
) -> None:
    from pushserver import sender
    from pushserver.utils import updates

    _, base = launcher.edge(sending.endpoints)
    updates.send_update("ticker", {"n": 1}, event="quote")
    updates.send_update("ticker", {"n": 2})
    # Acknowledged before the HTTP publish, so the broker sequences the three in this order.
    eventually(lambda: sender.pending() == 0, 10, "send_update's messages acknowledged")
    url = base + path("send-update", "ticker")
    posted = httpx.post(url, content=b"three", headers={EVENTSOURCE_EVENT: "trade.v2"}, timeout=10)
    assert posted.status_code in (201, 202), posted.text
    with EventStream(base, path("updates", "ticker")) as stream:
        events = stream.events_of(3)
    assert [(event.type, event.data) for event in events] == [
        ("quote", '{"n":1}'),
        ("message", '{"n":2}'),
        ("trade.v2", "three"),
    ]
    # A poll gets the body alone: no header names the event.
    polled = httpx.get(base + path("updates", "ticker"), timeout=10)
    assert polled.status_code == 200 and polled.content == b'{"n":1}'
    assert EVENTSOURCE_EVENT.lower() not in polled.headers
