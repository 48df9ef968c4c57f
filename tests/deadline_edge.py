"""An embedded broker and edge whose connections owe their request heads and bodies
within the seconds given on the command line, for the tests of those deadlines.

The settings do not carry these limits yet, so the two parts are built here from
the settings module named by DJANGO_SETTINGS_MODULE and the edge prints the banner
line `runpushserver` prints. Log lines go to stdout, where the tests look for
tracebacks. SIGTERM ends the process.

    python -m tests.deadline_edge --head-timeout 2 --body-timeout 2
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

import django
import uvloop


async def serve(head_timeout: float, body_timeout: float) -> None:
    from broker.server import Broker
    from edge.server import Edge
    from pushserver import conf

    broker = Broker(conf.broker_config())
    endpoints = broker.bind()
    config = dataclasses.replace(
        conf.edge_config("127.0.0.1", 0),
        events=endpoints.events,
        control=endpoints.control,
        ingress=endpoints.ingress,
    )
    edge = Edge(config, head_timeout=head_timeout, body_timeout=body_timeout)
    for url in edge.listen():
        print(f"Edge listening on {url}", flush=True)
    await asyncio.gather(broker.run(), edge.run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--head-timeout", type=float, required=True)
    parser.add_argument("--body-timeout", type=float, required=True)
    args = parser.parse_args()
    django.setup()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s"
    )
    uvloop.run(serve(args.head_timeout, args.body_timeout))


if __name__ == "__main__":
    main()
