"""``manage.py pushserver_keys DIR``: the CURVE key files of a cluster, and the setting naming them.

Only delegates: `broker.curve.create_key_files` writes the files (with
`zmq.auth.create_certificates`); this command turns its arguments into
names, its refusals into `CommandError`, and prints which file goes to
which host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker.curve import EDGE_NAME, PUBLISHER_NAME, KeyFileError, create_key_files


class Command(BaseCommand):
    help = (
        "Writes CURVE key files for the broker, publishers and edges into DIR (the broker's "
        "pair once, a pair per client name), and prints the PUSH_SERVER['curve'] setting."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", help="Where the key files go; created if missing.")
        parser.add_argument(
            "--publisher",
            action="append",
            dest="publishers",
            metavar="NAME",
            help=f"A publisher key pair to add (repeatable; default {PUBLISHER_NAME!r} "
            "when neither --publisher nor --edge is given).",
        )
        parser.add_argument(
            "--edge",
            action="append",
            dest="edges",
            metavar="NAME",
            help=f"An edge key pair to add (repeatable; default {EDGE_NAME!r}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        folder = Path(options["directory"]).absolute()
        if folder.exists() and not folder.is_dir():
            raise CommandError(f"{folder} exists and is not a directory")
        publishers = options["publishers"] or []
        edges = options["edges"] or []
        if not publishers and not edges:
            publishers, edges = [PUBLISHER_NAME], [EDGE_NAME]
        try:
            layout, written = create_key_files(folder, publishers, edges)
        except KeyFileError as error:
            raise CommandError(str(error)) from error
        for path in written:
            self.stdout.write(f"wrote {path}")
        setting = layout.setting(
            publishers[0] if publishers else PUBLISHER_NAME, edges[0] if edges else EDGE_NAME
        )
        self.stdout.write(
            "\nEach host's PUSH_SERVER['curve'] names the files that host holds:\n"
            "  broker host: broker_secret_key, publisher_keys, edge_keys\n"
            "  edge hosts: broker_public_key, edge_secret_key\n"
            "  Django hosts (send_update): broker_public_key, publisher_secret_key\n"
            "On one machine, all of them:\n\n"
            '"curve": {\n'
            + "".join(f"    {key!r}: {value!r},\n" for key, value in setting.items())
            + "},"
        )
