"""A broker process built straight from BrokerConfig fields, for fields PUSH_SERVER does not carry.

`python -m tests.configured_broker '{"channel_linger": 1}'` binds ephemeral
ports and prints the banner `runpushserver` prints, so `BROKER_LINE` finds
its endpoints; SIGTERM stops it gracefully, as it stops `runpushserver`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from broker.config import BrokerConfig
from ops.launch import ANY_PORT
from pushserver import runner
from tests.processes import BROKER_LINE, Launcher, Process


def start(launcher: Launcher, **fields: Any) -> tuple[Process, dict[str, str]]:
    """Start such a broker with `launcher`; returns it and its endpoints."""
    command = [sys.executable, "-m", "tests.configured_broker", json.dumps(fields)]
    process = launcher.spawn("broker", command, launcher.environment("tests.django_settings"))
    return process, process.wait_for(BROKER_LINE).groupdict()


def _announce(listening: runner.Listening) -> None:
    endpoints = listening.broker
    assert endpoints is not None
    print(
        f"Broker listening: ingress {endpoints.ingress}, events {endpoints.events}, "
        f"control {endpoints.control}",
        flush=True,
    )


def main(fields: dict[str, Any]) -> None:
    if fields.get("history_file"):
        fields["history_file"] = Path(fields["history_file"])
    config = dataclasses.replace(BrokerConfig(**ANY_PORT), **fields)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    runner.run(config, None, on_ready=_announce)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
