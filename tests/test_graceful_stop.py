"""A broker stopped gracefully acknowledges everything it sequenced, so a broker started after
it, even without a history file, sequences nothing a second time."""

from __future__ import annotations

import ast
import re
import threading

from django.test.utils import override_settings

from pushserver import sender
from pushserver.utils import updates
from tests.client import fresh
from tests.processes import BROKER_LINE, Launcher, Process, eventually, free_port

MESSAGES = 200_000
STOPPED = re.compile(r"broker stopped; (\{.*\})")


def published(broker: Process) -> int:
    """What the broker said it sequenced, in the line it logs as it stops."""
    counters = ast.literal_eval(broker.wait_for(STOPPED).group(1))
    count: int = counters.get("published", 0)
    return count


def test_a_broker_stopped_with_publishes_in_flight_acknowledges_all_it_sequenced(
    launcher: Launcher,
) -> None:
    endpoints = {
        name: f"tcp://127.0.0.1:{free_port()}" for name in ("ingress", "events", "control")
    }
    push_server = {
        "broker": endpoints,
        "send_queue_size": MESSAGES,
        "send_timeout": 10,
        # Publishers queue through the restart instead of giving up.
        "broker_unreachable_timeout": 60,
    }
    first = launcher.start("broker", push_server, "--role=broker")
    first.wait_for(BROKER_LINE)
    channel = fresh("stopped")
    sent = 0
    failed: list[BaseException] = []

    def publish() -> None:
        nonlocal sent
        try:
            with override_settings(PUSH_SERVER=push_server):
                sender.close()
                for n in range(MESSAGES):
                    updates.send_update(channel, n)
                    sent += 1
                eventually(lambda: sender.pending() == 0, 60, "every message acknowledged")
                sender.close()
        except BaseException as error:
            failed.append(error)

    publishing = threading.Thread(target=publish, daemon=True)
    publishing.start()
    eventually(lambda: sent >= MESSAGES // 4 or failed, 30, "publishing under way")
    assert first.stop() == 0
    second = launcher.start("broker", push_server, "--role=broker")
    second.wait_for(BROKER_LINE)
    publishing.join(90)
    assert not failed, failed
    assert sent == MESSAGES
    assert second.stop() == 0
    before, after = published(first), published(second)
    print(f"\nsequenced {before} before the stop and {after} after it, of {MESSAGES} sent")
    assert before > 0 and after > 0
    assert before + after == MESSAGES
