"""Who may use the edge's trusted locations (publisher, metrics): an address list or a secret."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

import tornado.httputil

from edge.protocol import PUSH_SECRET


class TrustedCallers:
    def __init__(self, networks: Iterable[str], secret: str | None) -> None:
        self.networks = [ipaddress.ip_network(network, strict=False) for network in networks]
        self.secret = secret.encode() if secret else None

    def admit(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        remote = (request.remote_ip or "").split("%")[0]
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            address = None
        if address is not None and any(address in network for network in self.networks):
            return True
        given = request.headers.get(PUSH_SECRET)
        return bool(self.secret and given and hmac.compare_digest(self.secret, given.encode()))
