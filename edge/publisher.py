"""The publisher location: POST publishes, PUT creates, GET describes, DELETE removes.

Answered on the edge's own connection (`edge.connection`), as the
subscriber location is: through Tornado a publish cost several times what
the broker spends on it. A POST goes to the broker through the edge's
ingress link (`edge.ingress`), exactly once as `send_update`'s messages
do, and is answered when the broker answers it with the channel's info:
201 when a subscriber was held anywhere in the cluster, else 202. PUT,
GET and DELETE are rare and ask over the control socket (`Feed.request`).

Trusted callers only: an address in `allow_from` (behind a trusted proxy, the
client's address it reports: `edge.access`), or the shared secret.
Bodies are collected up to `max_message_size`; an over-size one is read
and thrown away before the 413, because closing on a client still sending
resets the connection and the client never sees why. Beyond
`discard_limit` the connection stops reading and answers 413 itself.

The answer to a POST also waits, briefly, for the edge's own copy of the
channel (when it follows the channel) to hold the message: the broker's
answer and the message come over two sockets in either order, and a
client that publishes and then polls the same edge must find what it
published (`CatchUp`).

An `Idempotency-Key` names a publish: the broker answers a second POST
with the same key on the same channel within its window as it answered
the first, and does not publish it again. The trap it exists for: a 503
(the broker did not answer within `broker_timeout`) does not mean the
message was not published, since the ingress link keeps it and sends it
once the broker is back; only a retry with the same key is safe.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import tornado.httputil

from broker import wire
from edge.access import Proxies, TrustedCallers
from edge.bridge import CONTINUE
from edge.channels import ChannelBuffer
from edge.config import EdgeConfig, PublisherLocation
from edge.connection import CRLF, Connection, Request, header_lines, render_head
from edge.feed import BrokerUnavailable, Feed
from edge.handlers import Refusal, anchored, checked_channel_id
from edge.info import render
from edge.ingress import Ingress
from edge.protocol import EVENTSOURCE_EVENT, IDEMPOTENCY_KEY, PUBLISHER_METHODS, PUSH_SECRET

log = logging.getLogger("pushserver.edge")

TEXT_PLAIN = "text/plain; charset=utf-8"
# Channel ids decoded, remembered; cleared when full, since decoding one again is cheap.
CACHE_LIMIT = 4096
UNAVAILABLE = "the push broker is unavailable; try again shortly"
# Control requests by method; POST goes through the ingress link.
CONTROL_KINDS = {"PUT": wire.CREATE, "GET": wire.INFO, "DELETE": wire.DELETE}
# As Tornado reads a request's Host (RFC 3986's host and port, loosely); a comma
# is refused on its own, since it means several Host headers were joined.
_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=\[\]:%]*")
_HEADERS = (
    b"host",
    b"content-length",
    PUSH_SECRET.lower().encode(),
    b"expect",
    b"content-type",
    b"accept",
    IDEMPOTENCY_KEY.lower().encode(),
    EVENTSOURCE_EVENT.lower().encode(),
)


def host_problem(host: str | None, version: str) -> str | None:
    """Why a request's Host header cannot be read, as Tornado says it; None when it can."""
    if host is None:
        return None if version == "HTTP/1.0" else "Missing Host header"
    if not _HOST.fullmatch(host):
        return f"Invalid Host header: {host!r}"
    if "," in host:
        return f"Multiple host headers not allowed: {host!r}"
    return None


# Seconds a POST's answer waits at most for the edge's copy of the channel.
CATCH_UP_LIMIT = 0.5
# How often waiting answers are looked at besides the feed's events: a buffer
# that was forgotten or lost its subscription meanwhile hears no event.
CATCH_UP_SWEEP = 0.01

Waiting = tuple[float, wire.MessageId, Callable[[], None]]


class CatchUp:
    """Answers held until the edge's buffer of a channel holds a message the broker
    sequenced.

    Looked at when the feed applies an event to the channel (`Feed.on_event`),
    not on every turn of the loop: a look per turn keeps the loop from ever
    sleeping while an answer waits, and the wait is the time the message takes
    over the other socket. A buffer that is not synchronised yet, refilling,
    or gone answers at once (it catches up its own way); a copy that never
    arrives, by `limit`.
    """

    def __init__(self, feed: Feed, limit: float) -> None:
        self.feed = feed
        self.limit = limit
        self._waiting: dict[str, list[Waiting]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def then(
        self, channel_id: str, last: wire.MessageId | None, answer: Callable[[], None]
    ) -> None:
        """Call `answer` once the edge's copy of `channel_id` holds `last`."""
        if last is None or self._holds(channel_id, last):
            answer()
            return
        loop = asyncio.get_running_loop()
        self._waiting.setdefault(channel_id, []).append((loop.time() + self.limit, last, answer))
        self.feed.on_event = self._on_event
        if self._sweeper is None:
            self._sweeper = loop.call_later(CATCH_UP_SWEEP, self._sweep)

    def _holds(self, channel_id: str, last: wire.MessageId) -> bool:
        buffer = self.feed.buffers.get(channel_id)
        return (
            buffer is None
            or not buffer.ready
            or buffer.refilling
            or (buffer.last is not None and buffer.last >= last)
        )

    def _on_event(self, buffer: ChannelBuffer) -> None:
        if buffer.channel_id in self._waiting:
            self._look(buffer.channel_id, asyncio.get_running_loop().time())

    def _look(self, channel_id: str, now: float) -> None:
        entries = self._waiting.pop(channel_id)
        left = []
        for entry in entries:
            deadline, last, answer = entry
            if now >= deadline or self._holds(channel_id, last):
                answer()
            else:
                left.append(entry)
        if left:
            # An answer may have let the connection publish again on this channel.
            self._waiting[channel_id] = left + self._waiting.get(channel_id, [])
        if not self._waiting:
            self.feed.on_event = None

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for channel_id in list(self._waiting):
            if channel_id in self._waiting:
                self._look(channel_id, now)
        if self._waiting:
            self._sweeper = loop.call_later(CATCH_UP_SWEEP, self._sweep)


@dataclass(frozen=True, slots=True)
class Location:
    pattern: re.Pattern[str]
    settings: PublisherLocation
    callers: TrustedCallers


class Publishers:
    """What every request to an edge's publisher locations shares."""

    def __init__(
        self, config: EdgeConfig, feed: Feed, ingress: Ingress, date: Callable[[], bytes]
    ) -> None:
        self.feed = feed
        self.ingress = ingress
        # The Date header line, as the subscriber location caches it.
        self.date = date
        self.limit = config.max_message_size
        self.discard_limit = max(2 * self.limit, self.limit + 16 * 1024 * 1024)
        self.locations = []
        proxies = Proxies(config.forwarded_allow_ips)
        for settings in config.publishers:
            pattern = anchored(settings.url)
            self.locations.append(
                Location(
                    re.compile(pattern if pattern.endswith("$") else pattern + "$"),
                    settings,
                    TrustedCallers(settings.allow_from, settings.secret, proxies),
                )
            )
        self._heads: dict[tuple[int, str], bytes] = {}
        self._channel_ids: dict[str, str] = {}
        self.catch_up = CatchUp(feed, min(CATCH_UP_LIMIT, config.broker_timeout))

    def match(self, path: str) -> tuple[Location, str] | None:
        for location in self.locations:
            found = location.pattern.match(path)
            if found is not None:
                return location, found.group(1)
        return None

    def channel_id(self, raw: str) -> str:
        """The path group as a channel id (percent-decoded, checked), or a 400 Refusal."""
        channel_id = self._channel_ids.get(raw)
        if channel_id is None:
            channel_id = checked_channel_id(urllib.parse.unquote_to_bytes(raw))
            if len(self._channel_ids) >= CACHE_LIMIT:
                self._channel_ids.clear()
            self._channel_ids[raw] = channel_id
        return channel_id

    def drop_caches(self) -> None:
        """Empty the channel ids remembered by path, before a trim (`broker.memory`)."""
        self._channel_ids.clear()

    def head(self, status: int, content_type: str) -> bytes:
        """An answer's status line and Content-Type line; there are only a few."""
        key = (status, content_type)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = render_head(status, [("Content-Type", content_type)])
        return head


class PublisherRequest:
    __slots__ = (
        "shared",
        "connection",
        "request",
        "channel_id",
        "content_type",
        "accept",
        "key",
        "event",
        "chunks",
        "size",
        "answered",
        "task",
    )

    def __init__(
        self,
        shared: Publishers,
        location: Location,
        raw_channel_id: str,
        connection: Connection,
        request: Request,
    ) -> None:
        self.shared = shared
        self.connection = connection
        self.request = request
        self.chunks: list[bytes] = []
        self.size = 0
        self.answered = False
        self.task: asyncio.Task[None] | None = None
        self.channel_id = ""
        self.key: str | None = None
        self.event: str | None = None
        host, length, secret, expect, self.content_type, self.accept, key, event = (
            request.headers_named(*_HEADERS)
        )
        problem = host_problem(host, request.version)
        if problem:
            raise tornado.httputil.HTTPInputError(problem)
        try:
            self.channel_id = shared.channel_id(raw_channel_id)
            self._admit(location, secret, length, key, event)
        except Refusal as refused:
            self._refuse(refused)
            return
        connection.max_body_size = shared.discard_limit
        if (
            request.version == "HTTP/1.1"
            and expect is not None
            and expect.lower() == "100-continue"
        ):
            connection.send(CONTINUE)

    def _admit(
        self,
        location: Location,
        secret: str | None,
        length: str | None,
        key: str | None,
        event: str | None,
    ) -> None:
        method = self.request.method
        if method not in PUBLISHER_METHODS:
            raise Refusal(
                405, f"method {method} not allowed here", [("Allow", ", ".join(PUBLISHER_METHODS))]
            )
        if not location.callers.admit_request(self.request, secret):
            raise Refusal(403, "publishing is not allowed from this address")
        if length is not None:
            if not length.isdigit():
                raise Refusal(400, "Content-Length is not a number")
            if int(length) > self.shared.discard_limit:
                raise Refusal(413, f"message is larger than {self.shared.limit} bytes")
        if self.content_type is not None and method == "POST":
            problem = wire.content_type_problem(self.content_type)
            if problem:
                raise Refusal(400, problem)
        if key is not None and method == "POST":
            problem = wire.key_problem(key)
            if problem:
                raise Refusal(400, f"{IDEMPOTENCY_KEY}: {problem}")
            self.key = key
        if event is not None and method == "POST":
            problem = wire.event_name_problem(event)
            if problem:
                raise Refusal(400, f"{EVENTSOURCE_EVENT}: {problem}")
            self.event = event

    # -- Responder -------------------------------------------------------------

    def body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.shared.limit:
            self.chunks.append(chunk)
        else:
            self.chunks.clear()

    def complete(self) -> None:
        if self.answered:
            return
        method = self.request.method
        if method != "POST":
            self.task = asyncio.get_running_loop().create_task(self._ask(CONTROL_KINDS[method]))
            return
        shared = self.shared
        if self.size > shared.limit:
            self._refuse(Refusal(413, f"message is larger than {shared.limit} bytes"))
            return
        body = b"".join(self.chunks)
        self.chunks = []
        if not shared.ingress.publish(
            self.channel_id, body, self.content_type, self.key, self._published, self.event
        ):
            why = "the edge holds too many unacknowledged publishes; try again shortly"
            self._refuse(Refusal(503, why))

    def closed(self) -> None:
        self.answered = True
        if self.task is not None:
            self.task.cancel()

    # -- answers ---------------------------------------------------------------

    def _published(self, info: wire.ChannelInfo | None) -> None:
        if info is None:
            self._refuse(Refusal(503, UNAVAILABLE))
            return
        status = 201 if info.subscribers > 0 else 202
        # The info is the channel's right after the publish: its last id is the message's.
        self.shared.catch_up.then(self.channel_id, info.last, lambda: self._info(status, info))

    async def _ask(self, kind: str) -> None:
        try:
            reply = await self.shared.feed.request(wire.Request(kind, 0, self.channel_id))
        except BrokerUnavailable:
            self._refuse(Refusal(503, UNAVAILABLE))
            return
        except Exception:
            log.exception("%s on channel %r failed", kind, self.channel_id)
            self._refuse(Refusal(500, "the edge failed on this request"))
            return
        if reply.info is None:
            self._refuse(Refusal(404, "channel not found"))
        else:
            self._info(200, reply.info)

    def _info(self, status: int, info: wire.ChannelInfo) -> None:
        content_type, body = render(info, self.accept)
        self._respond(self.shared.head(status, content_type), body)

    def _refuse(self, refused: Refusal) -> None:
        head = self.shared.head(refused.status_code, TEXT_PLAIN)
        self._respond(head + header_lines(refused.headers), (refused.why + "\n").encode())

    def _respond(self, head: bytes, body: bytes) -> None:
        if self.answered:
            return
        self.answered = True
        connection = self.connection
        connection.send(
            b"".join(
                (
                    head,
                    b"Content-Length: %d\r\n" % len(body),
                    self.shared.date(),
                    self.request.connection_line(),
                    CRLF,
                    body,
                )
            )
        )
        connection.finish()
