"""The demo pages, the view that publishes from them, and quick visitor accounts."""

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

import pushserver
from demo import presence
from pushserver.utils import updates

MAX_TEXT_LENGTH = 500
VISITOR_PREFIX = "visitor-"


@require_GET
@login_required
def index(request: HttpRequest) -> HttpResponse:
    context = {"channel_id": settings.DEMO_CHANNEL_ID, "presence": presence.snapshot()}
    return render(request, "demo/index.html", context)


@require_GET
@login_required
def jquery_page(request: HttpRequest) -> HttpResponse:
    """The same channel through `$.updates`, the jQuery API kept for older pages."""
    return render(request, "demo/jquery.html", {"channel_id": settings.DEMO_CHANNEL_ID})


@require_GET
@login_required
def presence_now(request: HttpRequest) -> JsonResponse:
    """The presence list, for a page that missed some updates."""
    return JsonResponse(presence.snapshot())


@require_POST
@login_required
def send(request: HttpRequest) -> JsonResponse:
    text = request.POST.get("text", "").strip()[:MAX_TEXT_LENGTH] or "Hello"
    update = {
        "type": "message",
        "text": text,
        "user": request.user.get_username(),
        "sent_at": timezone.now().isoformat(),
    }
    try:
        updates.send_update(settings.DEMO_CHANNEL_ID, update)
    except pushserver.PushServerError as exc:
        return JsonResponse({"sent": False, "error": str(exc)}, status=503)
    return JsonResponse({"sent": True, "channel_id": settings.DEMO_CHANNEL_ID, "update": update})


@require_POST
def new_visitor(request: HttpRequest) -> HttpResponseRedirect:
    """Create the next free `visitor-N` (no password) and log it in: a second user in one click."""
    number = User.objects.filter(username__startswith=VISITOR_PREFIX).count() + 1
    while True:
        try:
            with transaction.atomic():
                user = User.objects.create_user(f"{VISITOR_PREFIX}{number}")
            break
        except IntegrityError:  # taken, by a concurrent click or a gap in the numbers
            number += 1
    login(request, user)
    return redirect("index")
