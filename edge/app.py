"""Builds what serves the edge's HTTP port: the subscriber and publisher locations' own
fast paths, and a Tornado application for the rest (metrics, the WSGI fallback).

Every request is routed by its canonical path only (`edge.paths`): one a
balancer in front could read as naming another location is refused with
400 before any location sees it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import tornado.httputil
import tornado.web

from edge.access import Proxies, TrustedCallers
from edge.bridge import request_log
from edge.config import EdgeConfig
from edge.feed import Feed
from edge.handlers import PushHandler
from edge.ingress import Ingress
from edge.metrics import MetricsHandler, registry_for
from edge.passthrough import Passthrough
from edge.paths import forget_judged, outside_group_problem, path_problem
from edge.publisher import Publishers
from edge.subscriber import EdgeRouter, Route, Subscribers
from edge.wsgi import WSGIApp, WSGIFallback


class NotFoundHandler(PushHandler):
    ALLOWED = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")

    def prepare(self) -> None:
        self.refuse(404, "no push location here")


class CanonicalRouter(EdgeRouter):
    """Routes only requests whose path is in the one form the edge and a balancer read
    alike; the rest get 400 with the reason (counted as malformed, logged at a bounded rate)."""

    def route(self, path: str) -> Route:
        problem = path_problem(path)
        if problem is None and "%" in path:
            found = self.subscribers.match(path) or self.publishers.match(path)
            if found is not None:
                problem = outside_group_problem(path, found[1])
        if problem is not None:
            raise tornado.httputil.HTTPInputError(problem)
        return super().route(path)

    def drop_caches(self) -> None:
        super().drop_caches()
        forget_judged()


def build_router(
    config: EdgeConfig,
    feed: Feed,
    ingress: Ingress,
    passthrough: Passthrough,
    connections: Callable[[], int],
    connection_events: Counter[str],
    wsgi_app: WSGIApp | None = None,
) -> EdgeRouter:
    responses: Counter[str] = Counter()
    subscribers = Subscribers(config, feed, passthrough, responses)
    registry = registry_for(
        responses, feed, passthrough, connections, connection_events, subscribers
    )
    callers = TrustedCallers(config.metrics_allow_from, None, Proxies(config.forwarded_allow_ips))
    rules: list[Any] = [
        (config.metrics_url, MetricsHandler, {"registry": registry, "callers": callers})
    ]
    if wsgi_app is not None:
        fallback = WSGIFallback(wsgi_app)
        rules.append((r".*", tornado.web.FallbackHandler, {"fallback": fallback}))
    application = tornado.web.Application(
        rules,
        default_handler_class=NotFoundHandler,
        compress_response=False,
        log_function=request_log(),
    )
    publishers = Publishers(config, feed, ingress, subscribers.date)
    router = CanonicalRouter(application, subscribers, publishers)
    # Entries made while a crowd of channels came would keep pages of its memory.
    feed.trimmer.caches.append(router.drop_caches)
    return router
