"""The EventSource format as the edges write it, and the stream cursor as they read it.

Pure functions on bytes and strings, no sockets: `edge.stream` sends what
these render, and the tests judge them without a server.

An event is `id:`, an optional `event:`, the body as `data:` lines and a
blank line. The trap is the body: EventSource ends a line at CRLF, LF or
CR alike and decodes the stream as UTF-8, so a body is split at all three
(each becomes its own `data:` line, and the browser joins them with LF)
and a body that is not UTF-8 is decoded with U+FFFD for each bad
sequence before it is written. Written as it came, a lone CR would end a
field early and a bad byte would stand for whatever the decoder made of
it; either way the stream could say something no publisher sent.

A stream's id carries its cursor. On a one-channel stream it is the
message id `time:tag`; on a stream of several channels it is every
channel's cursor in URL order, `-` for a channel with none yet, the
event's own channel in brackets: `1733000000:0,[1733000005:2],-`. The
browser sends the last id back as `Last-Event-ID` when it reconnects, so
each channel resumes exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from urllib.parse import unquote_plus

from broker.wire import LAST_SECOND, MessageId

EVENT_STREAM = "text/event-stream"
# The query parameter carrying a cursor (Nchan's name), read by streams and polls.
LAST_EVENT_ID_PARAMETER = "last_event_id"
# Events the edge writes itself, with {"channel_id": ...} as data and no id, so
# the browser's last event id stays the last message's.
MISSED_EVENT = "pushserver-missed"
DELETED_EVENT = "pushserver-deleted"
# A name an EventSource listener can be given (the client's EVENT_NAME).
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Keeps a stream no proxy would time out; a comment, which EventSource ignores.
KEEPALIVE = b":\n"
# Separates several channels in a URL's channel segment and cursors in an id.
CHANNEL_SEPARATOR = ","
NO_CURSOR = "-"

_ID = re.compile(r"(\d{1,12}):(\d{1,18})")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class BadCursor(ValueError):
    """A stream cursor that names no position: the client is told why (400)."""


def wants_stream(accept: str | None) -> bool:
    """Whether an `Accept` header asks for an EventSource stream (a q of 0 refuses one)."""
    if accept is None:
        return False
    if EVENT_STREAM not in accept:
        accept = accept.lower()  # media types are case-insensitive; browsers write them lower
        if EVENT_STREAM not in accept:
            return False
    for part in accept.split(","):
        media, _, parameters = part.partition(";")
        if media.strip().lower() != EVENT_STREAM:
            continue
        for parameter in parameters.split(";"):
            name, _, value = parameter.strip().partition("=")
            if name.strip() == "q" and value.strip() in ("0", "0.0", "0.00", "0.000"):
                return False
        return True
    return False


def data_lines(body: bytes) -> bytes:
    """`body` as the `data:` lines of one event, each ended by LF."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        body = body.decode("utf-8", "replace").encode("utf-8")
    lines = _LINE_END.split(body)
    return b"".join(b"data: " + line + b"\n" if line else b"data:\n" for line in lines)


def event_body(body: bytes, name: str | None) -> bytes:
    """What follows an event's `id:` line: its name, its data, the blank line that ends it.

    A name no EventSource listener could be given (or that could break the
    stream) is left out: the event then reaches the stream's `message` listeners.
    """
    named = b""
    if name is not None and EVENT_NAME.fullmatch(name):
        named = b"event: " + name.encode() + b"\n"
    return named + data_lines(body) + b"\n"


def id_line(text: str) -> bytes:
    return b"id: " + text.encode("ascii") + b"\n"


def format_cursors(cursors: Sequence[MessageId | None], own: int) -> str:
    """A stream id: every channel's cursor in URL order, `own`'s in brackets when several."""
    if len(cursors) == 1:
        return str(cursors[0])
    parts = [NO_CURSOR if cursor is None else str(cursor) for cursor in cursors]
    parts[own] = f"[{parts[own]}]"
    return CHANNEL_SEPARATOR.join(parts)


def notice(name: str, channel_id: str) -> bytes:
    """An event of the edge's own about one channel, without an id."""
    data = json.dumps({"channel_id": channel_id})
    return b"event: %s\ndata: %s\n\n" % (name.encode(), data.encode())


def retry_field(milliseconds: int) -> bytes:
    return b"retry: %d\n\n" % milliseconds


def parse_cursors(text: str, count: int) -> list[MessageId | None]:
    """The cursor of each of `count` channels in a stream id (`Last-Event-ID`, `last_event_id`).

    >>> parse_cursors("5:0,[7:1],-", 3)
    [MessageId(time=5, tag=0), MessageId(time=7, tag=1), None]
    """
    parts = text.strip().split(CHANNEL_SEPARATOR)
    if len(parts) != count:
        raise BadCursor(
            f"last event id {text!r} has {len(parts)} cursor(s); this stream has {count} channel(s)"
        )
    cursors: list[MessageId | None] = []
    bracketed = 0
    for part in parts:
        if len(part) > 1 and part[0] == "[" and part[-1] == "]":
            part = part[1:-1]
            bracketed += 1
        if part == NO_CURSOR:
            cursors.append(None)
            continue
        found = _ID.fullmatch(part)
        if found is None or int(found.group(1)) > LAST_SECOND:
            raise BadCursor(f"last event id {text!r}: {part!r} is not a message id time:tag")
        cursors.append(MessageId(int(found.group(1)), int(found.group(2))))
    if bracketed > 1:
        raise BadCursor(f"last event id {text!r} brackets more than one cursor")
    return cursors


def parse_message_id(text: str) -> MessageId:
    """One channel's cursor `time:tag`, as a poll's `last_event_id` carries it."""
    found = _ID.fullmatch(text.strip())
    if found is None or int(found.group(1)) > LAST_SECOND:
        raise BadCursor(f"last_event_id {text!r} is not a message id time:tag")
    return MessageId(int(found.group(1)), int(found.group(2)))


def query_values(query: str, name: str) -> list[str]:
    """Every value of the parameter `name` in a query string (the part after ``?``).

    Read as `parse_qsl` reads it, at a fraction of its cost on the path of
    every poll: fields split at ``&``, ``+`` a space, percent-decoded as UTF-8.
    """
    if name not in query and "%" not in query:
        return []
    found = []
    for field in query.split("&"):
        key, _, value = field.partition("=")
        if unquote_plus(key) == name:
            found.append(unquote_plus(value))
    return found
