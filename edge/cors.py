"""Cross-origin headers for the subscriber location."""

from __future__ import annotations

from edge.config import SubscriberLocation
from edge.protocol import (
    CACHE_CONTROL,
    ETAG,
    IF_MODIFIED_SINCE,
    IF_NONE_MATCH,
    LAST_MODIFIED,
    MESSAGES_MISSED,
)

EXPOSED = ", ".join((LAST_MODIFIED, ETAG, CACHE_CONTROL, MESSAGES_MISSED))
PREFLIGHT_HEADERS = ", ".join((IF_MODIFIED_SINCE, IF_NONE_MATCH, CACHE_CONTROL, "X-Requested-With"))


def cors_headers(location: SubscriberLocation, origin: str | None) -> list[tuple[str, str]]:
    """Headers that let a browser page at `origin` read this response.

    An origin that is not allowed gets no Access-Control-Allow-Origin, and
    the browser refuses the response.
    """
    allowed = location.allow_origin
    wildcard = "*" in allowed
    headers: list[tuple[str, str]] = []
    if wildcard and not location.allow_credentials:
        headers.append(("Access-Control-Allow-Origin", "*"))
    elif origin is not None and (wildcard or origin in allowed):
        # Credentials forbid "*", and a list can only be answered one origin
        # at a time, so the caller's origin is echoed and caches told so.
        headers.append(("Access-Control-Allow-Origin", origin))
        headers.append(("Vary", "Origin"))
    else:
        return []
    if location.allow_credentials:
        headers.append(("Access-Control-Allow-Credentials", "true"))
    headers.append(("Access-Control-Expose-Headers", EXPOSED))
    return headers


def preflight_headers(max_age: int) -> list[tuple[str, str]]:
    return [
        ("Access-Control-Allow-Methods", "GET, OPTIONS"),
        ("Access-Control-Allow-Headers", PREFLIGHT_HEADERS),
        ("Access-Control-Max-Age", str(max_age)),
    ]
