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
# Addresses judged, remembered; cleared when full, since judging one again is cheap.
CACHE_LIMIT = 4096


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
        self._allowed: dict[str, bool] = {}

    def admit(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        return self.admits(request.remote_ip or "", request.headers.get(PUSH_SECRET))

    def admits(self, remote_ip: str, secret: str | None) -> bool:
        """Whether a caller from `remote_ip` (as the connection reports it) holding `secret`
        (the X-Push-Secret header, or None) is trusted."""
        allowed = self._allowed.get(remote_ip)
        if allowed is None:
            allowed = within(remote_ip, self.networks)
            if len(self._allowed) >= CACHE_LIMIT:
                self._allowed.clear()
            self._allowed[remote_ip] = allowed
        if allowed:
            return True
        # Header values arrive as latin-1 text: these are the bytes the caller sent.
        return bool(
            self.secret and secret and hmac.compare_digest(self.secret, secret.encode("latin-1"))
        )
