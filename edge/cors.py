"""Cross-origin headers for the subscriber location.

A page on another origin than the edges reads a poll only through these
headers, and a request header missing from the preflight's list stops that
page's client dead: the browser refuses the poll before it is sent.

The trap: a long `Access-Control-Max-Age` does not spare a poll that sends
validators its preflight. `If-Modified-Since` and `If-None-Match` put a
request in the "no-store" cache mode (Fetch), and Chromium does not look
in its preflight cache for a request that bypasses the HTTP cache, so every
such poll is preceded by an OPTIONS, whatever the max-age (measured in
Chromium 156, `tests/test_cors.py`). The max-age still spares the preflights of requests
whose extra headers are not validators (one per walk).
"""

from __future__ import annotations

from edge.config import SubscriberLocation
from edge.protocol import (
    CACHE_CONTROL,
    ETAG,
    IF_MODIFIED_SINCE,
    IF_NONE_MATCH,
    LAST_EVENT_ID,
    LAST_MODIFIED,
    MESSAGES_MISSED,
    X_REQUESTED_WITH,
)

EXPOSED = ", ".join((LAST_MODIFIED, ETAG, CACHE_CONTROL, MESSAGES_MISSED))
# Each request header here is one a known client sends to a subscriber location.
PREFLIGHT_HEADERS = ", ".join(
    (
        # The protocol's validators: every long-poll client's cursor.
        IF_MODIFIED_SINCE,
        IF_NONE_MATCH,
        # Nchan's NchanSubscriber (npm `nchan`) restarts its long-poll after
        # every 304 and error, adding its last message id as an `Etag` request
        # header; the cursor still travels in the validators beside it.
        ETAG,
        # Stream clients that are not the browser's EventSource (polyfills,
        # fetch-based readers) resume with it as a header of their own; the
        # native EventSource sends it without a preflight.
        LAST_EVENT_ID,
        # Kept from the protocol's list for clients that send them: a
        # `Cache-Control: no-cache` meant for proxies, and X-Requested-With,
        # which jQuery pages often add to every request ($.ajaxSetup).
        CACHE_CONTROL,
        X_REQUESTED_WITH,
    )
)


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
