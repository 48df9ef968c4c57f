"""CURVE on the cluster's ZeroMQ links: key files, the broker's allow-lists, refusals told.

The broker holds a server key pair; every publisher (`send_update`'s
sockets) and every edge holds a client pair and the broker's public key.
libzmq does the cryptography; this module only loads key files written by
`zmq.auth.create_certificates`, puts them on sockets, and runs the ZAP
handler of `zmq.auth` that admits a client key per port:

* ingress: the keys in ``publisher_keys`` and in ``edge_keys`` (an edge's
  publisher location publishes there);
* events and control: the keys in ``edge_keys`` only, so a web server's
  leaked key can neither read every channel, nor fetch snapshots, nor
  delete channels.

Each broker socket names its port as its ZAP domain, and the handler keeps
one allow-list per domain. The traps:

* without a ZAP handler, libzmq's CURVE admits every client that knows the
  server's public key: the handler must be running before the broker's
  sockets bind, and for as long as they are open;
* a client without CURVE (or with another server key) fails its handshake
  before ZAP is asked, so the handler never sees it: those refusals come
  from a socket monitor, and their identity is "anonymous";
* pyzmq's authenticator tells nobody whom it refused; the hook here is its
  `_authenticate_curve`, which tests/test_curve.py pins;
* the handler reads the allow-list directories when the broker starts and
  again on `Gatekeeper.reload` (the broker's SIGHUP): a key added or
  removed counts from the next handshake after it, and a connection a
  removed key already made stays open until it closes (ZeroMQ cannot close
  one peer of a socket), so a leaked key is cut off by a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

INGRESS = "ingress"
EVENTS = "events"
CONTROL = "control"
PORTS = (INGRESS, EVENTS, CONTROL)
# The standby link between a pair's two brokers, which share the broker's key pair:
# only that key opens it.
PEER = "peer"
ANONYMOUS = "anonymous"

# The layout `create_key_files` writes and the README's settings name.
BROKER_NAME = "broker"
PUBLISHER_NAME = "publisher"
EDGE_NAME = "edge"
PUBLISHER_KEYS_DIR = "publishers"
EDGE_KEYS_DIR = "edges"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
# A key file's name is also its file name; nothing that could leave the folder.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A z85 CURVE key: 32 bytes as 40 characters.
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")

# Handshakes that failed before ZAP was asked: no CURVE, another server key, garbage.
_FAILED_BEFORE_ZAP = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class KeyFileError(ValueError):
    """A key file or an allow-list directory that cannot serve."""


@dataclass(frozen=True, slots=True)
class ServerFiles:
    """What the broker reads: its own pair and one allow-list directory per kind of client."""

    secret_key: Path
    publisher_keys: Path
    edge_keys: Path


@dataclass(frozen=True, slots=True)
class ClientFiles:
    """What a publisher or an edge reads: its own pair and the broker's public key."""

    broker_public_key: Path
    secret_key: Path


@dataclass(frozen=True, slots=True)
class ServerKeys:
    files: ServerFiles
    public: bytes
    secret: bytes
    # z85 public keys admitted, by port.
    allowed: dict[str, frozenset[bytes]]


@dataclass(frozen=True, slots=True)
class ClientKeys:
    broker_public: bytes
    public: bytes
    secret: bytes


def _read(path: Path) -> tuple[bytes | None, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        return None, None
    except OSError as exc:
        raise KeyFileError(f"{path} cannot be read: {exc.strerror or exc}") from None
    valid = [
        key if key is not None and _Z85_KEY.fullmatch(key) else None for key in (public, secret)
    ]
    return valid[0], valid[1]


def public_key(path: Path) -> bytes:
    """The z85 public key in a key file (a public one, or a pair); KeyFileError if none."""
    public, _ = _read(path)
    if public is None:
        raise KeyFileError(f"{path} holds no CURVE public key")
    return public


def key_pair(path: Path) -> tuple[bytes, bytes]:
    """The z85 (public, secret) pair in a secret key file; KeyFileError if it holds none."""
    public, secret = _read(path)
    if public is None or secret is None:
        raise KeyFileError(f"{path} holds no CURVE key pair (a `{SECRET_SUFFIX}` file)")
    return public, secret


def allow_list(directory: Path) -> frozenset[bytes]:
    """The public keys of every `*.key` file in `directory`; KeyFileError if one is not a key."""
    if not directory.is_dir():
        raise KeyFileError(f"{directory} is not a directory")
    try:
        files = sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))
    except OSError as exc:
        raise KeyFileError(f"{directory} cannot be read: {exc.strerror or exc}") from None
    return frozenset(public_key(path) for path in files)


def load_server_keys(files: ServerFiles) -> ServerKeys:
    public, secret = key_pair(files.secret_key)
    return ServerKeys(files, public, secret, allowed_keys(files, public))


def allowed_keys(files: ServerFiles, public: bytes) -> dict[str, frozenset[bytes]]:
    """The keys each port admits, read from the allow-lists; the peer port admits the
    broker's own key (`public`), which both brokers of a pair hold."""
    publishers = allow_list(files.publisher_keys)
    edges = allow_list(files.edge_keys)
    return {
        INGRESS: publishers | edges,
        EVENTS: edges,
        CONTROL: edges,
        PEER: frozenset({public}),
    }


def load_client_keys(files: ClientFiles) -> ClientKeys:
    public, secret = key_pair(files.secret_key)
    return ClientKeys(public_key(files.broker_public_key), public, secret)


def apply_server(sock: zmq.Socket[Any], keys: ServerKeys, port: str) -> None:
    """Make `sock` (not yet bound) a CURVE server whose clients the handler checks as `port`."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = port.encode()


def peer_client_keys(keys: ServerKeys) -> ClientKeys:
    """The keys a broker of a pair connects to its peer with: the pair's own."""
    return ClientKeys(keys.public, keys.public, keys.secret)


def apply_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    """Make `sock` (not yet connected) a CURVE client of the broker."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.broker_public


# Told of each refusal: the port, the client's identity (z85 key or "anonymous"), why.
Refused = Callable[[str, str, str], None]


class Gatekeeper(AsyncioAuthenticator):
    """`zmq.auth`'s ZAP handler on the broker's loop, one allow-list per port, telling
    `refused` of every key it turns away."""

    def __init__(self, context: zmq.asyncio.Context, keys: ServerKeys, refused: Refused) -> None:
        super().__init__(context)
        self._keys = keys
        self._refused = refused
        self._address = ""

    def start(self) -> None:
        super().start()
        try:
            self._configure()
        except KeyFileError:
            self.stop()
            raise

    def reload(self) -> ServerKeys:
        """Read the allow-lists again, as `configure_curve` wants after keys were added or
        removed; returns what they hold now. KeyFileError, and the lists stay as they were,
        when one cannot serve."""
        # Copied a list at a time: `_configure` adds to the ingress's list in place.
        before = self._keys
        certs = {domain: dict(keys) for domain, keys in self.certs.items()}
        self._keys = replace(before, allowed=allowed_keys(before.files, before.public))
        try:
            self._configure()
        except KeyFileError:
            self._keys, self.certs = before, certs
            raise
        return self._keys

    def _configure(self) -> None:
        files = self._keys.files
        self.configure_curve(domain=INGRESS, location=files.publisher_keys)
        self.configure_curve(domain=EVENTS, location=files.edge_keys)
        self.configure_curve(domain=CONTROL, location=files.edge_keys)
        # An edge's publisher location publishes on the ingress: its keys open it too.
        self.certs.setdefault(INGRESS, {}).update(self.certs.get(EVENTS, {}))
        # configure_curve only logs a directory it cannot read; the lists were judged
        # when the keys were loaded, so a difference means they changed since.
        loaded = {port: frozenset(self.certs.get(port, {})) for port in PORTS}
        self.certs[PEER] = {self._keys.public: True}
        if loaded != {port: self._keys.allowed[port] for port in PORTS}:
            raise KeyFileError(
                f"the allow-lists in {files.publisher_keys} and {files.edge_keys} "
                "changed while the broker read them"
            )

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The peer's address, for the refusal's log line.
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            identity = z85.encode(client_key).decode("ascii")
            where = f" from {self._address}" if self._address else ""
            self._refused(domain, identity, f"key not in the {domain} allow-list{where}")
        return allowed, reason


Monitors = dict[str, tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]]


def monitor_handshakes(sockets: dict[str, zmq.asyncio.Socket]) -> Monitors:
    """Monitor sockets for these server sockets' failed handshakes, made before they bind:
    a client without CURVE does not try again, so one refused before anyone watched would
    never be counted. Each monitor holds its events until `watch_handshakes` reads them."""
    return {
        port: (sock, sock.get_monitor_socket(_FAILED_BEFORE_ZAP)) for port, sock in sockets.items()
    }


async def watch_handshakes(monitors: Monitors, refused: Refused) -> None:
    """Tell `refused` of every handshake that failed before ZAP was asked (a client
    without CURVE, or with another server key), until cancelled."""
    poller = zmq.asyncio.Poller()
    ports = {}
    for port, (_, monitor) in monitors.items():
        poller.register(monitor, zmq.POLLIN)
        ports[monitor] = port
    try:
        while True:
            for monitor, _ in await poller.poll():
                frames = await cast(zmq.asyncio.Socket, monitor).recv_multipart()
                event = parse_monitor_message(frames)
                if event["event"] & _FAILED_BEFORE_ZAP:
                    refused(ports[monitor], ANONYMOUS, "handshake without a CURVE key it knows")
    finally:
        for sock, monitor in monitors.values():
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            monitor.close(linger=0)


def _refuse_name(name: str) -> None:
    if not KEY_NAME.fullmatch(name):
        raise KeyFileError(
            f"key name {name!r} must be letters, digits, '.', '-' or '_' "
            "(up to 64, starting with a letter or digit)"
        )


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Where `create_key_files` put each file, as the `curve` setting names them."""

    folder: Path

    @property
    def broker_public_key(self) -> Path:
        return self.folder / f"{BROKER_NAME}{PUBLIC_SUFFIX}"

    @property
    def broker_secret_key(self) -> Path:
        return self.folder / f"{BROKER_NAME}{SECRET_SUFFIX}"

    def secret_key(self, name: str) -> Path:
        return self.folder / f"{name}{SECRET_SUFFIX}"

    @property
    def publisher_keys(self) -> Path:
        return self.folder / PUBLISHER_KEYS_DIR

    @property
    def edge_keys(self) -> Path:
        return self.folder / EDGE_KEYS_DIR

    def setting(self, publisher: str = PUBLISHER_NAME, edge: str = EDGE_NAME) -> dict[str, str]:
        """The ``PUSH_SERVER['curve']`` dict naming these files."""
        return {
            "broker_public_key": str(self.broker_public_key),
            "broker_secret_key": str(self.broker_secret_key),
            "publisher_secret_key": str(self.secret_key(publisher)),
            "edge_secret_key": str(self.secret_key(edge)),
            "publisher_keys": str(self.publisher_keys),
            "edge_keys": str(self.edge_keys),
        }


def create_key_files(
    folder: Path, publishers: Iterable[str] = (PUBLISHER_NAME,), edges: Iterable[str] = (EDGE_NAME,)
) -> tuple[KeyLayout, list[Path]]:
    """Write the broker's pair (unless there is one) and a pair per client name into
    `folder`, each client's public key into its allow-list; returns the files written.

    Never overwrites a key: a client name already in use is a KeyFileError, so a
    second run adds clients to the same broker.
    """
    publishers, edges = list(publishers), list(edges)
    names = publishers + edges
    for name in names:
        _refuse_name(name)
    if BROKER_NAME in names or len(set(names)) != len(names):
        raise KeyFileError(
            f"each client needs a name of its own, other than {BROKER_NAME!r}; got {names}"
        )
    layout = KeyLayout(folder)
    taken = [
        path
        for name in names
        for path in (
            layout.secret_key(name),
            layout.publisher_keys / f"{name}{PUBLIC_SUFFIX}",
            layout.edge_keys / f"{name}{PUBLIC_SUFFIX}",
        )
        if path.exists()
    ]
    if taken:
        raise KeyFileError(f"refusing to overwrite keys: {', '.join(map(str, taken))}")
    written: list[Path] = []
    try:
        for directory in (folder, layout.publisher_keys, layout.edge_keys):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not layout.broker_secret_key.exists():
            written += _create_pair(folder, BROKER_NAME)
        for names_of_kind, allowed in (
            (publishers, layout.publisher_keys),
            (edges, layout.edge_keys),
        ):
            for name in names_of_kind:
                public, secret = _create_pair(folder, name)
                # The public half goes where the broker reads its allow-list.
                moved = allowed / public.name
                public.rename(moved)
                written += [moved, secret]
    except OSError as exc:
        raise KeyFileError(f"could not write keys into {folder}: {exc.strerror or exc}") from None
    return layout, written


def _create_pair(folder: Path, name: str) -> list[Path]:
    # The secret file is created readable by its owner only, before a key is in it.
    secret = folder / f"{name}{SECRET_SUFFIX}"
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    public_file, secret_file = zmq.auth.create_certificates(folder, name)
    return [Path(public_file), Path(secret_file)]


async def stop_gatekeeper(gatekeeper: Gatekeeper | None) -> None:
    """Stop the handler and let its task see the cancellation, before the context closes."""
    if gatekeeper is not None:
        gatekeeper.stop()
        await asyncio.sleep(0)
