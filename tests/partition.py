"""A host cut off the network: its packets dropped, so no FIN, RST or ACK ever comes.

Killing a process lets its kernel close the connections, and freezing it lets
its kernel go on acknowledging what arrives; neither is what a peer sees when
a host loses power or a switch fails, where only timeouts can tell. This drops
every TCP packet to or from a set of loopback ports with an nftables table of
its own (`nft`, installed by `make test`), which is removed when the
partition heals. The trap: the table is the machine's, not the test's; each
has a name of its own and is removed even when the test fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from types import TracebackType
from urllib.parse import urlsplit


def port_of(address: str) -> int:
    """The port of `tcp://host:port` or `http://host:port/...` or `host:port`."""
    if "://" not in address:
        address = f"tcp://{address}"
    port = urlsplit(address).port
    assert port is not None, address
    return port


def nft(script: str) -> None:
    result = subprocess.run(
        ["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"nft refused:\n{script}\n{result.stderr}"


class Partition:
    """Cuts the given loopback ports off while active; `heal` (or leaving) undoes it."""

    def __init__(self, ports: Iterable[int]) -> None:
        self.ports = sorted(set(ports))
        self.table = f"pushserver_partition_{os.getpid()}_{id(self)}"
        self.active = False

    def cut(self) -> None:
        ports = ", ".join(str(port) for port in self.ports)
        rules = f"tcp sport {{ {ports} }} drop; tcp dport {{ {ports} }} drop"
        nft(
            f"table inet {self.table} {{\n"
            f"  chain out {{ type filter hook output priority -10; {rules}; }}\n"
            f"  chain in {{ type filter hook input priority -10; {rules}; }}\n"
            "}\n"
        )
        self.active = True

    def heal(self) -> None:
        if self.active:
            nft(f"delete table inet {self.table}\n")
            self.active = False

    def __enter__(self) -> Partition:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.heal()
