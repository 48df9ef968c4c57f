"""The tests start processes as the local cluster launcher does, with the tests' own settings."""

from __future__ import annotations

from pathlib import Path

from ops import launch
from ops.launch import (
    ANY_PORT,
    BROKER_LINE,
    EDGE_LINE,
    ROOT,
    Process,
    eventually,
    free_port,
)

__all__ = [
    "ANY_PORT",
    "BROKER_LINE",
    "EDGE_LINE",
    "ROOT",
    "Launcher",
    "Process",
    "eventually",
    "free_port",
]


class Launcher(launch.Launcher):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder, base="tests.django_settings")
