"""Calls to Django's passthrough view on each subscribe and unsubscribe.

The edge POSTs `channel_id` and `subscribe=1` or `unsubscribe=1` with the
browser's own headers, so Django's session and auth middleware see the
same user. None of it sits on the delivery path: calls run beside the
polls with a timeout and a bound on how many are in flight; a failure is
counted and logged (at most once per `LOG_EVERY` seconds), never retried.
After a failure, calls are skipped (and counted) for a back-off that
doubles up to `MAX_PAUSE` while Django keeps failing, so a site that is
down costs the edge almost nothing.
Only authorization, when a location asks for it, makes a poll wait for
Django, and a granted admission is remembered so later polls do not.

With `passthrough_grace`, a client's unsubscribe waits that long for the
same client to poll again; a re-poll within it calls nothing. A client is
known by its cookies, credentials, address and user agent: several tabs
of one browser count as one client.

The trap in forwarding a browser's headers: Django reads some of them as
facts about the connection (``X-Forwarded-Host`` under
``USE_X_FORWARDED_HOST``, ``X-Forwarded-Proto`` as a
``SECURE_PROXY_SSL_HEADER``, client addresses in ``X-Forwarded-For``).
So ``Forwarded``, ``X-Real-IP`` and every ``X-Forwarded-*`` pass on only
from a peer in `forwarded_allow_ips`, a proxy that wrote them itself; from
anyone else the edge writes its own. A header name with ``_`` is never
passed on: WSGI reads ``X_Forwarded_Host`` as ``X-Forwarded-Host``, which
is why nginx, gunicorn and Django's runserver drop such names too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import tornado.httpclient
import tornado.httputil
import tornado.simple_httpclient

from edge.access import FORWARDING as REPORTS
from edge.access import Proxies
from edge.config import EdgeConfig, SubscriberLocation
from edge.connection import Request
from edge.protocol import (
    PASSTHROUGH_CHANNEL,
    PASSTHROUGH_SECRET,
    PASSTHROUGH_SUBSCRIBE,
    PASSTHROUGH_UNSUBSCRIBE,
)

log = logging.getLogger("pushserver.edge")

LOG_EVERY = 10.0
FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0
# What Django is told the site's host is when the browser sent no Host (HTTP/1.0).
DEFAULT_HOST = "127.0.0.1"
# Headers that describe this hop or this body, not the browser.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "accept-encoding",
        "if-modified-since",
        "if-none-match",
        PASSTHROUGH_SECRET.lower(),
    }
)
IDENTITY_HEADERS = ("Cookie", "Authorization", "User-Agent")
# What speaks for a user; left out when it came from a site the location does not trust.
CREDENTIALS = frozenset({"cookie", "authorization"})
# Besides every X-Forwarded-*: what a proxy says about the client, taken from trusted peers only.
FORWARDING = frozenset({"forwarded", "x-real-ip"})
FORWARDED_PREFIX = "x-forwarded-"

# Who is subscribed to what, as Django was told: (client, channel, passthrough URL).
Key = tuple[bytes, str, str]


# RFC 3986's host (an IP literal, or a name of unreserved, %-encoded and sub-delims
# characters) with an optional port, but no comma: two Host fields read as one are
# joined by one, and the proxies before Django may have read either.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+;=]*)(:[0-9]*)?")


def host_problem(host: str | None, version: str) -> str | None:
    """Why a request's Host cannot be passed on to Django (HTTP's 400 cases), or None."""
    if host is None:
        return None if version == "HTTP/1.0" else "Missing Host header"
    if "," in host:
        return f"Multiple host headers not allowed: {host!r}"
    if _HOST.fullmatch(host) is None:
        return f"Invalid Host header: {host!r}"
    return None


@dataclass(frozen=True, slots=True)
class Caller:
    """The browser's request as the passthrough reads it: its headers and address.

    Made from the edge's own parsed request when a subscriber location opens
    a poll, a stream or a socket, and kept while it lasts (the unsubscribe
    sends the same headers), so it holds copies, not the connection's buffers.
    """

    headers: tuple[tuple[str, str], ...]
    remote_ip: str

    @classmethod
    def of(cls, request: Request, without: frozenset[str] = frozenset()) -> Caller:
        """`request`'s caller, leaving out the headers named (lowercase) in `without`.

        Names are written in one case (`X-Forwarded-For`), so the edge's own
        forwarding headers replace a browser's whatever case it sent them in.
        Raises `tornado.httputil.HTTPInputError` (which the connection answers
        400) for a Host Django must not be handed (`host_problem`).
        """
        problem = host_problem(request.header(b"host"), request.version)
        if problem is not None:
            raise tornado.httputil.HTTPInputError(problem)
        headers = []
        for raw_name, raw_value in request.raw_headers:
            name = raw_name.decode("latin-1")
            if name.lower() not in without:
                written = "-".join(part.capitalize() for part in name.split("-"))
                headers.append((written, raw_value.decode("latin-1")))
        return cls(tuple(headers), request.remote_ip)

    def get(self, name: str) -> str | None:
        """A header's value, a repeated one's values joined with commas, as HTTP reads them."""
        lowered = name.lower()
        values = [value for field_name, value in self.headers if field_name.lower() == lowered]
        return ",".join(values) if values else None


@dataclass(slots=True)
class Subscription:
    polls: int = 0
    unsubscribe_timer: asyncio.TimerHandle | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Passthrough:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        self._proxies = Proxies(config.forwarded_allow_ips)
        self._client = tornado.simple_httpclient.SimpleAsyncHTTPClient(
            force_instance=True, max_clients=config.passthrough_concurrency
        )
        self._in_flight = 0
        self._subscriptions: dict[Key, Subscription] = {}
        self._grants: dict[Key, float] = {}
        self._turns: dict[Key, asyncio.Task[int | None]] = {}
        self._last_log = 0.0
        self._failures_in_a_row = 0
        self._paused_until = 0.0
        # While closing, a refused call is expected (an edge calling its own
        # Django under --allrequests has stopped listening) and only noted.
        self._closing = False

    async def close(self, timeout: float = 1.0) -> None:
        """Tell Django about every subscription still waiting out its grace, then stop."""
        self._closing = True
        calls = []
        for key, subscription in list(self._subscriptions.items()):
            if subscription.unsubscribe_timer is not None:
                subscription.unsubscribe_timer.cancel()
                del self._subscriptions[key]
                calls.append(self._post(key, subscription.headers, PASSTHROUGH_UNSUBSCRIBE))
        if calls:
            await asyncio.wait([asyncio.ensure_future(call) for call in calls], timeout=timeout)
        self._client.close()

    # -- what the subscriber location calls -----------------------------------

    def subscribe(
        self,
        location: SubscriberLocation,
        request: Caller,
        channel_id: str,
    ) -> None:
        """A poll began: tell Django, unless this client is still subscribed."""
        key = self._key(location, request, channel_id)
        if location.passthrough_grace <= 0:
            self._call(key, self._headers(request), PASSTHROUGH_SUBSCRIBE)
            return
        if key not in self._subscriptions:
            headers = self._headers(request)
            self._call(key, headers, PASSTHROUGH_SUBSCRIBE)
            self._keep(key, headers)
        else:
            self._keep(key, {})

    def _keep(self, key: Key, headers: dict[str, str]) -> None:
        """One more poll of a subscription Django knows of (made with `headers` if new)."""
        subscription = self._subscriptions.get(key)
        if subscription is None:
            subscription = self._subscriptions[key] = Subscription(headers=headers)
        elif subscription.unsubscribe_timer is not None:
            subscription.unsubscribe_timer.cancel()
            subscription.unsubscribe_timer = None
        subscription.polls += 1

    def unsubscribe(
        self,
        location: SubscriberLocation,
        request: Caller,
        channel_id: str,
    ) -> None:
        """A poll ended: tell Django, now or after the grace if no new poll comes."""
        key = self._key(location, request, channel_id)
        if location.passthrough_grace <= 0:
            self._call(key, self._headers(request), PASSTHROUGH_UNSUBSCRIBE)
            return
        subscription = self._subscriptions.get(key)
        if subscription is None:
            return
        subscription.polls -= 1
        if subscription.polls <= 0:
            subscription.unsubscribe_timer = asyncio.get_running_loop().call_later(
                location.passthrough_grace, self._finish, key
            )

    async def admit(
        self,
        location: SubscriberLocation,
        request: Caller,
        channel_id: str,
    ) -> bool | None:
        """Whether Django admits this client to the channel; None when Django did not answer.

        An admission is remembered for `authorize_cache` seconds. The call is
        the subscribe itself, so an admitted poll is not announced twice.
        """
        key = self._key(location, request, channel_id)
        now = time.monotonic()
        if self._grants.get(key, 0.0) > now:
            self.subscribe(location, request, channel_id)
            return True
        headers = self._headers(request)
        verdict = await self._ask(key, headers)
        if verdict:
            self._remember(key, now + location.authorize_cache)
            if location.passthrough_grace > 0:
                self._keep(key, headers)
        return verdict

    # -- calls --------------------------------------------------------------------

    def _finish(self, key: Key) -> None:
        subscription = self._subscriptions.pop(key, None)
        if subscription is not None:
            self._call(key, subscription.headers, PASSTHROUGH_UNSUBSCRIBE)

    def _remember(self, key: Key, until: float) -> None:
        grants = self._grants
        grants[key] = until
        # Forget lapsed grants now and then so the cache stays as large as the
        # set of recent clients, not of every client ever seen.
        if len(grants) > 1024 and len(grants) % 1024 == 0:
            now = time.monotonic()
            for lapsed in [k for k, expiry in grants.items() if expiry <= now]:
                del grants[lapsed]

    def _call(self, key: Key, headers: dict[str, str], action: str) -> None:
        asyncio.get_running_loop().create_task(self._in_turn(key, headers, action))

    async def _in_turn(self, key: Key, headers: dict[str, str], action: str) -> int | None:
        """Post after the calls already made for `key`, so Django never hears a
        client's unsubscribe before its subscribe."""
        previous = self._turns.get(key)
        current = asyncio.current_task()
        assert current is not None
        self._turns[key] = current
        try:
            if previous is not None:
                await asyncio.wait([previous])
            return await self._post(key, headers, action)
        finally:
            if self._turns.get(key) is current:
                del self._turns[key]

    async def _ask(self, key: Key, headers: dict[str, str]) -> bool | None:
        code = await self._in_turn(key, headers, PASSTHROUGH_SUBSCRIBE)
        if code == 200:
            return True
        if code == 403:
            self.counters["passthrough_refused"] += 1
            return False
        return None

    async def _post(self, key: Key, headers: dict[str, str], action: str) -> int | None:
        _, channel_id, url = key
        if time.monotonic() < self._paused_until:
            self.counters["passthrough_skipped"] += 1
            return None
        if self._in_flight >= self.config.passthrough_concurrency:
            self._failed(
                f"{self.config.passthrough_concurrency} calls already in flight", "dropped"
            )
            return None
        body = urllib.parse.urlencode({PASSTHROUGH_CHANNEL: channel_id, action: "1"})
        timeout = self.config.passthrough_timeout
        request = tornado.httpclient.HTTPRequest(
            url,
            method="POST",
            body=body,
            headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
            connect_timeout=timeout,
            request_timeout=timeout,
            follow_redirects=False,
        )
        self._in_flight += 1
        try:
            # raise_error=False covers HTTP statuses only; a refused or
            # timed-out connection still raises.
            response = await self._client.fetch(request, raise_error=False)
        except (OSError, tornado.httpclient.HTTPClientError) as error:
            self._failed(f"{action} of {channel_id!r} at {url}: {error}", "failed")
            return None
        finally:
            self._in_flight -= 1
        self.counters[f"passthrough_{action}"] += 1
        if response.code in (200, 403):
            self._failures_in_a_row = 0
            return response.code
        self._failed(f"{action} of {channel_id!r} at {url}: answered {response.code}", "failed")
        return response.code

    def _failed(self, what: str, kind: str) -> None:
        self.counters[f"passthrough_{kind}"] += 1
        now = time.monotonic()
        if kind == "failed":
            pause = min(MAX_PAUSE, FIRST_PAUSE * 2**self._failures_in_a_row)
            self._failures_in_a_row += 1
            self._paused_until = max(self._paused_until, now + pause)
        if self._closing:
            log.info("passthrough call %s while the edge stops: %s", kind, what)
        elif now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning(
                "passthrough call %s (%d failed, %d dropped, %d skipped so far): %s",
                kind,
                self.counters["passthrough_failed"],
                self.counters["passthrough_dropped"],
                self.counters["passthrough_skipped"],
                what,
            )

    # -- identity -----------------------------------------------------------------

    def _key(
        self,
        location: SubscriberLocation,
        request: Caller,
        channel_id: str,
    ) -> Key:
        identity = hashlib.blake2b(digest_size=16)
        for name in IDENTITY_HEADERS:
            identity.update((request.get(name) or "").encode("utf-8", "surrogateescape"))
            identity.update(b"\0")
        identity.update(self._client_address(request).encode("utf-8", "surrogateescape"))
        return identity.digest(), channel_id, location.passthrough or ""

    def _client_address(self, request: Caller) -> str:
        """The peer, or behind trusted proxies the client they report (`Proxies.client`)."""
        reports = (request.get(name.decode()) for name in REPORTS)
        return self._proxies.client(request.remote_ip, *reports)

    def _headers(self, request: Caller) -> dict[str, str]:
        peer = request.remote_ip
        trusted = self._proxies.trusts(peer)
        headers = {}
        for name, value in request.headers:
            lowered = name.lower()
            if lowered in NOT_FORWARDED or "_" in lowered:
                continue
            if not trusted and (lowered in FORWARDING or lowered.startswith(FORWARDED_PREFIX)):
                continue
            headers[name] = value
        forwarded = request.get("X-Forwarded-For") if trusted else None
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        # A trusted balancer in front (terminating TLS, say) knows better than this hop,
        # which speaks plain HTTP.
        headers.setdefault("X-Forwarded-Host", request.get("Host") or DEFAULT_HOST)
        headers.setdefault("X-Forwarded-Proto", "http")
        if self.config.passthrough_secret:
            headers[PASSTHROUGH_SECRET] = self.config.passthrough_secret
        return headers
