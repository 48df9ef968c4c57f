"""Signed channel URLs: the token format, written once, for Django to sign and edges to check.

A token says "these channels, in this order, until this second", under an
HMAC-SHA256 keyed by a secret Django and the edges share, so an edge admits
a poll without asking Django. One channel for a poll's URL; the channels of
a stream's URL (`/updates/a,b`) in URL order, so one token opens exactly
that stream. It travels in the query string
(``?token=<expires>.<mac>``): the expiry in decimal Unix seconds, in the
clear so a page can be told its URL has expired, and the MAC in base64url
without padding.

The trap is what the MAC covers. It is computed over a domain-separation
prefix, the expiry and the exact list of channel ids, each id ended by NUL
(which no channel id may contain) and preceded by their count, so no two
lists and expiries encode alike: a token for ``a`` opens neither ``b`` nor
``ab`` nor ``a`` with ``b``, and an altered expiry breaks the MAC. The MAC
is checked before the expiry, so "token expired" is only ever said of a
token Django issued. Several secrets verify (the first signs), so a site
rotates them without breaking pages already open.

Standard library only: `pushserver.locations` imports this to sign, and
the edge never imports Django.
"""

from __future__ import annotations

import base64
import hmac
import re
import urllib.parse
from collections.abc import Sequence

from broker.wire import channel_id_problem

# The query parameter carrying the token.
TOKEN_PARAMETER = "token"
# What an edge answers (403, text/plain) when a signed location's token does not hold.
TOKEN_MISSING = "token missing"
TOKEN_EXPIRED = "token expired"
TOKEN_INVALID = "token invalid"

_DOMAIN = b"django-pushserver signed channel URL v1\0"
# Decimal seconds (up to the year 33658) without leading zeros, so one expiry is written one
# way only; a dot; the 32 bytes of SHA-256 in unpadded base64url.
_TOKEN = re.compile(r"(0|[1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})")


def _message(channel_ids: Sequence[str], expires: int) -> bytes:
    parts = [_DOMAIN, b"%d\0%d\0" % (expires, len(channel_ids))]
    for channel_id in channel_ids:
        encoded = channel_id.encode("utf-8")
        if b"\0" in encoded:
            raise ValueError(f"a channel id cannot contain NUL: {channel_id!r}")
        parts += (encoded, b"\0")
    return b"".join(parts)


def _mac(secret: str, message: bytes) -> str:
    digest = hmac.digest(secret.encode("utf-8"), message, "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(secret: str, channel_ids: Sequence[str], expires: int) -> str:
    """A token opening exactly `channel_ids` (in this order) until the Unix second `expires`.

    >>> sign("a long random secret", ["news"], 1_900_000_000)[:11]
    '1900000000.'
    """
    if not secret:
        raise ValueError("signing needs a non-empty secret")
    if isinstance(channel_ids, str) or not channel_ids:
        raise ValueError(f"expected a non-empty sequence of channel ids, got {channel_ids!r}")
    for channel_id in channel_ids:
        problem = channel_id_problem(channel_id)
        if problem:
            raise ValueError(f"{problem}: {channel_id!r}")
    if isinstance(expires, bool) or not isinstance(expires, int) or not 0 <= expires < 10**12:
        raise ValueError(f"expires must be a Unix time in whole seconds, got {expires!r}")
    return f"{expires}.{_mac(secret, _message(channel_ids, expires))}"


def verify(
    secrets: Sequence[str], channel_ids: Sequence[str], token: str | None, now: float
) -> str | None:
    """Why `token` does not open `channel_ids` at `now` under any of `secrets`; None if it does."""
    if not token:
        return TOKEN_MISSING
    if isinstance(channel_ids, str):
        raise ValueError(f"expected a sequence of channel ids, got the string {channel_ids!r}")
    found = _TOKEN.fullmatch(token)
    if found is None or not channel_ids:
        return TOKEN_INVALID
    expires = int(found.group(1))
    try:
        message = _message(channel_ids, expires)
    except ValueError:
        return TOKEN_INVALID
    mac = found.group(2)
    if not any(secret and hmac.compare_digest(_mac(secret, message), mac) for secret in secrets):
        return TOKEN_INVALID
    if now >= expires:
        return TOKEN_EXPIRED
    return None


def _unquoted(text: str) -> str:
    return urllib.parse.unquote_plus(text) if "%" in text or "+" in text else text


def query_problem(
    secrets: Sequence[str], channel_ids: Sequence[str], query: str, now: float
) -> str | None:
    """`verify` of the token in a request's query string (the part after ``?``).

    A token given twice is refused rather than one of them chosen: whatever
    else reads the URL (a balancer, a log) must not see another token than
    the edge checked.
    """
    tokens = []
    # Read as parse_qsl reads it, at a fraction of its cost on the path of every poll.
    for field in query.split("&"):
        name, _, value = field.partition("=")
        if _unquoted(name) == TOKEN_PARAMETER:
            tokens.append(_unquoted(value))
    if len(tokens) > 1:
        return TOKEN_INVALID
    return verify(secrets, channel_ids, tokens[0] if tokens else None, now)
