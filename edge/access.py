"""Who may use the edge's trusted locations (publisher, metrics): an address list or a secret,
and which address a request is judged by.

The trap: a balancer on the edge's host connects from loopback, which the
default `allow_from` trusts, so judging the peer's address would admit
every request the balancer forwards from the world. A peer in
`forwarded_allow_ips` is a proxy that writes what it saw of its client
(the configs in ops/ overwrite these headers, never passing the
browser's own on), so behind it a request is judged by the client it
reports (`Proxies.client`); from any other peer, by the peer itself.

`within` is also how the passthrough decides which peers are proxies it trusts.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

import tornado.httputil

from edge.connection import Request
from edge.protocol import PUSH_SECRET

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Addresses judged, remembered; cleared when full, since judging one again is cheap.
CACHE_LIMIT = 4096
# Headers in which a proxy reports its client, lowercase, in the order they are believed.
FORWARDING = (b"x-forwarded-for", b"x-real-ip", b"forwarded")


def networks(written: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(network, strict=False) for network in written]


def within(remote: str, allowed: Iterable[Network]) -> bool:
    """Whether the address `remote` (as a socket or a header gives it) is in `allowed`."""
    try:
        address = ipaddress.ip_address(remote.strip().split("%")[0])
    except ValueError:
        return False
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed)


def forwarded_for(value: str) -> list[str]:
    """The `for=` addresses of a Forwarded header (RFC 7239), nearest hop last, without
    quotes, brackets or ports; an obfuscated or unknown one as written."""
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, node = pair.strip().partition("=")
            if name.strip().lower() != "for":
                continue
            node = node.strip().strip('"')
            if node.startswith("["):
                node = node[1:].partition("]")[0]
            elif node.count(":") == 1:
                node = node.partition(":")[0]
            hops.append(node)
    return hops


class Proxies:
    """The peers trusted to report their client (`forwarded_allow_ips`)."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks = networks(trusted)
        # Parsing an address costs tens of microseconds, asked twice per request.
        self._trusted: dict[str, bool] = {}

    def trusts(self, peer: str) -> bool:
        trusted = self._trusted.get(peer)
        if trusted is None:
            trusted = within(peer, self.networks)
            if len(self._trusted) >= CACHE_LIMIT:
                self._trusted.clear()
            self._trusted[peer] = trusted
        return trusted

    def client(
        self,
        peer: str,
        x_forwarded_for: str | None,
        x_real_ip: str | None = None,
        forwarded: str | None = None,
    ) -> str:
        """The address a request from `peer` is judged by: the peer, or behind a trusted
        proxy the nearest reported hop that is not one (the farther ones are the client's
        to invent). A trusted proxy's header that names no address gives "", which no
        address list admits: a report that cannot be read is not the proxy's own."""
        if not self.trusts(peer):
            return peer
        if x_forwarded_for is not None:
            hops = [hop.strip() for hop in x_forwarded_for.split(",")]
        elif x_real_ip is not None:
            hops = [x_real_ip.strip()]
        elif forwarded is not None:
            hops = forwarded_for(forwarded)
        else:
            return peer  # the proxy's own request, or a process on its host
        for hop in reversed(hops):
            if not hop or not self.trusts(hop):
                return hop
        return hops[0] if hops else ""


class TrustedCallers:
    def __init__(self, allowed: Iterable[str], secret: str | None, proxies: Proxies) -> None:
        self.networks = networks(allowed)
        self.secret = secret.encode() if secret else None
        self.proxies = proxies
        self._allowed: dict[str, bool] = {}

    def admit(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        """For Tornado's handlers (metrics)."""
        headers = request.headers
        client = self.proxies.client(
            request.remote_ip or "",
            *(headers.get(name.decode()) for name in FORWARDING),
        )
        return self.admits(client, headers.get(PUSH_SECRET))

    def admit_request(self, request: Request, secret: str | None) -> bool:
        """For the edge's own locations (publisher), `secret` read from the request."""
        peer = request.remote_ip
        if self.proxies.trusts(peer):
            client = self.proxies.client(peer, *request.headers_named(*FORWARDING))
        else:
            client = peer
        return self.admits(client, secret)

    def admits(self, client: str, secret: str | None) -> bool:
        """Whether a caller judged by the address `client` (`Proxies.client`) holding
        `secret` (the X-Push-Secret header, or None) is trusted."""
        allowed = self._allowed.get(client)
        if allowed is None:
            allowed = bool(client) and within(client, self.networks)
            if len(self._allowed) >= CACHE_LIMIT:
                self._allowed.clear()
            self._allowed[client] = allowed
        if allowed:
            return True
        # Header values arrive as latin-1 text: these are the bytes the caller sent.
        return bool(
            self.secret and secret and hmac.compare_digest(self.secret, secret.encode("latin-1"))
        )
