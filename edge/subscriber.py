"""The subscriber location: long-poll and interval-poll GETs, EventSource streams, CORS preflight.

This is the edge's hot path, so it answers straight on the edge's own
connection (`edge.connection`), not through Tornado: a poll of a channel
already followed is answered from the channel buffer without a coroutine,
and a held poll is two callbacks and a place in the edge's one queue of
poll timeouts (`edge.timeouts`). Per request it reads three
headers, parses the validators (cached: clients send the same few), looks
the cursor up (a bisect) and writes one buffer: the message's head
rendered once when it arrived (`Held.head`), the few lines that depend on
the request (CORS, Date, Connection; cached as bytes too) and the body.
Everything that may wait (the first sync of a channel, Django's
passthrough) takes the slower coroutine path. A signed location checks
its token (`edge.signing`) before either.

A GET whose `Accept` asks for `text/event-stream` is admitted the same
way (CORS, signing, `create_on_get`, passthrough, `authorize`) and then
handed to `edge.stream`. Its URL may name several channels, joined by a
literal `,` (each id percent-encoded, so an id's own commas are `%2C`);
a poll of such a URL is refused, since one 200 carries one message.

A GET with `Upgrade: websocket` is decided by `edge.websocket.handshake`
(a refusal is an HTTP answer), admitted as a stream is, and answered with
the 101; `edge.socket_subscriber` then owns the connection. The trap is a
browser's cookies, which it sends with a WebSocket to any site: when the
handshake says they may not speak for the client, the passthrough (and
`authorize`) is called without `Cookie` and `Authorization`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import tornado.web

from broker.wire import MessageId, content_type_problem
from edge.bridge import TornadoResponder
from edge.channels import ChannelBuffer, Held, Waiter
from edge.config import INTERVAL_POLL, EdgeConfig, SubscriberLocation
from edge.connection import CRLF, Connection, Request, Responder, header_lines, render_head
from edge.cors import cors_headers, preflight_headers
from edge.eventstream import (
    CHANNEL_SEPARATOR,
    EVENT_STREAM,
    LAST_EVENT_ID_PARAMETER,
    BadCursor,
    parse_cursors,
    parse_message_id,
    query_values,
    wants_stream,
)
from edge.feed import BrokerUnavailable, Feed
from edge.handlers import Refusal, anchored, checked_channel_id
from edge.passthrough import CREDENTIALS, Caller, Passthrough
from edge.protocol import (
    CACHE_CONTROL,
    ETAG,
    LAST_MODIFIED,
    MESSAGES_MISSED,
    SUBSCRIBER_METHODS,
    VARY,
    VARY_VALUE,
    BadValidator,
    Cursor,
    cache_control,
    echo_headers,
    http_date,
    parse_cursor,
)
from edge.publisher import Location, PublisherRequest, Publishers
from edge.signing import query_problem
from edge.socket_subscriber import WebSocket, WebSockets
from edge.stream import CLIENT, UNAVAILABLE, Stream, Streams
from edge.timeouts import Timeout, Timeouts
from edge.websocket import Accepted, Refused, handshake, wants_websocket

log = logging.getLogger("pushserver.edge")

# Caches of what many requests share; cleared when full rather than evicted
# one by one, since their contents are cheap to rebuild.
CACHE_LIMIT = 4096

MISSED_LINE = f"{MESSAGES_MISSED}: 1\r\n".encode("latin-1")
# A poll whose cursor is in its URL (`?last_event_id=`): no cache may keep its answer.
NO_STORE = "no-store"
STREAM_HEAD = render_head(
    200,
    [
        ("Content-Type", EVENT_STREAM),
        (CACHE_CONTROL, "no-cache"),
        # nginx passes a stream on as it comes, whatever proxy_buffering says.
        ("X-Accel-Buffering", "no"),
    ],
)


def poll_head(held: Held, no_store: bool = False) -> bytes:
    """The head of the poll's 200 that delivers `held`, rendered once per message: the
    status line and every header that depends on the message alone (validators,
    Content-Type, Content-Length); a response adds those of the request."""
    head = held.head_no_store if no_store else held.head
    if head is not None:
        return head
    message = held.message
    tag = message.id.tag
    headers = [
        (LAST_MODIFIED, http_date(message.id.time)),
        (ETAG, str(tag)),
        (CACHE_CONTROL, NO_STORE if no_store else cache_control(tag)),
        (VARY, VARY_VALUE),
    ]
    content_type = message.content_type
    # The wire refuses one a header cannot carry; should one get here anyway, the
    # message goes out without it rather than with a forged or broken head.
    if content_type is not None and content_type_problem(content_type) is None:
        headers.append(("Content-Type", content_type))
    headers.append(("Content-Length", str(len(message.body))))
    head = render_head(200, headers)
    if no_store:
        held.head_no_store = head
    else:
        held.head = head
    return head


@dataclass
class Subscribers:
    """What every poll of an edge's subscriber locations shares."""

    config: EdgeConfig
    feed: Feed
    passthrough: Passthrough
    responses: Counter[str]
    streams: Streams = field(default_factory=Streams)
    websockets: WebSockets = field(default_factory=WebSockets)
    # Long-polls held now (pushserver_edge_held_polls).
    held_polls: int = 0
    # When each held poll is answered 304: all after the same long_poll_timeout.
    timeouts: Timeouts = field(init=False)
    locations: list[tuple[re.Pattern[str], SubscriberLocation]] = field(init=False)
    _cursors: dict[tuple[str | None, str | None], Cursor] = field(default_factory=dict)
    _not_modified: dict[tuple[Cursor, bool], bytes] = field(default_factory=dict)
    _cors: dict[tuple[int, str | None], bytes] = field(default_factory=dict)
    _channels: dict[str, tuple[str]] = field(default_factory=dict)
    _date: tuple[int, bytes] = (0, b"")

    def __post_init__(self) -> None:
        self.timeouts = Timeouts(self.config.long_poll_timeout)
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

    def one_channel(self, raw: str) -> tuple[str]:
        """A path's channel id group naming one channel, decoded and checked (or a 400
        Refusal)."""
        channel_ids = self._channels.get(raw)
        if channel_ids is None:
            channel_ids = (checked_channel_id(urllib.parse.unquote_to_bytes(raw)),)
            if len(self._channels) >= CACHE_LIMIT:
                self._channels.clear()
            self._channels[raw] = channel_ids
        return channel_ids

    def cursor(self, if_modified_since: str | None, if_none_match: str | None) -> Cursor:
        key = (if_modified_since, if_none_match)
        cursor = self._cursors.get(key)
        if cursor is None:
            cursor = parse_cursor(if_modified_since, if_none_match)
            if len(self._cursors) >= CACHE_LIMIT:
                self._cursors.clear()
            self._cursors[key] = cursor
        return cursor

    def not_modified(self, cursor: Cursor, no_store: bool) -> bytes:
        """The head of a 304 that sends the client back to where it stood."""
        key = (cursor, no_store)
        head = self._not_modified.get(key)
        if head is None:
            headers = echo_headers(cursor)
            if no_store:
                headers = [
                    (name, NO_STORE if name == CACHE_CONTROL else value) for name, value in headers
                ]
            head = render_head(304, headers)
            if len(self._not_modified) >= CACHE_LIMIT:
                self._not_modified.clear()
            self._not_modified[key] = head
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

    def drop_caches(self) -> None:
        """Empty what is remembered by path and by header, before a trim (`broker.memory`)."""
        self._cursors.clear()
        self._not_modified.clear()
        self._cors.clear()
        self._channels.clear()

    def date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, header_lines([("Date", http_date(now))]))
        return self._date[1]


# How a path is routed: to a subscriber location or a publisher location, with the
# path's channel id group; to Tornado when it is neither.
Route = tuple[SubscriberLocation | None, Location | None, str]
TO_TORNADO: Route = (None, None, "")


class EdgeRouter:
    """Sends subscriber-location requests to `SubscriberRequest`, publisher-location ones to
    `PublisherRequest`, everything else to Tornado.

    Routes are remembered by path: clients ask for the same few paths again and again.
    """

    def __init__(
        self,
        application: tornado.web.Application,
        subscribers: Subscribers,
        publishers: Publishers,
    ) -> None:
        self.application = application
        self.subscribers = subscribers
        self.publishers = publishers
        # Counted by status, by the locations and by the HTTP server for what it refuses itself.
        self.responses = subscribers.responses
        self._routes: dict[str, Route] = {}

    def drop_caches(self) -> None:
        """Empty the routes and the locations' caches, before a trim (`broker.memory`)."""
        self._routes.clear()
        self.subscribers.drop_caches()
        self.publishers.drop_caches()

    def __call__(self, connection: Connection, request: Request) -> Responder:
        path = request.path
        route = self._routes.get(path)
        if route is None:
            route = self.route(path)
            if len(self._routes) >= CACHE_LIMIT:
                self._routes.clear()
            self._routes[path] = route
        location, publisher, raw_channel_id = route
        if location is not None:
            return SubscriberRequest(
                self.subscribers, location, raw_channel_id, connection, request
            )
        if publisher is not None:
            return PublisherRequest(self.publishers, publisher, raw_channel_id, connection, request)
        return TornadoResponder(self.application, connection, request)

    def route(self, path: str) -> Route:
        """Where requests for `path` go; raises `HTTPInputError` for a path none may ask."""
        found = self.subscribers.match(path)
        if found is not None:
            return found[0], None, found[1]
        publishing = self.publishers.match(path)
        if publishing is not None:
            return None, publishing[0], publishing[1]
        return TO_TORNADO


class SubscriberRequest:
    """One request on a subscriber location: a poll, a stream or a preflight."""

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
        "cursor",
        "timer",
        "subscribed",
        "channel_ids",
        "no_store",
        "stream",
        "socket",
        "accepted",
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
        # Where a held poll stands: its 304 sends the client back there.
        self.cursor: Cursor | None = None
        self.timer: Timeout | None = None
        # The request Django was told subscribed, and to which channels, so it hears
        # when the poll or stream ends.
        self.subscribed: Caller | None = None
        self.channel_ids: tuple[str, ...] = ()
        # The poll's cursor came from its URL: its answer says no cache may keep it.
        self.no_store = False
        self.stream: Stream | None = None
        self.socket: WebSocket | None = None
        # The handshake, when the request asks for a WebSocket and may have one.
        self.accepted: Accepted | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def channel_id(self) -> str:
        return self.channel_ids[0] if self.channel_ids else ""

    def body(self, chunk: bytes) -> None:
        return None  # a body on a poll means nothing

    def complete(self) -> None:
        origin, if_modified_since, if_none_match, accept, last_event_id, upgrade = (
            self.request.headers_named(
                b"origin",
                b"if-modified-since",
                b"if-none-match",
                b"accept",
                b"last-event-id",
                b"upgrade",
            )
        )
        self.cors = self.shared.cors(self.location, origin)
        try:
            if upgrade is not None and wants_websocket(upgrade):
                self._begin_websocket()
            else:
                self._begin(if_modified_since, if_none_match, accept, last_event_id)
        except Refusal as refused:
            self._refuse(refused)

    def closed(self) -> None:
        if self.stream is not None:
            self.stream.end(CLIENT)
        if self.socket is not None:
            self.socket.end(CLIENT)
        self._let_go()
        self._finished()

    def _begin_websocket(self) -> None:
        """A handshake: decided, then admitted as a stream, its cursors from the query."""
        request = self.request
        if request.method == "OPTIONS":
            self._begin(None, None, None, None)  # a preflight, whatever else it says
            return
        # The channels first: the handshake depends on how many there are.
        channel_ids = self._channel_ids(True)
        decision = handshake(
            request.method, request.version, request.raw_headers, self.location, len(channel_ids)
        )
        if isinstance(decision, Refused):
            raise Refusal(decision.status, decision.reason, list(decision.headers))
        if not request.upgrade:
            # llhttp did not read it as an upgrade, so what follows would be read as HTTP.
            raise Refusal(400, "a WebSocket handshake needs Connection: Upgrade")
        self.accepted = decision
        self._begin(None, None, None, None, websocket=True)

    def _begin(
        self,
        if_modified_since: str | None,
        if_none_match: str | None,
        accept: str | None,
        last_event_id: str | None,
        websocket: bool = False,
    ) -> None:
        method = self.request.method
        if method == "OPTIONS":
            headers = [*preflight_headers(self.shared.config.cors_max_age), ("Content-Length", "0")]
            self._respond("200", render_head(200, headers))
            return
        if method not in SUBSCRIBER_METHODS:
            raise Refusal(
                405, f"method {method} not allowed here", [("Allow", ", ".join(SUBSCRIBER_METHODS))]
            )
        # A WebSocket follows its channels as a stream does.
        streaming = websocket or wants_stream(accept)
        self.channel_ids = channel_ids = self._channel_ids(streaming)
        query = self.request.target.partition("?")[2]
        if self.location.signed:
            # First of all that costs: a URL without a valid token reaches
            # neither the broker nor Django.
            problem = query_problem(
                self.shared.config.signed_url_secrets, channel_ids, query, time.time()
            )
            if problem is not None:
                raise Refusal(403, problem)
        stream_cursors: list[MessageId | None] = []
        cursor = Cursor(None)
        if streaming:
            stream_cursors = self._stream_cursors(last_event_id, query)
        else:
            cursor = self._poll_cursor(if_modified_since, if_none_match, query)
        request = None
        if self.location.passthrough:
            # A browser's cookies came with a socket from another site: they do not
            # speak for this client.
            foreign = self.accepted is not None and not self.accepted.credentials
            request = Caller.of(self.request, CREDENTIALS if foreign else frozenset())
        buffers = self.shared.feed.buffers
        ready = []
        for channel_id in channel_ids:
            buffer = buffers.get(channel_id)
            if buffer is None or not buffer.ready or not buffer.exists or buffer.refilling:
                break
            ready.append(buffer)
        if len(ready) == len(channel_ids) and not self.location.passthrough:
            self._open(ready, cursor, stream_cursors, streaming)
        else:
            self.task = asyncio.get_running_loop().create_task(
                self._begin_slowly(cursor, stream_cursors, streaming, request)
            )

    def _channel_ids(self, streaming: bool) -> tuple[str, ...]:
        raw = self.raw_channel_id
        if CHANNEL_SEPARATOR not in raw:
            return self.shared.one_channel(raw)
        if not streaming:
            raise Refusal(
                400,
                "a URL of several channels (joined by ',') is served as an EventSource stream "
                f"only (Accept: {EVENT_STREAM}); poll each channel on its own URL, with ',' "
                "in an id written as %2C",
            )
        parts = raw.split(CHANNEL_SEPARATOR)
        most = self.location.stream_max_channels
        if len(parts) > most:
            raise Refusal(
                400, f"a stream carries at most {most} channels, this URL names {len(parts)}"
            )
        channel_ids = tuple(
            checked_channel_id(urllib.parse.unquote_to_bytes(part)) for part in parts
        )
        if len(set(channel_ids)) != len(channel_ids):
            raise Refusal(400, "a stream's URL names a channel more than once")
        return channel_ids

    def _stream_cursors(self, last_event_id: str | None, query: str) -> list[MessageId | None]:
        """The stream's cursor for each channel: Last-Event-ID, else ?last_event_id=, else none."""
        count = len(self.channel_ids)
        if last_event_id is None:
            given = query_values(query, LAST_EVENT_ID_PARAMETER)
            if len(given) > 1:
                raise Refusal(400, f"{LAST_EVENT_ID_PARAMETER} is given more than once")
            if not given:
                return [None] * count
            last_event_id = given[0]
        try:
            return parse_cursors(last_event_id, count)
        except BadCursor as error:
            raise Refusal(400, str(error)) from None

    def _poll_cursor(
        self, if_modified_since: str | None, if_none_match: str | None, query: str
    ) -> Cursor:
        """The validators, else `?last_event_id=time:tag`, else no cursor."""
        try:
            cursor = self.shared.cursor(if_modified_since, if_none_match)
        except BadValidator as error:
            raise Refusal(400, str(error)) from None
        if cursor.id is not None or not query:
            return cursor
        given = query_values(query, LAST_EVENT_ID_PARAMETER)
        if not given:
            return cursor
        if len(given) > 1:
            raise Refusal(400, f"{LAST_EVENT_ID_PARAMETER} is given more than once")
        try:
            cursor = Cursor(parse_message_id(given[0]), has_time=True, has_tag=True)
        except BadCursor as error:
            raise Refusal(400, str(error)) from None
        self.no_store = True
        return cursor

    async def _begin_slowly(
        self,
        cursor: Cursor,
        stream_cursors: list[MessageId | None],
        streaming: bool,
        request: Caller | None,
    ) -> None:
        try:
            create = self.location.create_on_get
            try:
                feed = self.shared.feed
                found = await asyncio.gather(
                    *(feed.channel(channel_id, create) for channel_id in self.channel_ids)
                )
            except BrokerUnavailable:
                raise Refusal(503, "the push broker is unavailable; try again shortly") from None
            buffers = []
            for channel_id, buffer in zip(self.channel_ids, found, strict=True):
                if buffer is None:
                    raise Refusal(
                        403,
                        "channel does not exist"
                        if len(self.channel_ids) == 1
                        else f"channel {channel_id!r} does not exist",
                    )
                buffers.append(buffer)
            if request is not None:
                await self._subscribe(request)
            self._open(buffers, cursor, stream_cursors, streaming)
        except Refusal as refused:
            if refused.status_code == 503 and streaming and self.accepted is None:
                self._stream_later(refused)
            else:
                self._refuse(refused)
        except Exception:
            # Never leave a poll unanswered: the client backs off and asks again.
            log.exception("subscriber request on %r failed", self.channel_ids)
            self._refuse(Refusal(500, "the edge failed to answer this request"))

    async def _subscribe(self, request: Caller) -> None:
        """Tell Django of each channel (asking it, with `authorize`): all admitted, or a
        refusal and those already told hear the unsubscribe."""
        passthrough = self.shared.passthrough
        told: list[str] = []
        try:
            for channel_id in self.channel_ids:
                if not self.location.authorize:
                    passthrough.subscribe(self.location, request, channel_id)
                else:
                    admitted = await passthrough.admit(self.location, request, channel_id)
                    if admitted is None:
                        raise Refusal(
                            503, "the site could not authorize this subscription; try again shortly"
                        )
                    if not admitted:
                        raise Refusal(403, "subscription refused")
                told.append(channel_id)
        except Refusal:
            for channel_id in told:
                passthrough.unsubscribe(self.location, request, channel_id)
            raise
        if self.answered:
            # The client left while Django was asked: it is unsubscribed at once.
            for channel_id in told:
                passthrough.unsubscribe(self.location, request, channel_id)
            return
        # From here on, however the poll ends, Django hears of it.
        self.subscribed = request

    # -- serving -------------------------------------------------------------------

    def _open(
        self,
        buffers: list[ChannelBuffer],
        cursor: Cursor,
        stream_cursors: list[MessageId | None],
        streaming: bool,
    ) -> None:
        if self.answered:
            return  # the client left while the channels were being synchronised
        for buffer in buffers:
            buffer.asked()
        if self.accepted is not None:
            self._websocket(buffers, stream_cursors, self.accepted)
        elif streaming:
            self._stream(buffers, stream_cursors)
        else:
            self._serve(buffers[0], cursor)

    def _stream(self, buffers: list[ChannelBuffer], cursors: list[MessageId | None]) -> None:
        shared = self.shared
        request = self.request
        # The body ends with the connection: nothing after this request is answered on it.
        request.keep_alive = False
        head = b"".join((STREAM_HEAD, self.cors, shared.date(), request.connection_line(), CRLF))
        shared.responses["200"] += 1
        self.stream = Stream(shared.streams, self.location, self.connection, self._finished)
        self.stream.open(head, buffers, cursors)

    def _stream_later(self, refused: Refusal) -> None:
        """A stream that cannot open for a passing reason (a poll's 503): a `200` whose body
        is a `retry:`, the reason as a comment, and its end. An EventSource gives up for
        good on any answer but a stream, and these reasons pass; this one it retries."""
        if self.answered:
            return
        self._finished()
        shared = self.shared
        request = self.request
        request.keep_alive = False
        head = b"".join((STREAM_HEAD, self.cors, shared.date(), request.connection_line(), CRLF))
        reason = b": " + refused.why.encode() + b"\n"
        self.connection.send(head + shared.streams.retry(self.location.stream_retry) + reason)
        self.connection.finish()
        shared.responses["200"] += 1
        shared.streams.closed[UNAVAILABLE] += 1

    def _websocket(
        self, buffers: list[ChannelBuffer], cursors: list[MessageId | None], accepted: Accepted
    ) -> None:
        shared = self.shared
        head = b"".join((render_head(101, accepted.headers), shared.date(), CRLF))
        shared.responses["101"] += 1
        self.socket = WebSocket(
            shared.websockets,
            self.location,
            self.connection,
            accepted.subprotocol is not None,
            self._finished,
        )
        self.socket.open(head, buffers, cursors)

    def _serve(self, buffer: ChannelBuffer, cursor: Cursor) -> None:
        held, missed = buffer.find(cursor.id)
        if held is not None:
            self._answer(held, missed)
        elif self.location.polling == INTERVAL_POLL:
            self._not_modified(cursor)
        else:
            self._hold(buffer, cursor)

    def _hold(self, buffer: ChannelBuffer, cursor: Cursor) -> None:
        self.buffer = buffer
        self.cursor = cursor
        # Bound methods, not closures over the cursor: a poll is held per message.
        self.waiter = Waiter(cursor.id, self._delivered, self._released)
        buffer.wait(self.waiter)
        shared = self.shared
        shared.held_polls += 1
        self.timer = shared.timeouts.start(self._released)

    def _delivered(self, held: Held | None, missed: bool) -> None:
        """The held poll's message arrived (None: the channel was deleted)."""
        self._let_go()
        if held is None:
            self._refuse(Refusal(410, "channel deleted"))
        else:
            self._answer(held, missed)

    def _released(self) -> None:
        """The held poll timed out, or the edge is stopping: 304, back where it stood."""
        self._let_go()
        assert self.cursor is not None
        self._not_modified(self.cursor)

    def _let_go(self) -> None:
        if self.timer is not None:
            self.shared.timeouts.cancel(self.timer)
            self.timer = None
        buffer = self.buffer
        if buffer is not None and self.waiter is not None:
            buffer.forget(self.waiter)
            self.waiter = None
            self.shared.held_polls -= 1

    # -- responses -------------------------------------------------------------------

    def _answer(self, held: Held, missed: bool) -> None:
        head = poll_head(held, self.no_store)
        if missed:
            head += MISSED_LINE
        self._respond("200", head, held.message.body)

    def _not_modified(self, cursor: Cursor) -> None:
        self._respond("304", self.shared.not_modified(cursor, self.no_store))

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
        """The poll or stream is over: Django hears it was (once), nothing more is written."""
        if self.answered:
            return
        self.answered = True
        if self.subscribed is not None:
            for channel_id in self.channel_ids:
                self.shared.passthrough.unsubscribe(self.location, self.subscribed, channel_id)
            self.subscribed = None
