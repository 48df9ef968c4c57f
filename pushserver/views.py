"""The passthrough view: edges tell Django that a browser subscribed or unsubscribed.

An edge POSTs the form fields ``channel_id`` and ``subscribe=1`` or
``unsubscribe=1`` with the browser's own headers (cookies, authorization,
user agent, forwarded-for), so session and authentication middleware set
``request.user`` as for any request of that browser. The view then sends
`pushserver.signals.channel_subscribe` or ``channel_unsubscribe`` with
``request`` and ``channel_id``; the sender is this view, `passthrough`.

The trap: the request carries the *browser's* credentials, so anyone able
to reach this URL could fire the signals as any user whose cookie they
hold. Only trusted callers are admitted: one whose ``X-Passthrough-Secret``
header holds the passthrough secret (`pushserver.conf.passthrough_secret`:
``PUSH_SERVER['passthrough_secret']``, else derived from ``SECRET_KEY``,
which every edge ``runpushserver`` starts sends), or, as in the original,
one whose address is in ``settings.INTERNAL_IPS`` *and* that relays
nobody: a request with ``X-Forwarded-*``, ``Forwarded`` or ``X-Real-IP``
came through a proxy, and a balancer on this host forwards the world's
requests from an internal address (loopback) too.

A ``channel_subscribe`` receiver may refuse the subscription by raising
``PermissionDenied``: the view answers 403 and, with ``authorize`` set on
the location, the edge refuses the browser's poll. Receivers run in the
order they were connected and a refusal skips the ones after it.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.views.decorators.csrf import csrf_exempt

from broker.wire import channel_id_problem
from edge.protocol import (
    PASSTHROUGH_CHANNEL,
    PASSTHROUGH_SECRET,
    PASSTHROUGH_SUBSCRIBE,
    PASSTHROUGH_UNSUBSCRIBE,
)
from pushserver import conf, signals

SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
REFUSED = "subscription refused"
TEXT = "text/plain; charset=utf-8"
# What a proxy adds to a request it forwards, as WSGI names the headers.
RELAYING = frozenset({"HTTP_FORWARDED", "HTTP_X_REAL_IP"})
FORWARDED_PREFIX = "HTTP_X_FORWARDED_"


# Edges are not browsers and hold no CSRF token; the trust check below
# stands in for it.
@csrf_exempt
def passthrough(request: HttpRequest) -> HttpResponse:
    """Fire ``channel_subscribe`` / ``channel_unsubscribe`` for an edge's call.

    Mount it with ``path("passthrough", include("pushserver.urls"))`` and
    name that URL in the subscriber location's ``passthrough``.
    """
    if request.method != "POST":
        return HttpResponseNotAllowed(
            ["POST"],
            f"method {request.method} not allowed; edges POST here",
            content_type=TEXT,
        )
    if not _trusted(request):
        return _text(
            403,
            "caller holds no passthrough secret, and is not in INTERNAL_IPS"
            " or came through a proxy (forwarding headers)",
        )
    channel_id = request.POST.get(PASSTHROUGH_CHANNEL)
    if channel_id is None:
        return _text(400, f"missing form field {PASSTHROUGH_CHANNEL!r}")
    problem = channel_id_problem(channel_id)
    if problem:
        return _text(400, problem)
    subscribe = _flag(request, PASSTHROUGH_SUBSCRIBE)
    if subscribe == _flag(request, PASSTHROUGH_UNSUBSCRIBE):
        fields = f"{PASSTHROUGH_SUBSCRIBE!r} and {PASSTHROUGH_UNSUBSCRIBE!r}"
        return _text(400, f"expected exactly one of the form fields {fields} set to 1")
    if not subscribe:
        # `send`, not `send_robust`: a failing receiver is a bug to see as a 500.
        signals.channel_unsubscribe.send(passthrough, request=request, channel_id=channel_id)
        return _text(200, UNSUBSCRIBED)
    try:
        signals.channel_subscribe.send(passthrough, request=request, channel_id=channel_id)
    except PermissionDenied:
        return _text(403, REFUSED)
    return _text(200, SUBSCRIBED)


def _trusted(request: HttpRequest) -> bool:
    secret = conf.passthrough_secret()
    given = request.headers.get(PASSTHROUGH_SECRET)
    # Bytes, because compare_digest refuses non-ASCII str and a header may hold any.
    if secret and given and hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8")):
        return True
    meta = request.META
    return meta.get("REMOTE_ADDR") in settings.INTERNAL_IPS and not _relayed(meta)


def _relayed(meta: dict[str, object]) -> bool:
    """Whether a proxy forwarded the request (for someone whose address it reports)."""
    return any(name in RELAYING or name.startswith(FORWARDED_PREFIX) for name in meta)


def _flag(request: HttpRequest, name: str) -> bool:
    # The original sent "1"; any value but empty or "0" counts as set.
    return request.POST.get(name, "") not in ("", "0")


def _text(status: int, body: str) -> HttpResponse:
    return HttpResponse(body, status=status, content_type=TEXT)
