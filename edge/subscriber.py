"""The subscriber location: long-poll and interval-poll GETs, CORS preflight."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from edge.channels import ChannelBuffer, Held, Waiter
from edge.config import INTERVAL_POLL, EdgeConfig, SubscriberLocation
from edge.cors import cors_headers, preflight_headers
from edge.feed import BrokerUnavailable, Feed
from edge.handlers import PushHandler
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

# What a held poll's future resolves to besides a message.
TIMED_OUT = "timed out"
RELEASED = "released"
CLOSED = "closed"


class SubscriberHandler(PushHandler):
    ALLOWED = SUBSCRIBER_METHODS

    def initialize(
        self,
        feed: Feed,
        location: SubscriberLocation,
        config: EdgeConfig,
        passthrough: Passthrough,
        responses: Counter[str],
    ) -> None:
        self.responses = responses
        self.feed = feed
        self.location = location
        self.config = config
        self.passthrough = passthrough if location.passthrough else None
        self._held: asyncio.Future[Any] | None = None

    def always_headers(self) -> list[tuple[str, str]]:
        return cors_headers(self.location, self.request.headers.get("Origin"))

    def prepare(self) -> None:
        for name, value in self.always_headers():
            self.add_header(name, value)
        super().prepare()

    def options(self, *groups: str, **named_groups: str) -> None:
        for name, value in preflight_headers(self.config.cors_max_age):
            self.set_header(name, value)
        self.finish()

    async def get(self, *groups: str, **named_groups: str) -> None:
        channel_id = self.channel_id()
        headers = self.request.headers
        try:
            cursor = parse_cursor(headers.get(IF_MODIFIED_SINCE), headers.get(IF_NONE_MATCH))
        except BadValidator as error:
            self.refuse(400, str(error))
        try:
            buffer = await self.feed.channel(channel_id, self.location.create_on_get)
        except BrokerUnavailable:
            self.refuse(503, "the push broker is unavailable; try again shortly")
        if buffer is None:
            self.refuse(403, "channel does not exist")
        passthrough = self.passthrough
        if passthrough is None:
            await self._serve(buffer, cursor)
            return
        if not self.location.authorize:
            passthrough.subscribe(self.location, self.request, channel_id)
        else:
            admitted = await passthrough.admit(self.location, self.request, channel_id)
            if admitted is None:
                self.refuse(
                    503, "the site could not authorize this subscription; try again shortly"
                )
            if not admitted:
                self.refuse(403, "subscription refused")
        try:
            await self._serve(buffer, cursor)
        finally:
            passthrough.unsubscribe(self.location, self.request, channel_id)

    async def _serve(self, buffer: ChannelBuffer, cursor: Cursor) -> None:
        buffer.requested = time.time()
        held, missed = buffer.find(cursor.id)
        if held is not None:
            self.feed.touch(buffer)
            self._answer(held, missed)
        elif self.location.polling == INTERVAL_POLL:
            self.feed.touch(buffer)
            self._not_modified(cursor)
        else:
            await self._hold(buffer, cursor)

    async def _hold(self, buffer: ChannelBuffer, cursor: Cursor) -> None:
        loop = asyncio.get_running_loop()
        held_future: asyncio.Future[Any] = loop.create_future()
        self._held = held_future

        def settle(outcome: Any) -> None:
            if not held_future.done():
                held_future.set_result(outcome)

        waiter = Waiter(
            cursor.id,
            lambda held, missed: settle((held, missed)),
            lambda: settle(RELEASED),
        )
        buffer.wait(waiter)
        self.feed.touch(buffer)
        # One timer per poll rather than asyncio.wait_for, which costs twice as
        # much when thousands of polls wake at once.
        timer = loop.call_later(self.config.long_poll_timeout, settle, TIMED_OUT)
        try:
            outcome = await held_future
        finally:
            timer.cancel()
            buffer.forget(waiter)
            self.feed.touch(buffer)
            self._held = None
        if outcome == CLOSED:
            return
        if outcome in (TIMED_OUT, RELEASED):
            self._not_modified(cursor)
            return
        held, missed = outcome
        if held is None:
            self.refuse(410, "channel deleted")
        self._answer(held, missed)

    def on_finish(self) -> None:
        self.responses[str(self.get_status())] += 1

    def on_connection_close(self) -> None:
        if self._held is not None and not self._held.done():
            self._held.set_result(CLOSED)

    def _answer(self, held: Held, missed: bool) -> None:
        for name, value in held.headers:
            self.add_header(name, value)
        if held.message.content_type is not None:
            self.set_header("Content-Type", held.message.content_type)
        if missed:
            self.set_header(MESSAGES_MISSED, "1")
        self.finish(held.message.body)

    def _not_modified(self, cursor: Cursor) -> None:
        self.set_status(304)
        for name, value in echo_headers(cursor):
            self.add_header(name, value)
        self.finish()
