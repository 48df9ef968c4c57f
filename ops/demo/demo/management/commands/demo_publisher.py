import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

import pushserver
from pushserver.utils import updates


class Command(BaseCommand):
    help = "Sends a 'tick' update to a channel at a fixed interval until stopped."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--channel", default="demo", help="channel id (default: demo)")
        parser.add_argument(
            "--interval", type=float, default=2.0, help="seconds between ticks (default: 2)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

        channel_id: str = options["channel"]
        count = 0
        # The first ticks may come before runpushserver listens: send_update
        # queues them, and raises once the broker stays unreachable too long.
        while not stop.wait(options["interval"]):
            count += 1
            update = {"type": "tick", "count": count, "sent_at": timezone.now().isoformat()}
            try:
                updates.send_update(channel_id, update)
            except pushserver.PushServerError as exc:
                self.stderr.write(f"demo_publisher: tick {count} not sent: {exc}")
