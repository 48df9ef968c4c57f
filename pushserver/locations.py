"""Absolute URLs of a channel on the edges, for browsers (subscriber) and HTTP publishers.

One helper, `channel_url`, builds both kinds: the scheme and host come from
``subscriber_host`` / ``publisher_host``, the path from reversing the
location's URL pattern with the channel id in place of its one group.

A subscriber location with ``signed: True`` gets a token in the query
string (`edge.signing`, where the format is written): it opens this one
channel until ``signed_url_lifetime`` from now, signed with the first of
``signed_url_secrets``.

Given several channel ids, a subscriber URL names them all, for one
EventSource stream: each id encoded, joined by a literal ``,``; a signed
location's token then opens exactly that list, in that order.

The trap is the encoding. The edge matches the pattern against the raw,
still percent-encoded path and percent-decodes the group as UTF-8, with
``+`` meaning a plus. So the id is encoded with ``quote(id, safe='')``:
slashes, ``?``, ``#``, ``+``, ``%``, commas, spaces and non-ASCII are all
escaped, and the edge receives exactly the id that was given here (a
literal comma would make it read several).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from django.core.exceptions import ImproperlyConfigured

from broker.wire import channel_id_problem
from edge.config import SubscriberLocation
from edge.eventstream import CHANNEL_SEPARATOR
from edge.signing import TOKEN_PARAMETER, sign
from pushserver import conf
from pushserver.conf import PUBLISHER, SUBSCRIBER

__all__ = ["PUBLISHER", "SUBSCRIBER", "channel_url", "publisher_url", "subscriber_url"]

# Outside the channel id's group these have a regex meaning, so the path a
# pattern matches cannot be read off it. Inside the group anything goes.
_NOT_REVERSIBLE = {
    "|": "an alternation",
    "*": "a quantifier",
    "+": "a quantifier",
    "?": "a quantifier",
    "{": "a quantifier",
    "[": "a character class",
    ".": "an unescaped '.' (write '\\.' for a dot)",
    "^": "an anchor inside the pattern",
    "$": "an anchor inside the pattern",
}


def channel_url(
    channel_id: str | Sequence[str],
    kind: str = SUBSCRIBER,
    location: Mapping[str, Any] | str | None = None,
    *,
    lifetime: float | None = None,
) -> str:
    """The absolute URL of `channel_id` on the edges' `kind` location.

    `kind` is ``SUBSCRIBER`` (where browsers poll) or ``PUBLISHER`` (where
    HTTP clients publish). `location` is a location dict as written in
    ``PUSH_SERVER['locations']``, or just its URL pattern (then the
    configured location with that pattern says whether it is signed); by
    default the first location of that kind. A signed subscriber location's
    URL carries a token valid for `lifetime` seconds (default
    ``signed_url_lifetime``). A sequence of ids gives the subscriber URL of
    one stream of them all (at most the location's ``stream_max_channels``).

    >>> channel_url("news feed")
    'http://127.0.0.1:8001/updates/news%20feed'
    >>> channel_url(["news", "user/42"])
    'http://127.0.0.1:8001/updates/news,user%2F42'

    Raises ValueError for an id no channel can have or that the location's
    group does not match, ImproperlyConfigured when the pattern cannot be
    reversed or a signed location has no secret to sign with.
    """
    if kind not in (SUBSCRIBER, PUBLISHER):
        raise ValueError(f"kind must be {SUBSCRIBER!r} or {PUBLISHER!r}, got {kind!r}")
    channel_ids = [channel_id] if isinstance(channel_id, str) else list(channel_id)
    chosen = _location(kind, location)
    _check_ids(channel_ids, kind, chosen)
    pattern = _pattern(kind, chosen)
    reversed_pattern = _reverse(pattern)
    encoded = CHANNEL_SEPARATOR.join(quote(one, safe="") for one in channel_ids)
    path = f"{reversed_pattern.prefix}{encoded}{reversed_pattern.suffix}"
    # The literal parts match themselves, so a miss means the group refuses
    # this id (e.g. a group of digits); the edge would answer it with 404.
    match = reversed_pattern.regex.fullmatch(path)
    if match is None or match.group(1) != encoded:
        raise ValueError(
            f"channel id {channel_id!r}, encoded as {encoded!r}, does not match the group of "
            f"the {kind} location pattern {pattern!r}"
        )
    url = f"{conf.host(kind).base_url}{path}"
    if kind == SUBSCRIBER and chosen.get("signed") is True:
        url += f"?{TOKEN_PARAMETER}={_token(channel_ids, lifetime)}"
    return url


def _check_ids(channel_ids: list[str], kind: str, location: Mapping[str, Any]) -> None:
    if not channel_ids:
        raise ValueError("expected a channel id, got none")
    for one in channel_ids:
        if not isinstance(one, str):
            raise ValueError(f"expected channel ids as strings, got {one!r}")
        problem = channel_id_problem(one)
        if problem:
            raise ValueError(f"{problem}: {one!r}")
    if len(channel_ids) == 1:
        return
    if kind != SUBSCRIBER:
        raise ValueError(f"a {kind} URL names one channel, got {len(channel_ids)}")
    most = location.get("stream_max_channels", SubscriberLocation().stream_max_channels)
    if len(channel_ids) > most:
        raise ValueError(f"a stream carries at most {most} channels, got {len(channel_ids)}")
    if len(set(channel_ids)) != len(channel_ids):
        raise ValueError(f"a channel is named twice in {channel_ids!r}")


def subscriber_url(*channel_ids: str, lifetime: float | None = None) -> str:
    """Where browsers follow `channel_ids`; what ``{% channel_url %}`` outputs.

    One id: the channel's URL, for polls and streams. Several: one EventSource
    stream of them all.
    """
    return channel_url(channel_ids, SUBSCRIBER, lifetime=lifetime)


def publisher_url(channel_id: str) -> str:
    """Where an HTTP client POSTs a message to `channel_id`."""
    return channel_url(channel_id, PUBLISHER)


def _token(channel_ids: list[str], lifetime: float | None) -> str:
    secrets: tuple[str, ...] = conf.value("signed_url_secrets")
    if not secrets:
        raise ImproperlyConfigured(
            "a signed subscriber location needs PUSH_SERVER['signed_url_secrets'] to sign with"
        )
    seconds = conf.number("signed_url_lifetime") if lifetime is None else lifetime
    if not seconds > 0:
        raise ValueError(f"lifetime must be a positive number of seconds, got {seconds!r}")
    return sign(secrets[0], channel_ids, math.ceil(time.time() + seconds))


def _location(kind: str, location: Mapping[str, Any] | str | None) -> Mapping[str, Any]:
    configured = [loc for loc in conf.locations() if loc.get("type") == kind]
    if isinstance(location, str):
        same = (loc for loc in configured if loc.get("url") == location)
        return next(same, {"type": kind, "url": location})
    if location is not None:
        return location
    if not configured:
        raise ImproperlyConfigured(f"PUSH_SERVER['locations'] has no {kind} location")
    return configured[0]


def _pattern(kind: str, location: Mapping[str, Any]) -> str:
    written_type = location.get("type", kind)
    if written_type != kind:
        raise ValueError(f"asked for a {kind} URL of a {written_type!r} location")
    url = location.get("url", conf.LOCATION_DEFAULTS[kind]["url"])
    if not isinstance(url, str):
        raise ImproperlyConfigured(f"a {kind} location's 'url' must be a string, got {url!r}")
    return url


@dataclass(frozen=True, slots=True)
class _Reversed:
    prefix: str
    suffix: str
    # The pattern without its anchors, as the edge matches it (to the end).
    regex: re.Pattern[str]


@functools.lru_cache(maxsize=64)
def _reverse(pattern: str) -> _Reversed:
    """Split `pattern` into the literal path around its one group."""
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise ImproperlyConfigured(f"location pattern {pattern!r} is not valid: {exc}") from None
    if groups != 1:
        raise ImproperlyConfigured(
            f"location pattern {pattern!r} must have exactly one group (the channel id), "
            f"has {groups}"
        )
    body = pattern.removeprefix("^")
    if body.endswith("$") and not _escaped(body, len(body) - 1):
        body = body[:-1]

    def refuse(why: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"location pattern {pattern!r} cannot be reversed into a URL: {why}; "
            "outside its one group it may hold only literal characters"
        )

    literals: list[str] = [""]
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1]
            if escaped.isalnum() or escaped == "_":
                raise refuse(f"the escape '\\{escaped}' is not one literal character")
            literals[-1] += escaped
            index += 2
        elif char == "(":
            if len(literals) > 1:
                raise refuse("it has a group besides the channel id's")
            if body.startswith("(?", index) and not body.startswith("(?P<", index):
                raise refuse(f"{body[index : index + 3]!r}… is not the channel id's group")
            index = _group_end(body, index)
            if index < len(body) and body[index] in "*+?{":
                raise refuse("the channel id's group has a quantifier")
            literals.append("")
        elif char in _NOT_REVERSIBLE:
            raise refuse(f"it has {_NOT_REVERSIBLE[char]}")
        else:
            literals[-1] += char
            index += 1
    if len(literals) != 2:
        # re counted one group, yet it is not at this level: it sits inside
        # a non-capturing group or a lookaround, which the loop refused.
        raise refuse("the channel id's group is not at the top level")
    return _Reversed(literals[0], literals[1], re.compile(body))


def _escaped(text: str, index: int) -> bool:
    backslashes = len(text[:index]) - len(text[:index].rstrip("\\"))
    return backslashes % 2 == 1


def _group_end(body: str, start: int) -> int:
    """The index just after the ``)`` closing the group opened at `start`."""
    depth = 0
    index = start
    while index < len(body):
        char = body[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            index = _class_end(body, index)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    # re.compile accepted the pattern, so its parentheses balance.
    raise AssertionError(f"unbalanced group in {body!r}")


def _class_end(body: str, start: int) -> int:
    """The index just after the ``]`` closing the character class opened at `start`."""
    index = start + 1
    if index < len(body) and body[index] == "^":
        index += 1
    # A ']' first in a class is a literal.
    if index < len(body) and body[index] == "]":
        index += 1
    while index < len(body):
        if body[index] == "\\":
            index += 2
            continue
        if body[index] == "]":
            return index + 1
        index += 1
    raise AssertionError(f"unterminated character class in {body!r}")
