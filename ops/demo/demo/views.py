"""The demo page and the view that publishes from it."""

from urllib.parse import quote

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

import pushserver
from pushserver.utils import updates

CHANNEL_ID = "demo"
MAX_TEXT_LENGTH = 500


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    context = {
        "channel_id": CHANNEL_ID,
        # runpushserver --allrequests serves the subscriber location on this
        # page's own origin, so a path is enough.
        "subscribe_url": "/updates/" + quote(CHANNEL_ID, safe=""),
    }
    return render(request, "demo/index.html", context)


@require_POST
def send(request: HttpRequest) -> JsonResponse:
    text = request.POST.get("text", "").strip()[:MAX_TEXT_LENGTH] or "Hello"
    update = {"type": "message", "text": text, "sent_at": timezone.now().isoformat()}
    try:
        updates.send_update(CHANNEL_ID, update)
    except pushserver.PushServerError as exc:
        return JsonResponse({"sent": False, "error": str(exc)}, status=503)
    return JsonResponse({"sent": True, "channel_id": CHANNEL_ID, "update": update})
