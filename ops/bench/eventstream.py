"""The `text/event-stream` format as a browser's EventSource reads it, and chunked bodies, fed
in pieces.

W6's load generator reads each stream through these two, so what it counts
is what a browser would have dispatched: lines end in CRLF, LF or a lone
CR; a line starting with a colon is a comment (a keep-alive); `data`
lines are joined with LF; `id` sets the stream's last event id, which
stays for the events after it until another `id` line (so an event
without its own `id` line is told apart here); `retry` holds digits only;
a blank line dispatches the event, unless it has no data; a leading BOM
is dropped (WHATWG HTML, "Interpreting an event stream").

Pure functions of the bytes with no sockets, so every rule is tested with
the input split at every place. The trap: a CR at the end of one piece may
be the first half of a CRLF whose LF opens the next piece, so a line end
is not final until the next byte is seen.
"""

from __future__ import annotations

from typing import NamedTuple

BOM = b"\xef\xbb\xbf"


class ServerEvent(NamedTuple):
    """One event as EventSource dispatches it."""

    # The stream's last event id when it was dispatched (from this event's own
    # `id` line or an earlier one's); `own_id` says whether this event had one.
    last_event_id: bytes
    own_id: bool
    # `message` unless an `event` line named it.
    type: bytes
    data: bytes


class EventStreamParser:
    __slots__ = (
        "_rest",
        "_started",
        "_cr_pending",
        "_data",
        "_type",
        "_own_id",
        "_id_buffer",
        "last_event_id",
        "retry",
        "comments",
    )

    def __init__(self) -> None:
        self._rest = b""
        self._started = False
        self._cr_pending = False
        self._data: list[bytes] = []
        self._type = b""
        self._own_id = False
        self._id_buffer = b""
        # What a reconnection sends as Last-Event-ID: set when an event is dispatched
        # (so not by the `id` line of an event the stream broke off in).
        self.last_event_id = b""
        # The reconnection time a `retry` line set, in milliseconds; None if none did.
        self.retry: int | None = None
        self.comments = 0

    def feed(self, data: bytes) -> list[ServerEvent]:
        """The events completed by `data`, in order."""
        if not self._started:
            data = self._rest + data
            if len(data) < len(BOM) and BOM.startswith(data):
                self._rest = data
                return []
            self._rest = b""
            self._started = True
            if data.startswith(BOM):
                data = data[len(BOM) :]
        if self._cr_pending and data[:1] == b"\n":
            data = data[1:]  # the LF of a CRLF whose CR ended the last piece
        if b"\r" in data:
            self._cr_pending = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self._cr_pending = False
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        events: list[ServerEvent] = []
        for line in lines:
            if not line:
                self._dispatch(events)
            elif line[0] == 0x3A:  # ":"
                self.comments += 1
            else:
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"id":
            if b"\0" not in value:
                self._id_buffer = value
                self._own_id = True
        elif name == b"event":
            self._type = value
        elif name == b"retry" and value.isdigit() and value.isascii():
            self.retry = int(value)
        # Any other field is ignored, as EventSource ignores it.

    def _dispatch(self, events: list[ServerEvent]) -> None:
        # Even an event without data moves the last event id.
        self.last_event_id = self._id_buffer
        if self._data:
            events.append(
                ServerEvent(
                    self.last_event_id,
                    self._own_id,
                    self._type or b"message",
                    b"\n".join(self._data),
                )
            )
        self._data = []
        self._type = b""
        self._own_id = False


class ChunkedDecoder:
    """A chunked body, fed in pieces: `feed` returns the body bytes they complete."""

    __slots__ = ("_buffer", "_remaining", "finished")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Bytes of the current chunk still to come, then its CRLF; -1 while
        # a size line is awaited.
        self._remaining = -1
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        while not self.finished:
            if self._remaining < 0:
                line_end = buffer.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
                del buffer[: line_end + 2]
                if size == 0:
                    # Neither server sends trailers: the last chunk ends the body.
                    self.finished = True
                    break
                self._remaining = size
            if len(buffer) < self._remaining + 2:
                # A long chunk arrives in pieces: hand on what there is of it.
                take = min(len(buffer), self._remaining)
                if take:
                    out.append(bytes(buffer[:take]))
                    del buffer[:take]
                    self._remaining -= take
                if len(buffer) < self._remaining + 2:
                    break
            out.append(bytes(buffer[: self._remaining]))
            del buffer[: self._remaining + 2]
            self._remaining = -1
        return b"".join(out)
