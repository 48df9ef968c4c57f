"""Channel info as the publisher location reports it, in the format `Accept` asks for."""

from __future__ import annotations

import json
import time

from broker.wire import ChannelInfo

TEXT = "text/plain"
JSON_TYPES = ("application/json", "text/json")
XML_TYPES = ("application/xml", "text/xml")
YAML_TYPES = ("text/yaml", "application/yaml")


def _fields(info: ChannelInfo, now: float) -> tuple[int, int, int, str]:
    requested = -1 if info.requested is None else max(0, int(now - info.requested))
    last = "0:0" if info.last is None else str(info.last)
    return info.messages, requested, info.subscribers, last


def _accepted(accept: str | None) -> list[str]:
    """Media types in `accept`, most preferred first (by q, then by order)."""
    if not accept:
        return []
    ranked = []
    for position, part in enumerate(accept.split(",")):
        media, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, media.strip().lower()))
    return [media for _, _, media in sorted(ranked)]


def render(info: ChannelInfo, accept: str | None) -> tuple[str, bytes]:
    """The content type and body describing `info`."""
    messages, requested, subscribers, last = _fields(info, time.time())
    for media in _accepted(accept):
        if media in JSON_TYPES:
            body = {
                "messages": messages,
                "requested": requested,
                "subscribers": subscribers,
                "last_message_id": last,
            }
            return media, json.dumps(body).encode()
        if media in XML_TYPES:
            return media, (
                f"<channel><messages>{messages}</messages><requested>{requested}</requested>"
                f"<subscribers>{subscribers}</subscribers>"
                f"<last_message_id>{last}</last_message_id></channel>"
            ).encode()
        if media in YAML_TYPES:
            return media, (
                f"---\nmessages: {messages}\nrequested: {requested}\n"
                f'subscribers: {subscribers}\nlast_message_id: "{last}"\n'
            ).encode()
        if media in (TEXT, "text/*", "*/*"):
            break
    return TEXT, (
        f"queued messages: {messages}\r\nlast requested: {requested} sec. ago\r\n"
        f"active subscribers: {subscribers}\r\nlast message id: {last}"
    ).encode()
