"""The publisher location on the edge's own connection: what it answers, in what order, and
exactly-once publishing through the broker's ingress, retries with an Idempotency-Key included,
against real brokers and edges (one embedded server, a broker with two edges, a broker that
restarts)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge.protocol import IDEMPOTENCY_KEY, PUSH_SECRET
from ops.cluster import Cluster
from tests.client import Cursor, fresh, hold, info, path, poll, publish, walk
from tests.processes import Launcher, eventually
from tests.raw_http import raw, read_response

# Holds every message a test publishes, for longer than any test runs.
STORE = {"type": "memory", "min_messages": 0, "max_messages": 5000, "message_timeout": 300}
# Each stream of publishes stops by itself after this many, inside the store.
STREAM_LIMIT = 2000
JSON = {"Accept": "application/json"}


def post(
    base: str, channel: str, body: bytes, key: str | None = None, **headers: str
) -> httpx.Response:
    sent = {**JSON, **headers}
    if key is not None:
        sent[IDEMPOTENCY_KEY] = key
    return httpx.post(base + path("send-update", channel), content=body, headers=sent, timeout=10)


# -- answers -----------------------------------------------------------------


def test_every_publisher_answer_comes_from_the_edge_itself_not_from_tornado(base: str) -> None:
    """Tornado names itself in a Server header; the edge's own connection sends none."""
    channel = fresh("fast-path")
    url = base + path("send-update", channel)
    answers = [
        httpx.put(url),
        httpx.post(url, content=b"x"),
        httpx.get(url),
        httpx.delete(url),
        httpx.get(url),  # 404
        httpx.patch(url),  # 405
        httpx.post(base + path("guarded", channel), content=b"x"),  # 403
        httpx.post(url, content=b"x" * (2 * 1024 * 1024 + 1)),  # 413
        httpx.post(base + path("send-update", "c" * 1025), content=b"x"),  # 400
    ]
    assert [a.status_code for a in answers] == [200, 202, 200, 200, 404, 405, 403, 413, 400]
    for answer in answers:
        assert "server" not in answer.headers, answer.headers
        assert "date" in answer.headers
        assert answer.headers["content-length"] == str(len(answer.content))
    # Tornado still serves what is neither location's.
    assert "TornadoServer" in httpx.get(base + "/pushserver/metrics").headers["server"]


def test_a_post_with_a_bad_idempotency_key_gets_400_and_publishes_nothing(base: str) -> None:
    channel = fresh("bad-key")
    too_long = post(base, channel, b"x", key="k" * 256)
    assert too_long.status_code == 400
    assert too_long.headers["content-type"].startswith("text/plain")
    assert f"{IDEMPOTENCY_KEY}: idempotency key is longer than 255 bytes" in too_long.text
    assert post(base, channel, b"x", key="").status_code == 400
    assert info(base, channel) is None
    assert post(base, channel, b"x", key="k" * 255).status_code == 202


def test_a_post_whose_content_type_no_header_could_carry_gets_400_and_publishes_nothing(
    base: str,
) -> None:
    channel = fresh("bad-type")
    refused = post(base, channel, b"x", **{"Content-Type": "text/" + "x" * 1100})
    assert refused.status_code == 400
    assert "content type is longer than 1024 characters" in refused.text
    assert info(base, channel) is None
    assert post(base, channel, b"x", **{"Content-Type": "text/plain"}).status_code == 202


def test_the_secret_admits_a_caller_from_outside_allow_from_to_every_method(base: str) -> None:
    channel = fresh("secret")
    url = base + path("guarded", channel)
    secret = {PUSH_SECRET: "s3cret"}
    assert httpx.put(url).status_code == 403
    assert httpx.get(url).status_code == 403
    assert httpx.delete(url).status_code == 403
    assert httpx.put(url, headers=secret).status_code == 200
    assert httpx.post(url, content=b"in", headers=secret).status_code == 202
    assert httpx.get(url, headers={**secret, **JSON}).json()["messages"] == 1
    assert httpx.delete(url, headers=secret).status_code == 200


def test_pipelined_posts_on_one_connection_are_answered_in_order(base: str) -> None:
    channel = fresh("pipelined-posts")
    count = 30
    requests = b"".join(
        (
            f"POST {path('send-update', channel)} HTTP/1.1\r\nHost: edge\r\n"
            f"Accept: application/json\r\nContent-Length: {len(str(n))}\r\n\r\n{n}"
        ).encode()
        for n in range(count)
    )
    with raw(base) as (sock, stream):
        sock.sendall(requests)
        answers = [read_response(stream) for _ in range(count)]
    assert [status for status, _, _ in answers] == [202] * count
    # Each answer is its own publish's: the channel as that publish left it. The
    # store holds 10 messages, so the count stops there; the ids keep going up.
    infos = [json.loads(body) for _, _, body in answers]
    assert [i["messages"] for i in infos] == [min(n + 1, 10) for n in range(count)]
    ids = [tuple(map(int, i["last_message_id"].split(":"))) for i in infos]
    assert ids == sorted(set(ids))
    assert walk(base, channel, 10) == [str(n).encode() for n in range(count - 10, count)]


def test_a_poll_right_after_a_publish_on_the_same_edge_finds_the_message(
    base: str, client: httpx.Client
) -> None:
    """The broker's answer and the message reach the edge over two sockets, in either
    order; the answer waits for the edge's copy of a channel it follows."""
    channel = fresh("read-your-writes")
    publish(base, channel, "first")
    cursor = Cursor().advanced(poll(client, base, channel, location="poll"))
    for n in range(40):
        publish(base, channel, f"message {n}")
        answer = poll(client, base, channel, cursor, location="poll")
        assert (answer.status_code, answer.text) == (200, f"message {n}")
        cursor = cursor.advanced(answer)


# -- idempotency keys ----------------------------------------------------------


def test_a_retry_with_the_same_key_is_answered_as_the_first_and_published_once(
    base: str, client: httpx.Client
) -> None:
    channel = fresh("retried")
    publish(base, channel, "before")
    waiting = hold(client, base, channel, Cursor().advanced(poll(client, base, channel)))
    first = post(base, channel, b"once", key="order-17")
    assert first.status_code == 201  # a subscriber was held
    assert waiting.result(10).text == "once"
    # Nobody waits now, and the channel has two messages: the retry is still told
    # what the first publish was told.
    retry = post(base, channel, b"once", key="order-17")
    assert retry.status_code == first.status_code
    # "requested" counts seconds since the last poll, as of each answer.
    assert {**retry.json(), "requested": 0} == {**first.json(), "requested": 0}
    assert first.json()["subscribers"] == 1
    assert (info(base, channel) or {})["messages"] == 2
    other = post(base, channel, b"twice", key="order-18")
    assert other.status_code == 202
    assert walk(base, channel, 3) == [b"before", b"once", b"twice"]


def cluster(folder: Path, **push_server: object) -> Cluster:
    """A broker (on fixed ports, with a history file) and two edges, no balancer."""
    return Cluster(
        folder,
        edges=2,
        balancer=None,
        launcher=Launcher(folder),
        store=STORE,
        history_file=str(folder / "history"),
        broker_timeout=1,
        **push_server,
    )


@pytest.fixture
def two_edges(tmp_path: Path) -> Iterator[Cluster]:
    started = cluster(tmp_path)
    yield started.start()
    started.stop()


@pytest.fixture
def short_window(tmp_path: Path) -> Iterator[Cluster]:
    """Two edges of a broker that remembers idempotency keys for two seconds."""
    started = cluster(tmp_path, idempotency_window=2)
    yield started.start()
    started.stop()


def test_a_retry_on_another_edge_of_the_broker_is_published_once(two_edges: Cluster) -> None:
    first_edge, second_edge = two_edges.edge_urls
    channel = fresh("two-edges")
    first = post(first_edge, channel, b"one", key="k-1")
    retry = post(second_edge, channel, b"one", key="k-1")
    assert first.status_code == retry.status_code == 202
    assert retry.json() == first.json()
    assert post(second_edge, channel, b"two", key="k-2").json()["messages"] == 2
    assert walk(first_edge, channel, 2) == [b"one", b"two"]


def test_a_key_is_forgotten_after_the_idempotency_window(short_window: Cluster) -> None:
    base = short_window.edge_urls[0]
    channel = fresh("forgotten-key")
    assert post(base, channel, b"one", key="again").json()["messages"] == 1
    # The window is two seconds: until it has passed, the key names the first publish.
    eventually(
        lambda: post(base, channel, b"one", key="again").json()["messages"] == 2,
        10,
        "the key to be forgotten",
    )
    assert walk(base, channel, 2) == [b"one", b"one"]


# -- the broker away and back ----------------------------------------------------


def test_with_the_broker_away_a_post_gets_503_and_is_published_once_it_is_back(
    two_edges: Cluster,
) -> None:
    """The 503 does not take the message back: the edge's outbox still holds it."""
    base = two_edges.edge_urls[0]
    channel = fresh("away")
    publish(base, channel, "before")
    two_edges.stop_broker()
    refused = post(base, channel, b"while away", key="while-away")
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("text/plain")
    assert "broker is unavailable" in refused.text
    two_edges.start_broker()
    assert walk(base, channel, 2) == [b"before", b"while away"]
    # The client's retry, with its key, is told what the publish was told.
    retry = post(base, channel, b"while away", key="while-away")
    assert retry.status_code == 202
    assert retry.json()["messages"] == 2
    assert walk(base, channel, 2) == [b"before", b"while away"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_broker_restarted_under_a_stream_of_http_publishes_loses_and_repeats_nothing(
    two_edges: Cluster, sig: int
) -> None:
    """Each publisher retries on 503 or a lost connection with the same key, as the
    README tells HTTP publishers to; every message is then held once, in order."""
    bases = two_edges.edge_urls
    channels = [fresh(f"stream-{n}") for n in range(2)]
    published: dict[str, list[bytes]] = {channel: [] for channel in channels}
    unexpected: list[str] = []
    stop = threading.Event()

    def stream(base: str, channel: str) -> None:
        with httpx.Client(timeout=10) as session:
            while not stop.is_set() and len(published[channel]) < STREAM_LIMIT:
                n = len(published[channel])
                body = f"{channel}:{n}".encode()
                while not stop.is_set():
                    try:
                        answer = session.post(
                            base + path("send-update", channel),
                            content=body,
                            headers={IDEMPOTENCY_KEY: f"{channel}-{n}"},
                        )
                    except httpx.TransportError:
                        continue
                    if answer.status_code in (201, 202):
                        published[channel].append(body)
                        break
                    if answer.status_code != 503:
                        unexpected.append(f"{answer.status_code} {answer.text}")
                        return

    threads = [
        threading.Thread(target=stream, args=(base, channel), daemon=True)
        for base, channel in zip(bases, channels, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: all(len(p) >= 20 for p in published.values()), 20, "a stream")
        two_edges.stop_broker(sig)
        two_edges.start_broker()
        counts = {channel: len(p) for channel, p in published.items()}
        eventually(
            lambda: unexpected or all(len(published[c]) >= counts[c] + 20 for c in channels),
            30,
            "the stream to go on after the restart",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    assert not unexpected
    for base, channel in zip(bases, channels, strict=True):
        expected = published[channel]
        assert walk(base, channel, len(expected)) == expected
        assert (info(base, channel) or {})["messages"] == len(expected)
