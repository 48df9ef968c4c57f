"""The push relay protocol's header names, cursor rules and formats.

The one place the HTTP side of the protocol is spelled (the README's "The
HTTP protocol" section says what the edges choose where implementations
differ); the locations and the tests import these names.
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import re
from dataclasses import dataclass

from broker.wire import LAST_SECOND, MessageId

IF_MODIFIED_SINCE = "If-Modified-Since"
IF_NONE_MATCH = "If-None-Match"
LAST_MODIFIED = "Last-Modified"
ETAG = "Etag"
CACHE_CONTROL = "Cache-Control"
VARY = "Vary"
MESSAGES_MISSED = "X-Messages-Missed"
# A stream's cursor (`time:tag`) as EventSource resumes with it; Nchan reads it on every transport.
LAST_EVENT_ID = "Last-Event-ID"
X_REQUESTED_WITH = "X-Requested-With"
PUSH_SECRET = "X-Push-Secret"
# Names one publish: a retry with the same key is answered as the first was.
IDEMPOTENCY_KEY = "Idempotency-Key"
# Names a publish's EventSource event (Nchan's header); polls do not carry it.
EVENTSOURCE_EVENT = "X-EventSource-Event"

VARY_VALUE = f"{IF_NONE_MATCH}, {IF_MODIFIED_SINCE}"
SUBSCRIBER_METHODS = ("GET", "OPTIONS")
PUBLISHER_METHODS = ("GET", "PUT", "POST", "DELETE")

_TAG = re.compile(r'^\s*"?(-?\d{1,18})"?\s*$')


class BadValidator(ValueError):
    """A validator header that cannot be read as a cursor."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a subscriber stands: None when it sent no validators at all."""

    id: MessageId | None
    # Echoed back on a 304, exactly the validators the client sent.
    has_time: bool = False
    has_tag: bool = False


@functools.lru_cache(maxsize=64)
def http_date(seconds: int) -> str:
    """An HTTP date; remembered, since the messages of a second share their Last-Modified."""
    return email.utils.formatdate(seconds, usegmt=True)


def cache_control(tag: int) -> str:
    # The tag goes last: old clients read it with /etag=(\S+)/ when a
    # cross-origin response hides the Etag header from them.
    return f"no-cache, etag={tag}"


def parse_cursor(if_modified_since: str | None, if_none_match: str | None) -> Cursor:
    if if_modified_since is None and if_none_match is None:
        return Cursor(None)
    seconds = 0
    if if_modified_since is not None:
        parsed = email.utils.parsedate_tz(if_modified_since)
        if parsed is None:
            raise BadValidator(f"{IF_MODIFIED_SINCE} is not an HTTP date: {if_modified_since!r}")
        try:
            seconds = calendar.timegm(parsed[:9]) - (parsed[9] or 0)
        except (OverflowError, ValueError):
            seconds = -1
        if not 0 <= seconds <= LAST_SECOND:  # a 304 must be able to echo it
            raise BadValidator(f"{IF_MODIFIED_SINCE} is out of range: {if_modified_since!r}")
    tag = -1
    if if_none_match is not None:
        match = _TAG.match(if_none_match)
        if match is None:
            raise BadValidator(f"{IF_NONE_MATCH} is not a decimal tag: {if_none_match!r}")
        tag = int(match.group(1))
    return Cursor(MessageId(seconds, tag), if_modified_since is not None, if_none_match is not None)


def echo_headers(cursor: Cursor) -> list[tuple[str, str]]:
    """The validators of a 304: what the client sent, so it asks again from there."""
    if cursor.id is None:
        return []
    headers = [(VARY, VARY_VALUE)]
    if cursor.has_time:
        headers.append((LAST_MODIFIED, http_date(cursor.id.time)))
    if cursor.has_tag:
        headers.append((ETAG, str(cursor.id.tag)))
        headers.append((CACHE_CONTROL, cache_control(cursor.id.tag)))
    return headers


# Edges send this to Django's passthrough view, which trusts a matching value
# from any address (PUSH_SERVER['passthrough_secret']).
PASSTHROUGH_SECRET = "X-Passthrough-Secret"
# The form fields of a passthrough call, as the original sent them.
PASSTHROUGH_CHANNEL = "channel_id"
PASSTHROUGH_SUBSCRIBE = "subscribe"
PASSTHROUGH_UNSUBSCRIBE = "unsubscribe"
