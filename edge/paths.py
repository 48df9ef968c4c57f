"""The one form of a request path the edge routes: the canonical form, or a 400 saying why not.

The trap this exists for: a balancer and the edge reading one path two
ways. nginx percent-decodes a path (``%2F`` included), resolves ``.`` and
``..`` and merges ``//`` to pick its location, then forwards the raw path;
the edge matched its locations against that raw path. So
``/send-update/..%2fupdates%2fx`` was, to nginx, ``/updates/x`` (passed
on to the edges) and, to the edge, the publisher location, trusted
because nginx connects from loopback.

Rather than normalising as some balancer does (each does it differently,
HAProxy not at all by default), the edge refuses every path that a
normaliser would change in a way that could move it to another location:

- a target that is not a path (absolute-form, ``*``);
- a backslash (some servers read it as a slash), raw or ``%5C``;
- ``%00`` (NUL), and a ``%`` not followed by two hex digits;
- a percent-encoded unreserved character (letters, digits, ``-._~``):
  RFC 3986 (6.2.2.2) says they mean themselves and normalisers decode them,
  and no URL the project builds holds one (`quote(id, safe="")` never
  encodes them), so ``/%73end-update/`` is refused, not routed;
- an empty segment (``//``), except a trailing slash;
- a dot segment (``.`` or ``..``), judged after percent-decoding with
  encoded slashes read as slashes, so ``%2e%2e``, ``.%2E`` and
  ``a%2F..%2Fb`` all count;
- and, for a push location (`outside_group_problem`), any ``%`` outside
  the channel id's group: its prefix is matched literally.

What stays allowed: any percent-encoded reserved character (``%2F`` in a
channel id, ``%2C`` and the literal ``,`` of a multi-channel URL, ``%20``,
``%25``, UTF-8 bytes), so every id `channel_url` encodes still works,
except ids whose ``/``-separated parts are ``.`` or ``..`` (the edge
cannot tell them from a trick). After these rules a balancer's
normalisation of an accepted path changes only the channel id's encoding,
never which location the path names.
"""

from __future__ import annotations

import functools
import re

# RFC 3986 unreserved characters, which percent-encoding must not hide.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%(.?.?)")
_HEX = re.compile(r"[0-9A-Fa-f]{2}")
# Verdicts on paths that needed a look, remembered (clients poll the same few).
CACHE_SIZE = 4096

NOT_A_PATH = "request target is not a path"
BACKSLASH = "path holds a backslash"
BAD_ESCAPE = "path holds a '%' not followed by two hex digits"
NUL = "path holds NUL (%00)"
ENCODED_UNRESERVED = "path percent-encodes a letter, digit or one of -._~"
EMPTY_SEGMENT = "path holds an empty segment (//)"
DOT_SEGMENT = "path holds a dot segment (. or ..), perhaps percent-encoded"
ENCODED_PREFIX = "path percent-encodes a character outside the channel id"


def path_problem(path: str) -> str | None:
    """Why the edge routes no request by `path` (the target before any `?`), or None.

    >>> path_problem("/updates/news%20feed") is None
    True
    >>> path_problem("/send-update/..%2fupdates%2fx")
    'path holds a dot segment (. or ..), perhaps percent-encoded'
    """
    if not path.startswith("/"):
        return NOT_A_PATH
    # Paths without these need no further look: the common case, in four `in` tests.
    if "%" in path or "\\" in path or "//" in path or "/." in path:
        return _judge(path)
    return None


def outside_group_problem(path: str, group: str) -> str | None:
    """Why a push location's match of `path`, whose channel id group is `group`, is not
    canonical: a ``%`` in the literal part of the location. None when there is none."""
    if path.count("%") != group.count("%"):
        return ENCODED_PREFIX
    return None


def judged() -> int:
    """How many paths' verdicts are remembered."""
    return _judge.cache_info().currsize


def forget_judged() -> None:
    """Empty the verdicts remembered by path, before a trim (`broker.memory`)."""
    _judge.cache_clear()


@functools.lru_cache(maxsize=CACHE_SIZE)
def _judge(path: str) -> str | None:
    if "\\" in path:
        return BACKSLASH
    if "%" in path:
        for escape in _ESCAPE.finditer(path):
            digits = escape.group(1)
            if not _HEX.fullmatch(digits):
                return BAD_ESCAPE
            byte = int(digits, 16)
            if byte == 0:
                return NUL
            if byte == 0x5C:
                return BACKSLASH
            if byte in _UNRESERVED:
                return ENCODED_UNRESERVED
    segments = path[1:].split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            if index != last:
                return EMPTY_SEGMENT
            continue
        # Encoded slashes count as slashes here: nginx decodes them before resolving dots.
        pieces = segment.replace("%2F", "/").replace("%2f", "/").split("/")
        if any(piece in (".", "..") for piece in pieces):
            return DOT_SEGMENT
    return None
