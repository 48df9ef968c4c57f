"""Publishing from Django: ``from pushserver.utils import updates``.

Thin on purpose: data is encoded as JSON here, once (the broker and edges
pass the bytes through untouched), and the signals fire here; the sockets
and their failure policy live in `pushserver.sender`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from broker.wire import MAX_CHANNEL_ID_BYTES, channel_id_problem, event_name_problem
from pushserver import PushServerError, conf, sender, signals

CONTENT_TYPE = "application/json"
# A str this short cannot exceed MAX_CHANNEL_ID_BYTES in UTF-8 (4 bytes a
# code point at most), so its length needs no encoding to check.
_SHORT_CHANNEL_ID = MAX_CHANNEL_ID_BYTES // 4

log = logging.getLogger("pushserver")
# One encoder for every call: `json.dumps(cls=...)` builds a new one each time.
_encode = DjangoJSONEncoder(separators=(",", ":")).encode
# The signals' sender, as in the original django-pushserver.
_MODULE = sys.modules[__name__]


def send_update(
    channel_id: str,
    data: Any,
    already_serialized: bool = False,
    ignore_errors: bool = False,
    *,
    event: str | None = None,
) -> None:
    """Send `data` to every browser subscribed to `channel_id`.

    `data` is encoded as JSON (dates, decimals and UUIDs as Django's
    encoder writes them); with ``already_serialized=True`` it is a JSON
    ``str`` or ``bytes`` sent as it is. Blocks at most
    ``PUSH_SERVER['send_timeout']`` seconds. Raises `PushServerError` when
    the broker cannot take the message, unless `ignore_errors` or the
    ``PUSH_SERVER_IGNORE_ERRORS`` setting is true (then logs a warning);
    raises ValueError for a channel id no channel can have, and for a body
    over ``PUSH_SERVER['max_message_size']``.

    `event` names the message's EventSource event (its ``event:`` line; a
    poll does not carry it): 1 to 64 of ``A-Z a-z 0-9 _ . : -``, and not
    one of the names the edges and EventSource use themselves
    (``message``, ``open``, ``error``, ``pushserver-missed``,
    ``pushserver-deleted``); anything else raises ValueError.

    >>> updates.send_update("news", {"title": "Hello"})
    >>> updates.send_update("prices", {"EUR": 1.08}, event="quote")
    """
    if not isinstance(channel_id, str):
        raise TypeError(f"channel_id must be a str, got {type(channel_id).__name__}")
    if not channel_id or len(channel_id) > _SHORT_CHANNEL_ID or "\0" in channel_id:
        problem = channel_id_problem(channel_id)
        if problem is not None:
            raise ValueError(f"{problem}: {channel_id[:80]!r}")
    if event is not None:
        if not isinstance(event, str):
            raise TypeError(f"event must be a str or None, got {type(event).__name__}")
        problem = event_name_problem(event)
        if problem is not None:
            raise ValueError(problem)
    body = _body(data, already_serialized)
    limit = sender.max_message_size()
    if len(body) > limit:
        # The edges' publisher location answers such a body 413: the same limit both ways.
        raise ValueError(
            f"message for channel {channel_id[:80]!r} is {len(body)} bytes, "
            f"more than max_message_size ({limit})"
        )
    # `Signal.send` returns at once without receivers too, but only after its
    # keyword arguments are built and it is called: a cost on every message.
    if signals.pre_send_update.receivers:
        signals.pre_send_update.send(
            sender=_MODULE, channel_id=channel_id, data=data, already_serialized=already_serialized
        )
    error: PushServerError | None = None
    try:
        sender.publish(channel_id, body, CONTENT_TYPE, event)
    except PushServerError as failed:
        error = failed
    if error is not None or signals.post_send_update.receivers:
        signals.post_send_update.send(
            sender=_MODULE,
            channel_id=channel_id,
            data=data,
            already_serialized=already_serialized,
            error=error,
        )
    if error is not None:
        if ignore_errors or conf.ignore_errors():
            log.warning("update for channel %r was not sent: %s", channel_id, error)
            return
        raise error


async def asend_update(
    channel_id: str,
    data: Any,
    already_serialized: bool = False,
    ignore_errors: bool = False,
    *,
    event: str | None = None,
) -> None:
    """`send_update` for async code; the bounded send runs in a worker thread.

    >>> await updates.asend_update("news", {"title": "Hello"})
    """
    await asyncio.to_thread(
        functools.partial(send_update, event=event),
        channel_id,
        data,
        already_serialized,
        ignore_errors,
    )


def _body(data: Any, already_serialized: bool) -> bytes:
    if not already_serialized:
        return _encode(data).encode("utf-8")
    if type(data) is str:
        return data.encode("utf-8")
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(
        f"already_serialized data must be a JSON str or bytes, got {type(data).__name__}"
    )
