"""Who may use the edge's trusted locations (publisher, metrics): an address list or a secret."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

import tornado.httputil

from edge.protocol import PUSH_SECRET

# Addresses judged, remembered; cleared when full, since judging one again is cheap.
CACHE_LIMIT = 4096


class TrustedCallers:
    def __init__(self, networks: Iterable[str], secret: str | None) -> None:
        self.networks = [ipaddress.ip_network(network, strict=False) for network in networks]
        self.secret = secret.encode() if secret else None
        self._allowed: dict[str, bool] = {}

    def admit(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        return self.admits(request.remote_ip or "", request.headers.get(PUSH_SECRET))

    def admits(self, remote_ip: str, secret: str | None) -> bool:
        """Whether a caller from `remote_ip` (as the connection reports it) holding `secret`
        (the X-Push-Secret header, or None) is trusted."""
        allowed = self._allowed.get(remote_ip)
        if allowed is None:
            allowed = self._in_networks(remote_ip)
            if len(self._allowed) >= CACHE_LIMIT:
                self._allowed.clear()
            self._allowed[remote_ip] = allowed
        if allowed:
            return True
        return bool(
            self.secret and secret and hmac.compare_digest(self.secret, secret.encode("latin-1"))
        )

    def _in_networks(self, remote_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(remote_ip.split("%")[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)
