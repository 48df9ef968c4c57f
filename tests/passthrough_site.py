"""A Django site for the passthrough tests: a login view and receivers that log signals.

Receivers append one JSON line per signal to the file named by the
PASSTHROUGH_LOG setting, so a test can read what Django saw from outside
the server process: the user, and the forwarding headers as the request's
META holds them (where a WSGI server folds `_` into `-`). A user named in
REFUSED_USERS, or anyone once the file named by REFUSE_ALL_FLAG exists, is
refused by the subscribe receiver.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from pushserver.signals import channel_subscribe, channel_unsubscribe

# What Django reads as facts about the connection when told to trust a proxy.
FORWARDING_HEADERS = (
    "Forwarded",
    "X-Real-IP",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Proto",
)


def log_signal(event: str, request: HttpRequest, channel_id: str) -> None:
    user = request.user.get_username() if request.user.is_authenticated else None
    forwarded = {
        name: request.META[key]
        for name in FORWARDING_HEADERS
        if (key := "HTTP_" + name.upper().replace("-", "_")) in request.META
    }
    line = json.dumps(
        {"event": event, "user": user, "channel_id": channel_id, "forwarded": forwarded}
    )
    with open(settings.PASSTHROUGH_LOG, "a", encoding="utf-8") as log:
        log.write(line + "\n")


def on_subscribe(sender: Any, request: HttpRequest, channel_id: str, **kwargs: Any) -> None:
    log_signal("subscribe", request, channel_id)
    refused = request.user.get_username() in settings.REFUSED_USERS
    if refused or os.path.exists(settings.REFUSE_ALL_FLAG):
        raise PermissionDenied(f"{request.user} may not follow {channel_id}")


def on_unsubscribe(sender: Any, request: HttpRequest, channel_id: str, **kwargs: Any) -> None:
    log_signal("unsubscribe", request, channel_id)


channel_subscribe.connect(on_subscribe, dispatch_uid="tests.passthrough_site.subscribe")
channel_unsubscribe.connect(on_unsubscribe, dispatch_uid="tests.passthrough_site.unsubscribe")


def login_as(request: HttpRequest, username: str) -> HttpResponse:
    user, _ = get_user_model().objects.get_or_create(username=username)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponse(f"logged in as {username}", content_type="text/plain")


urlpatterns = [
    path("passthrough", include("pushserver.urls")),
    path("login/<str:username>/", login_as),
]
