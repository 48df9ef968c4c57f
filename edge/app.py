"""Builds the edge's Tornado application from its configuration."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tornado.web
import tornado.wsgi

from edge.config import EdgeConfig
from edge.feed import Feed
from edge.handlers import PushHandler
from edge.publisher import PublisherHandler
from edge.subscriber import SubscriberHandler

# Django views may be slow; they run here so they never stall the event loop.
WSGI_THREADS = 16


class NotFoundHandler(PushHandler):
    ALLOWED = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")

    def prepare(self) -> None:
        self.refuse(404, "no push location here")


def anchored(pattern: str) -> str:
    # Tornado anchors the end itself; a leading ^ would be doubled.
    return pattern.removeprefix("^")


def build_application(
    config: EdgeConfig, feed: Feed, wsgi_app: Any | None = None
) -> tornado.web.Application:
    rules: list[Any] = []
    for subscriber in config.subscribers:
        options = {"feed": feed, "location": subscriber, "config": config}
        rules.append((anchored(subscriber.url), SubscriberHandler, options))
    for publisher in config.publishers:
        options = {"feed": feed, "location": publisher, "config": config}
        rules.append((anchored(publisher.url), PublisherHandler, options))
    if wsgi_app is not None:
        container = tornado.wsgi.WSGIContainer(
            wsgi_app, executor=ThreadPoolExecutor(WSGI_THREADS, "pushserver-wsgi")
        )
        rules.append((r".*", tornado.web.FallbackHandler, {"fallback": container}))
    return tornado.web.Application(
        rules, default_handler_class=NotFoundHandler, compress_response=False
    )
