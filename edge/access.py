"""Who may use the edge's trusted locations (publisher, metrics): an address list or a secret.

`within` is also how the passthrough decides which peers are proxies it trusts.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

import tornado.httputil

from edge.protocol import PUSH_SECRET

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class TrustedCallers:
    def __init__(self, allowed: Iterable[str], secret: str | None) -> None:
        self.networks = networks(allowed)
        self.secret = secret.encode() if secret else None

    def admit(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        if within(request.remote_ip or "", self.networks):
            return True
        given = request.headers.get(PUSH_SECRET)
        return bool(self.secret and given and hmac.compare_digest(self.secret, given.encode()))
