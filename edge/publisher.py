"""The publisher location: POST publishes, PUT creates, GET describes, DELETE removes.

Trusted callers only: an address in `allow_from`, or the shared secret.
Bodies are streamed: an over-size one is read and thrown away before the
413, because closing on a client still sending resets the connection and
the client never sees why. Beyond `discard_limit` the edge stops reading.
"""

from __future__ import annotations

import tornado.web

from broker import wire
from edge.access import TrustedCallers
from edge.bridge import Exchange
from edge.config import EdgeConfig, PublisherLocation
from edge.feed import BrokerUnavailable, Feed
from edge.handlers import PushHandler
from edge.info import render
from edge.protocol import PUBLISHER_METHODS


@tornado.web.stream_request_body
class PublisherHandler(PushHandler):
    ALLOWED = PUBLISHER_METHODS

    def initialize(self, feed: Feed, location: PublisherLocation, config: EdgeConfig) -> None:
        self.feed = feed
        self.location = location
        self.limit = config.max_message_size
        self.discard_limit = max(2 * self.limit, self.limit + 16 * 1024 * 1024)
        self.callers = TrustedCallers(location.allow_from, location.secret)
        self.chunks: list[bytes] = []
        self.size = 0

    def prepare(self) -> None:
        super().prepare()
        if not self.callers.admit(self.request):
            self.refuse(403, "publishing is not allowed from this address")
        length = self.request.headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                self.refuse(400, "Content-Length is not a number")
            if int(length) > self.discard_limit:
                self.refuse(413, f"message is larger than {self.limit} bytes")
        connection = self.request.connection
        if isinstance(connection, Exchange):
            connection.set_max_body_size(self.discard_limit)

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.chunks.append(chunk)
        else:
            self.chunks.clear()

    async def _ask(self, request: wire.Request) -> wire.Reply:
        try:
            return await self.feed.request(request)
        except BrokerUnavailable:
            self.refuse(503, "the push broker is unavailable; try again shortly")

    def _info(self, status: int, info: wire.ChannelInfo | None) -> None:
        if info is None:
            self.refuse(404, "channel not found")
        content_type, body = render(info, self.request.headers.get("Accept"))
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(body)

    async def post(self, *groups: str, **named_groups: str) -> None:
        channel_id = self.channel_id()
        if self.size > self.limit:
            self.refuse(413, f"message is larger than {self.limit} bytes")
        body = b"".join(self.chunks)
        content_type = self.request.headers.get("Content-Type")
        reply = await self._ask(wire.Request(wire.PUBLISH, 0, channel_id, content_type, body))
        info = reply.info
        self._info(201 if info is not None and info.subscribers > 0 else 202, info)

    async def put(self, *groups: str, **named_groups: str) -> None:
        reply = await self._ask(wire.Request(wire.CREATE, 0, self.channel_id()))
        self._info(200, reply.info)

    async def get(self, *groups: str, **named_groups: str) -> None:
        reply = await self._ask(wire.Request(wire.INFO, 0, self.channel_id()))
        self._info(200, reply.info)

    async def delete(self, *groups: str, **named_groups: str) -> None:
        reply = await self._ask(wire.Request(wire.DELETE, 0, self.channel_id()))
        self._info(200, reply.info)
