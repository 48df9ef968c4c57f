"""A `ws+meta.nchan` WebSocket message as a client reads it: id, content type, data.

Nchan's subprotocol (what NchanSubscriber asks for, and what this
project's edges frame the same way) puts a header before each message's
data: `id: <id>\\n`, `content-type: <type>\\n` when the message has one,
then a blank line. W7's load generator reads every message through
`read_meta` so each delivery's id is checked as W6 checks an event's.

Pure, no sockets. The trap: the data is the publisher's bytes and may
itself hold blank lines or start with `id: `, so only the first blank
line ends the header, and a header that never ends is a malformed
message (None), not data.
"""

from __future__ import annotations

from typing import NamedTuple


class MetaMessage(NamedTuple):
    # None when the header had no `id` line.
    id: bytes | None
    content_type: bytes | None
    data: bytes


def read_meta(payload: bytes) -> MetaMessage | None:
    """The header and data of one whole message's payload; None when it has no header.

    >>> read_meta(b"id: 17:0\\ncontent-type: text/plain\\n\\nhello")
    MetaMessage(id=b'17:0', content_type=b'text/plain', data=b'hello')
    """
    if payload[:1] == b"\n":
        header, data = b"", payload[1:]
    else:
        end = payload.find(b"\n\n")
        if end < 0:
            return None
        header, data = payload[:end], payload[end + 2 :]
    message_id = content_type = None
    for line in header.split(b"\n") if header else ():
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        value = value[1:] if value[:1] == b" " else value
        name = name.lower()
        if name == b"id":
            message_id = value
        elif name == b"content-type":
            content_type = value
        # Other header lines are another server's extension, not data: ignored.
    return MetaMessage(message_id, content_type, data)
