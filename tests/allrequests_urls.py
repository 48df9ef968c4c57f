"""URLs served by Django behind `runpushserver --allrequests` in the tests."""

from __future__ import annotations

import threading

from django.http import HttpRequest, HttpResponse
from django.urls import path

# Set by the test through /release/; /slow/ waits for it, as a stuck view would.
released = threading.Event()


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from django", content_type="text/plain")


def slow(request: HttpRequest) -> HttpResponse:
    released.wait(30)
    return HttpResponse("slow view done", content_type="text/plain")


def cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("cookie set", content_type="text/plain")
    response.set_cookie("flavour", "oatmeal")
    return response


def release(request: HttpRequest) -> HttpResponse:
    released.set()
    return HttpResponse("released", content_type="text/plain")


urlpatterns = [
    path("hello/", hello),
    path("slow/", slow),
    path("release/", release),
    path("cookie/", cookie),
]
