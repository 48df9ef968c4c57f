"""Who is on the demo page, kept from the passthrough signals and pushed on change.

The edge calls the passthrough view when a browser starts and stops polling
channel 'demo'; its `channel_subscribe` / `channel_unsubscribe` signals
arrive here with the browser's own request, so `request.user` is the
visitor. Each change is published on the same channel as a 'presence'
update carrying the whole list and a version number.

Two traps. With `passthrough_grace` the edge reports one subscribe per
browser (cookies, address and user agent), however many tabs it has open,
and one unsubscribe once the browser stopped polling for the grace period,
so a user is counted per browser, not per tab. And updates sent from two
threads may reach the broker in either order, so the page keeps the
presence update with the highest version (a time in milliseconds, so it
also grows across restarts), not the latest to arrive.

The state is in Django's cache under one key, guarded by a process-local
lock: right for the demo's single process and its local-memory cache, not
for a site with several processes sharing a cache.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils import timezone

import pushserver
from pushserver.signals import channel_subscribe, channel_unsubscribe
from pushserver.utils import updates

log = logging.getLogger(__name__)

CACHE_KEY = "demo:presence"
PRESENCE = "presence"

_lock = threading.Lock()


def _empty() -> dict[str, Any]:
    # users: name -> {"browsers": polling browsers, "since": ISO time, "last_seen": ISO time}
    return {"version": 0, "users": {}}


def snapshot() -> dict[str, Any]:
    """The presence list as the page shows it: version, and users sorted by name."""
    with _lock:
        return _as_update(cache.get(CACHE_KEY) or _empty())


def _as_update(state: dict[str, Any]) -> dict[str, Any]:
    users = [{"name": name, **entry} for name, entry in sorted(state["users"].items())]
    return {"type": PRESENCE, "version": state["version"], "users": users}


def _visitor(request: HttpRequest, channel_id: str) -> str | None:
    if channel_id != settings.DEMO_CHANNEL_ID or not request.user.is_authenticated:
        return None
    return request.user.get_username()


@receiver(channel_subscribe)
def visitor_arrived(sender: object, request: HttpRequest, channel_id: str, **kwargs: Any) -> None:
    name = _visitor(request, channel_id)
    if name is not None:
        _change(name, +1)


@receiver(channel_unsubscribe)
def visitor_left(sender: object, request: HttpRequest, channel_id: str, **kwargs: Any) -> None:
    name = _visitor(request, channel_id)
    if name is not None:
        _change(name, -1)


def _change(name: str, browsers: int) -> None:
    now = timezone.now().isoformat()
    with _lock:
        state = cache.get(CACHE_KEY) or _empty()
        entry = state["users"].get(name)
        if entry is None:
            if browsers < 0:
                return  # left before this process saw it arrive (a restart)
            entry = state["users"][name] = {"browsers": 0, "since": now}
        entry["browsers"] += browsers
        entry["last_seen"] = now
        if entry["browsers"] <= 0:
            del state["users"][name]
        # Milliseconds, so versions keep increasing across a restart of this process.
        state["version"] = max(state["version"] + 1, time.time_ns() // 1_000_000)
        cache.set(CACHE_KEY, state, timeout=None)
        update = _as_update(state)
    try:
        updates.send_update(settings.DEMO_CHANNEL_ID, update)
    except pushserver.PushServerError as exc:
        # The list is still right in the cache; the page reloads it from
        # /presence/ when it learns it missed updates.
        log.warning("presence update not sent: %s", exc)
