"""Builds the edge's Tornado application from its configuration."""

from __future__ import annotations

from collections import Counter
from typing import Any

import tornado.web

from edge.access import TrustedCallers
from edge.config import EdgeConfig
from edge.feed import Feed
from edge.handlers import PushHandler
from edge.metrics import MetricsHandler, registry_for
from edge.passthrough import Passthrough
from edge.publisher import PublisherHandler
from edge.subscriber import SubscriberHandler
from edge.wsgi import WSGIApp, WSGIFallback


class NotFoundHandler(PushHandler):
    ALLOWED = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")

    def prepare(self) -> None:
        self.refuse(404, "no push location here")


def anchored(pattern: str) -> str:
    # Tornado anchors the end itself; a leading ^ would be doubled.
    return pattern.removeprefix("^")


def build_application(
    config: EdgeConfig,
    feed: Feed,
    passthrough: Passthrough,
    wsgi_app: WSGIApp | None = None,
) -> tornado.web.Application:
    responses: Counter[str] = Counter()
    registry = registry_for(responses, feed, passthrough)
    callers = TrustedCallers(config.metrics_allow_from, None)
    rules: list[Any] = [
        (config.metrics_url, MetricsHandler, {"registry": registry, "callers": callers})
    ]
    for subscriber in config.subscribers:
        options = {
            "feed": feed,
            "location": subscriber,
            "config": config,
            "passthrough": passthrough,
            "responses": responses,
        }
        rules.append((anchored(subscriber.url), SubscriberHandler, options))
    for publisher in config.publishers:
        options = {"feed": feed, "location": publisher, "config": config}
        rules.append((anchored(publisher.url), PublisherHandler, options))
    if wsgi_app is not None:
        fallback = WSGIFallback(wsgi_app)
        rules.append((r".*", tornado.web.FallbackHandler, {"fallback": fallback}))
    return tornado.web.Application(
        rules, default_handler_class=NotFoundHandler, compress_response=False
    )
