"""``manage.py runpushserver``: the broker, an edge, or both (the default), from PUSH_SERVER.

Kept thin like ``runserver``: parse the arguments, run the system checks,
build the configurations with `pushserver.conf`, print the banner and hand
over to `pushserver.runner`.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
from datetime import datetime
from typing import Any

import zmq
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.commands.runserver import naiveip_re

from broker.curve import KeyFileError
from pushserver import allocator, checks, conf, runner
from pushserver.schema import ALL_REQUESTS_PORT

BROKER = "broker"
EDGE = "edge"
DEFAULT_IPV6_ADDRESS = "::1"


class Command(BaseCommand):
    help = (
        "Starts the push server: the broker and an edge in one process, or one of them with --role."
    )
    # Checks run in handle(), as runserver runs them, so their output comes first.
    requires_system_checks: list[str] = []
    suppressed_base_arguments = {"--verbosity", "--traceback"}

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport",
            nargs="?",
            help="Where the edge listens: a port, or address:port (default from PUSH_SERVER).",
        )
        parser.add_argument(
            "--ipv6", "-6", action="store_true", dest="use_ipv6", help="Use an IPv6 address."
        )
        parser.add_argument(
            "--role",
            choices=[BROKER, EDGE],
            help="Run only the broker or only an edge; without it, both in one process.",
        )
        parser.add_argument(
            "--standby",
            action="store_true",
            help="With --role=broker, start the backup of the standby pair "
            "(PUSH_SERVER['standby']) rather than the primary.",
        )
        parser.add_argument(
            "--allrequests",
            action="store_true",
            help="Also serve the Django site for paths no push location matches "
            f"(default port {ALL_REQUESTS_PORT}).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="With --role=edge, run this many edge processes sharing the port (SO_REUSEPORT).",
        )
        parser.add_argument(
            "--nostatic",
            action="store_false",
            dest="use_static_handler",
            help="With --allrequests, do not serve static files even when DEBUG is on.",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        # From the command line only: call_command runs in a process not to replace.
        allocator.run_on_malloc()
        super().run_from_argv(argv)

    def handle(self, *args: Any, **options: Any) -> None:
        role = options["role"]
        all_requests = options["allrequests"]
        if role == BROKER and (options["addrport"] or all_requests or options["use_ipv6"]):
            raise CommandError(
                "the address:port argument, --ipv6 and --allrequests are for edges; "
                "the broker binds the endpoints in PUSH_SERVER['broker']"
            )
        backup = options["standby"]
        if backup and role != BROKER:
            raise CommandError("--standby is for --role=broker: it starts the pair's backup")
        workers = options["workers"]
        if workers < 1:
            raise CommandError(f"--workers must be at least 1, got {workers}")
        if workers > 1 and role != EDGE:
            raise CommandError(
                "--workers is for --role=edge: one broker serves the cluster, "
                "and an embedded broker cannot be shared by several processes"
            )
        address, port = self._parse_addrport(options["addrport"], options["use_ipv6"])

        self.stdout.write("Performing system checks...\n\n")
        self.check(display_num_errors=True)
        roles = [checks.BROKER] if role == BROKER else [checks.EDGE] if role == EDGE else []
        missing = [
            message
            for part in roles or [checks.BROKER, checks.EDGE]
            for message in checks.check_curve_role(part)
        ]
        if missing:
            raise CommandError("; ".join(f"{message.id}: {message.msg}" for message in missing))

        if backup and conf.standby_section() is None:
            raise CommandError(
                "--standby starts the backup of a standby pair: PUSH_SERVER['standby'] is not set"
            )
        if role != BROKER and conf.standby_section() is not None and role != EDGE:
            raise CommandError(
                "a standby pair's brokers run alone: start them with --role=broker "
                "(and --standby for the backup), the edges with --role=edge"
            )
        broker_config = conf.broker_config(backup) if role != EDGE else None
        self._pair_role = (
            None
            if broker_config is None or not broker_config.paired
            else "backup"
            if backup
            else "primary"
        )
        edge_config = None
        wsgi_app = None
        if role != BROKER:
            if port is None:
                port = conf.edge_port(ALL_REQUESTS_PORT if all_requests else None)
            edge_config = conf.edge_config(address, port)
            if all_requests:
                wsgi_app = _django_application(options["use_static_handler"])

        _configure_logging()
        now = datetime.now().strftime("%B %d, %Y - %X")
        self._say(
            f"{now}\n"
            f"Django version {self.get_version()}, using settings {settings.SETTINGS_MODULE!r}"
        )
        try:
            if workers > 1:
                assert edge_config is not None
                runner.run_workers(edge_config, workers, wsgi_app=wsgi_app, on_ready=self._announce)
            else:
                runner.run(broker_config, edge_config, wsgi_app=wsgi_app, on_ready=self._announce)
        except (OSError, zmq.ZMQError, KeyFileError) as exc:
            # Mostly a port in use: say so instead of printing a traceback.
            raise CommandError(f"could not start the push server: {exc}") from exc

    def _parse_addrport(
        self, addrport: str | None, use_ipv6: bool
    ) -> tuple[str | None, int | None]:
        """``8011``, ``127.0.0.1:8011`` or ``[::1]:8011``, as runserver reads them."""
        if use_ipv6 and not socket.has_ipv6:
            raise CommandError("Your Python does not support IPv6.")
        default_address = DEFAULT_IPV6_ADDRESS if use_ipv6 else None
        if not addrport:
            return default_address, None
        match = re.match(naiveip_re, addrport)
        if match is None:
            raise CommandError(f'"{addrport}" is not a valid port number or address:port pair.')
        address, _ipv4, ipv6, fqdn, port = match.groups()
        if not address:
            return default_address, int(port)
        if ipv6:
            address = address[1:-1]
        elif use_ipv6 and not fqdn:
            raise CommandError(f'"{address}" is not a valid IPv6 address.')
        elif address == "0":
            address = "0.0.0.0"
        return address, int(port)

    def _announce(self, listening: runner.Listening) -> None:
        # The test harness and ops scripts parse these lines; keep their shape.
        lines = []
        if listening.broker is not None:
            endpoints = listening.broker
            lines.append(
                f"Broker listening: ingress {endpoints.ingress}, events {endpoints.events}, "
                f"control {endpoints.control}"
            )
            if endpoints.metrics is not None:
                lines.append(f"Broker metrics on {endpoints.metrics}")
            if self._pair_role is not None:
                lines.append(
                    f"Broker role: {self._pair_role} of a standby pair, peer link {endpoints.peer}"
                )
        lines += [f"Edge listening on {url}" for url in listening.edge_urls or ()]
        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        lines.append(f"Quit the server with {quit_command}.")
        self._say("\n".join(lines))

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def _django_application(serve_static: bool) -> Any:
    """The site's WSGI application; with DEBUG and staticfiles, serving static files
    as ``runserver`` does, so ``{% static 'pushserver/updates.js' %}`` works."""
    from django.apps import apps
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
    if serve_static and settings.DEBUG and apps.is_installed("django.contrib.staticfiles"):
        from django.contrib.staticfiles.handlers import StaticFilesHandler

        return StaticFilesHandler(application)
    return application


def _configure_logging() -> None:
    """Show the push server's own log lines (refills, stops) and Tornado's warnings on stderr,
    as runserver shows its requests, unless the project's LOGGING already routes them."""
    if logging.getLogger().handlers:
        return
    for name, level in (("pushserver", logging.INFO), ("tornado", logging.WARNING)):
        logger = logging.getLogger(name)
        if logger.handlers:
            continue
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%d/%b/%Y %X")
        )
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
