"""CURVE on the broker's ports, tried as an attacker on the same network would.

A real broker and edge with CURVE on, and sockets in this process: without
a key, with a key the broker never admitted, and with a publisher's key
where only edges may go. Each is refused (counted on the broker's metrics,
logged with its identity at a bounded rate) and learns nothing: no message
published, no snapshot, no deletion, no message read. Then the management
command's files end to end, and the system checks of the `curve` setting.
"""

from __future__ import annotations

import io
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test.utils import override_settings

from broker import curve, wire
from broker.throttled_log import LOG_LINES
from broker.wire import PublishPacker
from pushserver import checks, rules
from tests.brokers import broker_figures
from tests.client import fresh, info, publish, walk
from tests.processes import Launcher, Process, eventually

STORE = {"type": "memory", "min_messages": 0, "max_messages": 50, "message_timeout": 600}
# How long a refused socket is given to learn something it should not.
QUIET = 1.0


@dataclass
class Secured:
    broker: Process
    endpoints: dict[str, str]
    metrics: str
    edge: str
    curve: dict[str, str]


def start_secured(launcher: Launcher, keys: Path) -> Secured:
    layout, _ = curve.create_key_files(keys)
    setting = layout.setting()
    broker, endpoints = launcher.broker(store=STORE, curve=setting)
    _, edge = launcher.edge(endpoints, store=STORE, curve=setting)
    return Secured(broker, endpoints, Launcher.metrics_url(broker), edge, setting)


@pytest.fixture(scope="module")
def secured(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Secured:
    return start_secured(module_launcher, tmp_path_factory.mktemp("keys"))


@pytest.fixture
def fresh_secured(launcher: Launcher, tmp_path: Path) -> Secured:
    """A broker of its own, for a test that reads its log: refusals are logged a few times a
    minute per port, and other tests' clients, reconnecting, spend that budget."""
    return start_secured(launcher, tmp_path / "keys")


Connect = Callable[..., zmq.Socket[bytes]]


@pytest.fixture
def connect(context: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Connect]:
    """Connects a socket of a kind to an endpoint, with client keys or without any;
    every socket is closed after the test."""
    made: list[zmq.Socket[bytes]] = []

    def open_socket(
        kind: int, endpoint: str, keys: curve.ClientKeys | None = None
    ) -> zmq.Socket[bytes]:
        sock = context.socket(kind)
        made.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            curve.apply_client(sock, keys)
        sock.connect(endpoint)
        return sock

    yield open_socket
    for sock in made:
        sock.close(linger=0)


def publisher_keys(setting: dict[str, str]) -> curve.ClientKeys:
    return curve.load_client_keys(
        curve.ClientFiles(Path(setting["broker_public_key"]), Path(setting["publisher_secret_key"]))
    )


def stranger_keys(setting: dict[str, str]) -> curve.ClientKeys:
    """A key pair no allow-list holds, with the broker's real public key."""
    public, secret = zmq.curve_keypair()
    return curve.ClientKeys(curve.public_key(Path(setting["broker_public_key"])), public, secret)


def refused_more(secured: Secured, port: str, before: int) -> None:
    eventually(
        lambda: broker_figures(secured.metrics)[f"{port}_refused"] > before,
        10,
        f"a refusal counted on {port}",
    )


def nothing_arrives(sock: zmq.Socket[bytes], wait: float = QUIET) -> None:
    assert not sock.poll(round(wait * 1000)), f"received {sock.recv_multipart()!r}"


def snapshot_request(channel_id: str) -> list[bytes]:
    return wire.encode_request(wire.Request(wire.SNAPSHOT, 1, channel_id))


def a_channel_with_one_message(secured: Secured, name: str) -> str:
    channel = fresh(name)
    publish(secured.edge, channel, "held")
    assert walk(secured.edge, channel, 1) == [b"held"]
    return channel


def test_an_anonymous_dealer_on_the_ingress_publishes_nothing(
    secured: Secured, connect: Connect
) -> None:
    channel = a_channel_with_one_message(secured, "anon-ingress")
    before = broker_figures(secured.metrics)["ingress_refused"]
    dealer = connect(zmq.DEALER, secured.endpoints["ingress"])
    dealer.send(PublishPacker()(channel, b"forged", "text/plain", b"attacker", 0, 0))
    refused_more(secured, "ingress", before)
    nothing_arrives(dealer)  # no ack
    held = info(secured.edge, channel)
    assert held is not None and held["messages"] == 1


def test_an_anonymous_dealer_on_control_gets_no_snapshot_and_deletes_nothing(
    secured: Secured, connect: Connect
) -> None:
    channel = a_channel_with_one_message(secured, "anon-control")
    before = broker_figures(secured.metrics)["control_refused"]
    dealer = connect(zmq.DEALER, secured.endpoints["control"])
    dealer.send_multipart(snapshot_request(channel))
    dealer.send_multipart(wire.encode_request(wire.Request(wire.DELETE, 2, channel)))
    dealer.send_multipart(wire.encode_presence(wire.Presence({channel: (10**9, time.time())})))
    refused_more(secured, "control", before)
    nothing_arrives(dealer)
    held = info(secured.edge, channel)
    assert held is not None and held["messages"] == 1 and held["subscribers"] == 0
    assert walk(secured.edge, channel, 1) == [b"held"]


def test_an_anonymous_subscriber_on_events_reads_no_message(
    secured: Secured, connect: Connect
) -> None:
    before = broker_figures(secured.metrics)["events_refused"]
    sub = connect(zmq.SUB, secured.endpoints["events"])
    sub.subscribe(b"")
    refused_more(secured, "events", before)
    channel = fresh("anon-events")
    for n in range(5):
        publish(secured.edge, channel, f"secret {n}")
    assert len(walk(secured.edge, channel, 5)) == 5
    nothing_arrives(sub)


def test_a_publisher_key_opens_the_ingress_and_not_the_control_port(
    fresh_secured: Secured, connect: Connect
) -> None:
    keys = publisher_keys(fresh_secured.curve)
    channel = fresh("publisher-key")
    ingress = connect(zmq.DEALER, fresh_secured.endpoints["ingress"], keys)
    ingress.send(PublishPacker()(channel, b"by the publisher", "text/plain", b"pub", 0, 0))
    assert ingress.poll(10_000), "no ack for the publisher's key on the ingress"
    assert wire.decode_ack(ingress.recv_multipart()).seq == 0
    assert walk(fresh_secured.edge, channel, 1) == [b"by the publisher"]

    before = broker_figures(fresh_secured.metrics)["control_refused"]
    control = connect(zmq.DEALER, fresh_secured.endpoints["control"], keys)
    control.send_multipart(snapshot_request(channel))
    control.send_multipart(wire.encode_request(wire.Request(wire.DELETE, 2, channel)))
    refused_more(fresh_secured, "control", before)
    nothing_arrives(control)
    assert info(fresh_secured.edge, channel) is not None
    events = connect(zmq.SUB, fresh_secured.endpoints["events"], keys)
    events.subscribe(b"")
    publish(fresh_secured.edge, channel, "for edges only")
    nothing_arrives(events)
    identity = keys.public.decode()
    eventually(
        lambda: any(
            "control port" in line and identity in line for line in fresh_secured.broker.lines
        ),
        10,
        "the refusal logged with the publisher's key",
    )


def test_a_key_in_no_allow_list_is_refused_on_every_port(
    fresh_secured: Secured, connect: Connect
) -> None:
    keys = stranger_keys(fresh_secured.curve)
    channel = a_channel_with_one_message(fresh_secured, "stranger")
    before = broker_figures(fresh_secured.metrics)
    ingress = connect(zmq.DEALER, fresh_secured.endpoints["ingress"], keys)
    ingress.send(PublishPacker()(channel, b"forged", "text/plain", b"stranger", 0, 0))
    control = connect(zmq.DEALER, fresh_secured.endpoints["control"], keys)
    control.send_multipart(snapshot_request(channel))
    events = connect(zmq.SUB, fresh_secured.endpoints["events"], keys)
    events.subscribe(b"")
    for port in curve.PORTS:
        refused_more(fresh_secured, port, before[f"{port}_refused"])
    publish(fresh_secured.edge, channel, "after")
    for sock in (ingress, control, events):
        nothing_arrives(sock, QUIET / 3)
    assert walk(fresh_secured.edge, channel, 2) == [b"held", b"after"]
    identity = keys.public.decode()
    for port in curve.PORTS:
        assert any(
            f"{port} port" in line and identity in line for line in fresh_secured.broker.lines
        )


def reloads(secured: Secured, result: str) -> int:
    """How many times the broker read its allow-lists again with this result, as its
    metrics say."""
    text = httpx.get(secured.metrics, timeout=10).text
    found = re.search(
        rf'^pushserver_broker_curve_reloads_total{{result="{result}"}} (\S+)$', text, re.M
    )
    assert found is not None, "no reload counter on the broker's metrics"
    return int(float(found.group(1)))


def reload_allow_lists(secured: Secured, result: str) -> None:
    before = reloads(secured, result)
    secured.broker.popen.send_signal(signal.SIGHUP)
    eventually(lambda: reloads(secured, result) > before, 10, f"a reload counted {result}")


def answers_control(secured: Secured, connect: Connect, keys: curve.ClientKeys) -> bool:
    """Whether a control socket with `keys` gets a reply to a snapshot request."""
    control = connect(zmq.DEALER, secured.endpoints["control"], keys)
    control.send_multipart(snapshot_request(fresh("reload")))
    answered = bool(control.poll(round(3 * QUIET * 1000)))
    control.close(linger=0)
    return answered


def test_sighup_reads_the_allow_lists_again_and_keeps_them_when_one_is_broken(
    fresh_secured: Secured, connect: Connect, tmp_path: Path
) -> None:
    folder = Path(fresh_secured.curve["edge_keys"]).parent
    layout, _ = curve.create_key_files(folder, publishers=[], edges=["edge-2"])
    added = curve.load_client_keys(
        curve.ClientFiles(layout.broker_public_key, layout.secret_key("edge-2"))
    )
    # Written after the broker started: refused until it reads the lists again.
    assert not answers_control(fresh_secured, connect, added)
    reload_allow_lists(fresh_secured, "read")
    assert answers_control(fresh_secured, connect, added)
    assert any("read the CURVE allow-lists again" in line for line in fresh_secured.broker.lines)

    # The publisher's key removed: its next handshake on the ingress is refused.
    publisher = publisher_keys(fresh_secured.curve)
    removed = layout.publisher_keys / f"{curve.PUBLISHER_NAME}{curve.PUBLIC_SUFFIX}"
    removed.rename(tmp_path / removed.name)
    reload_allow_lists(fresh_secured, "read")
    before = broker_figures(fresh_secured.metrics)["ingress_refused"]
    ingress = connect(zmq.DEALER, fresh_secured.endpoints["ingress"], publisher)
    ingress.send(PublishPacker()(fresh("revoked"), b"revoked", "text/plain", b"rev", 0, 0))
    refused_more(fresh_secured, "ingress", before)
    nothing_arrives(ingress)

    # A file in an allow-list that is no key: the lists stay as they were read last.
    (layout.edge_keys / "broken.key").write_text("not a key\n")
    reload_allow_lists(fresh_secured, "kept")
    assert answers_control(fresh_secured, connect, added)
    assert any("kept the CURVE allow-lists" in line for line in fresh_secured.broker.lines)
    channel = a_channel_with_one_message(fresh_secured, "after-reloads")
    assert info(fresh_secured.edge, channel) is not None


def test_refusals_are_counted_and_logged_a_few_times_a_minute_with_the_identity(
    fresh_secured: Secured, connect: Connect
) -> None:
    attempts = 3 * LOG_LINES
    dealers = [connect(zmq.DEALER, fresh_secured.endpoints["control"]) for _ in range(attempts)]
    eventually(
        lambda: broker_figures(fresh_secured.metrics)["control_refused"] >= attempts,
        20,
        f"{attempts} refusals counted",
    )
    for dealer in dealers:
        dealer.close(linger=0)
    told = [line for line in fresh_secured.broker.lines if "refused a connection" in line]
    assert len(told) == LOG_LINES, told
    assert all("control port" in line and "anonymous" in line for line in told)
    counted = re.findall(r"\((\d+) so far\)", "\n".join(told))
    assert [int(n) for n in counted] == list(range(1, LOG_LINES + 1))


def test_the_management_commands_files_connect_broker_edge_and_send_update(
    launcher: Launcher, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    module = launcher.settings({})
    printed = launcher.manage(module, "pushserver_keys", str(keys))
    setting = curve.KeyLayout(keys).setting()
    for path in setting.values():
        assert path in printed and Path(path).exists()
    # Each part gets only the files its host would hold.
    broker_keys = {k: setting[k] for k in ("broker_secret_key", "publisher_keys", "edge_keys")}
    edge_keys = {k: setting[k] for k in ("broker_public_key", "edge_secret_key")}
    django_keys = {k: setting[k] for k in ("broker_public_key", "publisher_secret_key")}
    _, endpoints = launcher.broker(store=STORE, curve=broker_keys)
    _, edge = launcher.edge(endpoints, store=STORE, curve=edge_keys)
    channel = fresh("by-command")
    publish(edge, channel, "by HTTP")
    shell = launcher.settings({"broker": endpoints, "curve": django_keys})
    code = f"from pushserver.utils import updates; updates.send_update({channel!r}, 'by send')"
    launcher.manage(shell, "shell", "-c", code)
    assert walk(edge, channel, 2) == [b"by HTTP", b'"by send"']


def test_the_management_command_adds_clients_and_never_overwrites_a_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    call_command("pushserver_keys", str(keys), stdout=io.StringIO())
    broker_key = (keys / "broker.key_secret").read_bytes()
    call_command("pushserver_keys", str(keys), "--edge", "edge-2", stdout=io.StringIO())
    assert (keys / "broker.key_secret").read_bytes() == broker_key
    assert sorted(p.name for p in (keys / "edges").iterdir()) == ["edge-2.key", "edge.key"]
    with pytest.raises(CommandError, match="refusing to overwrite"):
        call_command("pushserver_keys", str(keys), stdout=io.StringIO())
    with pytest.raises(CommandError, match="must be letters"):
        call_command("pushserver_keys", str(keys), "--edge", "../evil", stdout=io.StringIO())
    with pytest.raises(CommandError, match="a name of its own"):
        call_command("pushserver_keys", str(keys), "--publisher", "x", "--edge", "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(CommandError, match="not a directory"):
        call_command("pushserver_keys", str(tmp_path / "file"))


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[dict[str, str]]:
    made, _ = curve.create_key_files(tmp_path / "keys")
    yield made.setting()


def curve_messages(setting: dict[str, Any], **push: Any) -> list[str]:
    with override_settings(PUSH_SERVER={"curve": setting, **push}):
        return [str(message.id) for message in checks.check_settings()]


def test_the_commands_layout_passes_the_checks_for_every_part(layout: dict[str, str]) -> None:
    with override_settings(PUSH_SERVER={"curve": layout}):
        assert checks.check_settings() == []
        for role in (checks.BROKER, checks.EDGE, checks.PUBLISHER):
            assert checks.check_curve_role(role) == []


def test_each_part_is_told_which_key_it_lacks(layout: dict[str, str]) -> None:
    edge_only = {k: layout[k] for k in ("broker_public_key", "edge_secret_key")}
    with override_settings(PUSH_SERVER={"curve": edge_only}):
        assert checks.check_settings() == []
        assert checks.check_curve_role(checks.EDGE) == []
        broker = checks.check_curve_role(checks.BROKER)
        publisher = checks.check_curve_role(checks.PUBLISHER)
        with pytest.raises(CommandError, match=rules.CURVE_ROLE_KEY_MISSING.id):
            call_command("runpushserver", "--role=broker", stdout=io.StringIO())
    assert [m.id for m in broker + publisher] == [rules.CURVE_ROLE_KEY_MISSING.id] * 2
    assert "'broker_secret_key'" in broker[0].msg and "'edge_keys'" in broker[0].msg
    assert "'publisher_secret_key'" in publisher[0].msg


def test_a_public_key_where_a_pair_belongs_and_a_bad_allow_list_file_are_not_keys(
    layout: dict[str, str],
) -> None:
    pair_expected = {"edge_secret_key": layout["broker_public_key"]}
    assert curve_messages(pair_expected) == [rules.CURVE_NOT_A_KEY.id]
    (Path(layout["edge_keys"]) / "stray.key").write_text("not a key\n")
    assert curve_messages({"edge_keys": layout["edge_keys"]}) == [rules.CURVE_NOT_A_KEY.id]
    # A file where the allow-list folder belongs.
    assert curve_messages({"publisher_keys": layout["broker_public_key"]}) == [
        rules.CURVE_FILE_UNREADABLE.id
    ]


def test_open_ports_beyond_loopback_warn_until_curve_is_on(layout: dict[str, str]) -> None:
    beyond = {"broker": {"ingress": "tcp://*:5560", "events": "tcp://10.0.0.10:5561"}}
    with override_settings(PUSH_SERVER=beyond):
        found = checks.check_settings()
    assert [m.id for m in found] == [rules.OPEN_BROKER_PORTS.id]
    assert "ingress 'tcp://*:5560'" in found[0].msg and "events" in found[0].msg
    assert "control" not in found[0].msg
    assert curve_messages(layout, **beyond) == []
    local = {"broker": {"ingress": "ipc:///run/push/in", "events": "tcp://[::1]:5561"}}
    with override_settings(PUSH_SERVER=local):
        assert checks.check_settings() == []
