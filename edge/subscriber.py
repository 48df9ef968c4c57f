"""The subscriber location: long-poll and interval-poll GETs, CORS preflight.

This is the edge's hot path, so it is served below Tornado's
RequestHandler: a message delegate per request on Tornado's HTTP/1.1
connection, answering from the channel buffer without a coroutine when
the channel is already followed, and holding a poll with two callbacks
and one timer rather than a task. Per request it parses the two
validators (cached: clients send the same few), looks the cursor up
(a bisect) and writes headers rendered once per message. Everything
that may wait (the first sync of a channel, Django's passthrough) takes
the slower coroutine path.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import tornado.http1connection
import tornado.httputil
import tornado.web

from edge.channels import ChannelBuffer, Held, Waiter
from edge.config import INTERVAL_POLL, EdgeConfig, SubscriberLocation
from edge.cors import cors_headers, preflight_headers
from edge.feed import BrokerUnavailable, Feed
from edge.handlers import Refusal, anchored, checked_channel_id
from edge.passthrough import Passthrough
from edge.protocol import (
    IF_MODIFIED_SINCE,
    IF_NONE_MATCH,
    MESSAGES_MISSED,
    SUBSCRIBER_METHODS,
    BadValidator,
    Cursor,
    echo_headers,
    parse_cursor,
)

log = logging.getLogger("pushserver.edge")

# Caches of what many requests share; cleared when full rather than evicted
# one by one, since their contents are cheap to rebuild.
CACHE_LIMIT = 4096


@dataclass
class Subscribers:
    """What every poll of an edge's subscriber locations shares."""

    config: EdgeConfig
    feed: Feed
    passthrough: Passthrough
    responses: Counter[str]
    locations: list[tuple[re.Pattern[str], SubscriberLocation]] = field(init=False)
    _cursors: dict[tuple[str | None, str | None], Cursor] = field(default_factory=dict)
    _cors: dict[tuple[int, str | None], list[tuple[str, str]]] = field(default_factory=dict)
    _date: tuple[int, str] = (0, "")

    def __post_init__(self) -> None:
        self.locations = []
        for location in self.config.subscribers:
            pattern = anchored(location.url)
            self.locations.append(
                (re.compile(pattern if pattern.endswith("$") else pattern + "$"), location)
            )

    def match(self, path: str) -> tuple[SubscriberLocation, str] | None:
        for pattern, location in self.locations:
            found = pattern.match(path)
            if found is not None:
                return location, found.group(1)
        return None

    def cursor(self, if_modified_since: str | None, if_none_match: str | None) -> Cursor:
        key = (if_modified_since, if_none_match)
        cursor = self._cursors.get(key)
        if cursor is None:
            cursor = parse_cursor(if_modified_since, if_none_match)
            if len(self._cursors) >= CACHE_LIMIT:
                self._cursors.clear()
            self._cursors[key] = cursor
        return cursor

    def cors(self, location: SubscriberLocation, origin: str | None) -> list[tuple[str, str]]:
        key = (id(location), origin)
        headers = self._cors.get(key)
        if headers is None:
            headers = cors_headers(location, origin)
            if len(self._cors) >= CACHE_LIMIT:
                self._cors.clear()
            self._cors[key] = headers
        return headers

    def date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]


class EdgeRouter(tornado.httputil.HTTPServerConnectionDelegate):
    """Sends subscriber-location requests to `SubscriberPoll`, everything else to Tornado."""

    def __init__(self, application: tornado.web.Application, subscribers: Subscribers) -> None:
        self.application = application
        self.subscribers = subscribers

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return Dispatch(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.application.on_close(server_conn)


class Dispatch(tornado.httputil.HTTPMessageDelegate):
    def __init__(
        self, router: EdgeRouter, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> None:
        self.router = router
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.target: tornado.httputil.HTTPMessageDelegate | None = None

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Any:
        assert isinstance(start_line, tornado.httputil.RequestStartLine)
        path = start_line.path.partition("?")[0]
        found = self.router.subscribers.match(path)
        if found is not None:
            location, raw_channel_id = found
            # HTTPServer only ever makes HTTP/1.1 connections.
            connection = cast(tornado.http1connection.HTTP1Connection, self.request_conn)
            self.target = SubscriberPoll(
                self.router.subscribers, location, raw_channel_id, connection
            )
        else:
            self.target = self.router.application.start_request(self.server_conn, self.request_conn)
        return self.target.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        assert self.target is not None
        return self.target.data_received(chunk)

    def finish(self) -> None:
        assert self.target is not None
        self.target.finish()

    def on_connection_close(self) -> None:
        if self.target is not None:
            self.target.on_connection_close()


class SubscriberPoll(tornado.httputil.HTTPMessageDelegate):
    def __init__(
        self,
        shared: Subscribers,
        location: SubscriberLocation,
        raw_channel_id: str,
        connection: tornado.http1connection.HTTP1Connection,
    ) -> None:
        self.shared = shared
        self.location = location
        self.raw_channel_id = raw_channel_id
        self.connection = connection
        self.method = ""
        self.headers = tornado.httputil.HTTPHeaders()
        self.start_line: tornado.httputil.RequestStartLine | None = None
        self.cors: list[tuple[str, str]] = []
        self.answered = False
        self.buffer: ChannelBuffer | None = None
        self.waiter: Waiter | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.request: tornado.httputil.HTTPServerRequest | None = None
        self.channel_id = ""
        self.task: asyncio.Task[None] | None = None

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, tornado.httputil.RequestStartLine)
        self.start_line = start_line
        self.method = start_line.method
        self.headers = headers

    def data_received(self, chunk: bytes) -> None:
        return None  # a body on a poll means nothing

    def finish(self) -> None:
        self.cors = self.shared.cors(self.location, self.headers.get("Origin"))
        try:
            self._begin()
        except Refusal as refused:
            self._refuse(refused)

    def _begin(self) -> None:
        if self.method == "OPTIONS":
            self._respond(200, preflight_headers(self.shared.config.cors_max_age))
            return
        if self.method not in SUBSCRIBER_METHODS:
            raise Refusal(
                405,
                f"method {self.method} not allowed here",
                [("Allow", ", ".join(SUBSCRIBER_METHODS))],
            )
        self.channel_id = channel_id = checked_channel_id(
            urllib.parse.unquote_to_bytes(self.raw_channel_id)
        )
        try:
            cursor = self.shared.cursor(
                self.headers.get(IF_MODIFIED_SINCE), self.headers.get(IF_NONE_MATCH)
            )
        except BadValidator as error:
            raise Refusal(400, str(error)) from None
        buffer = self.shared.feed.buffers.get(channel_id)
        if (
            buffer is not None
            and buffer.ready
            and buffer.exists
            and not buffer.refilling
            and not self.location.passthrough
        ):
            self._serve(buffer, cursor)
        else:
            self.task = asyncio.get_running_loop().create_task(self._begin_slowly(cursor))

    async def _begin_slowly(self, cursor: Cursor) -> None:
        try:
            try:
                buffer = await self.shared.feed.channel(
                    self.channel_id, self.location.create_on_get
                )
            except BrokerUnavailable:
                raise Refusal(503, "the push broker is unavailable; try again shortly") from None
            if buffer is None:
                raise Refusal(403, "channel does not exist")
            if self.location.passthrough:
                await self._subscribe()
            self._serve(buffer, cursor)
        except Refusal as refused:
            self._refuse(refused)
        except Exception:
            # Never leave a poll unanswered: the client backs off and asks again.
            log.exception("subscriber poll on %r failed", self.channel_id)
            self._refuse(Refusal(500, "the edge failed to answer this poll"))

    async def _subscribe(self) -> None:
        passthrough = self.shared.passthrough
        request = self._server_request()
        if not self.location.authorize:
            passthrough.subscribe(self.location, request, self.channel_id)
        else:
            admitted = await passthrough.admit(self.location, request, self.channel_id)
            if admitted is None:
                raise Refusal(
                    503, "the site could not authorize this subscription; try again shortly"
                )
            if not admitted:
                raise Refusal(403, "subscription refused")
        if self.answered:
            # The client left while Django was asked: it is unsubscribed at once.
            passthrough.unsubscribe(self.location, request, self.channel_id)
            return
        # From here on, however the poll ends, Django hears of it.
        self.request = request

    def _server_request(self) -> tornado.httputil.HTTPServerRequest:
        assert self.start_line is not None
        return tornado.httputil.HTTPServerRequest(
            connection=self.connection, start_line=self.start_line, headers=self.headers
        )

    # -- serving -------------------------------------------------------------------

    def _serve(self, buffer: ChannelBuffer, cursor: Cursor) -> None:
        if self.answered:
            return  # the client left while the channel was being synchronised
        buffer.requested = time.time()
        self.shared.feed.touch(buffer)
        held, missed = buffer.find(cursor.id)
        if held is not None:
            self._answer(held, missed)
        elif self.location.polling == INTERVAL_POLL:
            self._not_modified(cursor)
        else:
            self._hold(buffer, cursor)

    def _hold(self, buffer: ChannelBuffer, cursor: Cursor) -> None:
        self.buffer = buffer
        self.waiter = Waiter(
            cursor.id,
            lambda held, missed: self._woken(held, missed, cursor),
            lambda: self._woken(None, False, cursor, released=True),
        )
        buffer.wait(self.waiter)
        # One timer per poll rather than asyncio.wait_for, which costs twice as
        # much when thousands of polls wake at once.
        self.timer = asyncio.get_running_loop().call_later(
            self.shared.config.long_poll_timeout,
            lambda: self._woken(None, False, cursor, released=True),
        )
        self.connection.set_close_callback(self._client_left)

    def _woken(
        self, held: Held | None, missed: bool, cursor: Cursor, released: bool = False
    ) -> None:
        self._let_go()
        if released:
            self._not_modified(cursor)
        elif held is None:
            self._refuse(Refusal(410, "channel deleted"))
        else:
            self._answer(held, missed)

    def _let_go(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        buffer = self.buffer
        if buffer is not None and self.waiter is not None:
            buffer.forget(self.waiter)
            self.waiter = None
            self.shared.feed.touch(buffer)

    def _client_left(self) -> None:
        self._let_go()
        self._finished()

    def on_connection_close(self) -> None:
        self._client_left()

    # -- responses -------------------------------------------------------------------

    def _answer(self, held: Held, missed: bool) -> None:
        headers = [*held.headers, (MESSAGES_MISSED, "1")] if missed else held.headers
        self._respond(200, headers, held.message.body)

    def _not_modified(self, cursor: Cursor) -> None:
        self._respond(304, echo_headers(cursor))

    def _refuse(self, refused: Refusal) -> None:
        headers = [*refused.headers, ("Content-Type", "text/plain; charset=utf-8")]
        self._respond(refused.status_code, headers, (refused.why + "\n").encode())

    def _respond(self, status: int, headers: Sequence[tuple[str, str]], body: bytes = b"") -> None:
        if self.answered:
            return
        self._finished()
        connection = self.connection
        if connection.stream is None or connection.stream.closed():
            return
        response = tornado.httputil.HTTPHeaders()
        for name, value in self.cors:
            response.add(name, value)
        for name, value in headers:
            response.add(name, value)
        response["Date"] = self.shared.date()
        if status != 304:
            response["Content-Length"] = str(len(body))
        start = tornado.httputil.ResponseStartLine("HTTP/1.1", status, HTTPStatus(status).phrase)
        connection.write_headers(start, response, chunk=body or None)
        connection.finish()
        self.shared.responses[str(status)] += 1

    def _finished(self) -> None:
        """The poll is over: Django hears it was (once), nothing more is written."""
        if self.answered:
            return
        self.answered = True
        if self.request is not None:
            self.shared.passthrough.unsubscribe(self.location, self.request, self.channel_id)
            self.request = None
