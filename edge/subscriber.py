"""The subscriber location: long-poll and interval-poll GETs, CORS preflight.

This is the edge's hot path, so it answers straight on the edge's own
connection (`edge.connection`), not through Tornado: a poll of a channel
already followed is answered from the channel buffer without a coroutine,
and a held poll is two callbacks and one timer. Per request it reads three
headers, parses the validators (cached: clients send the same few), looks
the cursor up (a bisect) and writes one buffer: the message's head
rendered once when it arrived (`Held.head`), the few lines that depend on
the request (CORS, Date, Connection; cached as bytes too) and the body.
Everything that may wait (the first sync of a channel, Django's
passthrough) takes the slower coroutine path. A signed location checks
its token (`edge.signing`) before either.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import tornado.httputil
import tornado.web

from edge.bridge import TornadoResponder
from edge.channels import ChannelBuffer, Held, Waiter
from edge.config import INTERVAL_POLL, EdgeConfig, SubscriberLocation
from edge.connection import CRLF, Connection, Request, Responder, header_lines, render_head
from edge.cors import cors_headers, preflight_headers
from edge.feed import BrokerUnavailable, Feed
from edge.handlers import Refusal, anchored, checked_channel_id
from edge.passthrough import Passthrough
from edge.protocol import (
    MESSAGES_MISSED,
    SUBSCRIBER_METHODS,
    BadValidator,
    Cursor,
    echo_headers,
    http_date,
    parse_cursor,
)
from edge.publisher import PublisherRequest, Publishers
from edge.signing import query_problem

log = logging.getLogger("pushserver.edge")

# Caches of what many requests share; cleared when full rather than evicted
# one by one, since their contents are cheap to rebuild.
CACHE_LIMIT = 4096

MISSED_LINE = f"{MESSAGES_MISSED}: 1\r\n".encode("latin-1")


@dataclass
class Subscribers:
    """What every poll of an edge's subscriber locations shares."""

    config: EdgeConfig
    feed: Feed
    passthrough: Passthrough
    responses: Counter[str]
    locations: list[tuple[re.Pattern[str], SubscriberLocation]] = field(init=False)
    _cursors: dict[tuple[str | None, str | None], Cursor] = field(default_factory=dict)
    _not_modified: dict[Cursor, bytes] = field(default_factory=dict)
    _cors: dict[tuple[int, str | None], bytes] = field(default_factory=dict)
    _date: tuple[int, bytes] = (0, b"")

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

    def not_modified(self, cursor: Cursor) -> bytes:
        """The head of a 304 that sends the client back to where it stood."""
        head = self._not_modified.get(cursor)
        if head is None:
            head = render_head(304, echo_headers(cursor))
            if len(self._not_modified) >= CACHE_LIMIT:
                self._not_modified.clear()
            self._not_modified[cursor] = head
        return head

    def cors(self, location: SubscriberLocation, origin: str | None) -> bytes:
        key = (id(location), origin)
        lines = self._cors.get(key)
        if lines is None:
            lines = header_lines(cors_headers(location, origin))
            if len(self._cors) >= CACHE_LIMIT:
                self._cors.clear()
            self._cors[key] = lines
        return lines

    def date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, header_lines([("Date", http_date(now))]))
        return self._date[1]


class EdgeRouter:
    """Sends subscriber-location requests to `SubscriberPoll`, publisher-location ones to
    `PublisherRequest`, everything else to Tornado."""

    def __init__(
        self,
        application: tornado.web.Application,
        subscribers: Subscribers,
        publishers: Publishers,
    ) -> None:
        self.application = application
        self.subscribers = subscribers
        self.publishers = publishers

    def __call__(self, connection: Connection, request: Request) -> Responder:
        path = request.path
        found = self.subscribers.match(path)
        if found is not None:
            location, raw_channel_id = found
            return SubscriberPoll(self.subscribers, location, raw_channel_id, connection, request)
        publishing = self.publishers.match(path)
        if publishing is not None:
            publisher, raw_channel_id = publishing
            return PublisherRequest(self.publishers, publisher, raw_channel_id, connection, request)
        return TornadoResponder(self.application, connection, request)


class SubscriberPoll:
    __slots__ = (
        "shared",
        "location",
        "raw_channel_id",
        "connection",
        "request",
        "cors",
        "answered",
        "buffer",
        "waiter",
        "timer",
        "subscribed",
        "channel_id",
        "task",
    )

    def __init__(
        self,
        shared: Subscribers,
        location: SubscriberLocation,
        raw_channel_id: str,
        connection: Connection,
        request: Request,
    ) -> None:
        self.shared = shared
        self.location = location
        self.raw_channel_id = raw_channel_id
        self.connection = connection
        self.request = request
        self.cors = b""
        self.answered = False
        self.buffer: ChannelBuffer | None = None
        self.waiter: Waiter | None = None
        self.timer: asyncio.TimerHandle | None = None
        # The request Django was told subscribed, so it hears when the poll ends.
        self.subscribed: tornado.httputil.HTTPServerRequest | None = None
        self.channel_id = ""
        self.task: asyncio.Task[None] | None = None

    def body(self, chunk: bytes) -> None:
        return None  # a body on a poll means nothing

    def complete(self) -> None:
        origin, if_modified_since, if_none_match = self.request.headers_named(
            b"origin", b"if-modified-since", b"if-none-match"
        )
        self.cors = self.shared.cors(self.location, origin)
        try:
            self._begin(if_modified_since, if_none_match)
        except Refusal as refused:
            self._refuse(refused)

    def closed(self) -> None:
        self._let_go()
        self._finished()

    def _begin(self, if_modified_since: str | None, if_none_match: str | None) -> None:
        method = self.request.method
        if method == "OPTIONS":
            headers = [*preflight_headers(self.shared.config.cors_max_age), ("Content-Length", "0")]
            self._respond("200", render_head(200, headers))
            return
        if method not in SUBSCRIBER_METHODS:
            raise Refusal(
                405, f"method {method} not allowed here", [("Allow", ", ".join(SUBSCRIBER_METHODS))]
            )
        self.channel_id = channel_id = checked_channel_id(
            urllib.parse.unquote_to_bytes(self.raw_channel_id)
        )
        if self.location.signed:
            # First of all that costs: a URL without a valid token reaches
            # neither the broker nor Django.
            problem = query_problem(
                self.shared.config.signed_url_secrets,
                (channel_id,),
                self.request.target.partition("?")[2],
                time.time(),
            )
            if problem is not None:
                raise Refusal(403, problem)
        try:
            cursor = self.shared.cursor(if_modified_since, if_none_match)
        except BadValidator as error:
            raise Refusal(400, str(error)) from None
        # Read now, so a request Tornado's code cannot read is refused 400 by the connection.
        request = self.request.server_request() if self.location.passthrough else None
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
            self.task = asyncio.get_running_loop().create_task(self._begin_slowly(cursor, request))

    async def _begin_slowly(
        self, cursor: Cursor, request: tornado.httputil.HTTPServerRequest | None
    ) -> None:
        try:
            try:
                buffer = await self.shared.feed.channel(
                    self.channel_id, self.location.create_on_get
                )
            except BrokerUnavailable:
                raise Refusal(503, "the push broker is unavailable; try again shortly") from None
            if buffer is None:
                raise Refusal(403, "channel does not exist")
            if request is not None:
                await self._subscribe(request)
            self._serve(buffer, cursor)
        except Refusal as refused:
            self._refuse(refused)
        except Exception:
            # Never leave a poll unanswered: the client backs off and asks again.
            log.exception("subscriber poll on %r failed", self.channel_id)
            self._refuse(Refusal(500, "the edge failed to answer this poll"))

    async def _subscribe(self, request: tornado.httputil.HTTPServerRequest) -> None:
        passthrough = self.shared.passthrough
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
        self.subscribed = request

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

    # -- responses -------------------------------------------------------------------

    def _answer(self, held: Held, missed: bool) -> None:
        head = held.head + MISSED_LINE if missed else held.head
        self._respond("200", head, held.message.body)

    def _not_modified(self, cursor: Cursor) -> None:
        self._respond("304", self.shared.not_modified(cursor))

    def _refuse(self, refused: Refusal) -> None:
        body = (refused.why + "\n").encode()
        headers = [
            *refused.headers,
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        if self.request.method == "HEAD":
            body = b""  # a HEAD's answer says how long the body is, and sends none
        self._respond(str(refused.status_code), render_head(refused.status_code, headers), body)

    def _respond(self, status: str, head: bytes, body: bytes = b"") -> None:
        """Write one answer: `head` from `render_head`, then the lines of this request."""
        if self.answered:
            return
        self._finished()
        shared = self.shared
        connection = self.connection
        connection.send(
            b"".join((head, self.cors, shared.date(), self.request.connection_line(), CRLF, body))
        )
        connection.finish()
        shared.responses[status] += 1

    def _finished(self) -> None:
        """The poll is over: Django hears it was (once), nothing more is written."""
        if self.answered:
            return
        self.answered = True
        if self.subscribed is not None:
            self.shared.passthrough.unsubscribe(self.location, self.subscribed, self.channel_id)
            self.subscribed = None
