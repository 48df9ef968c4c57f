"""The passthrough view: who may call it, what it fires, how receivers refuse; and the view and
static files served by a real `runpushserver --allrequests`.

The view's own logic is tested with Django's test client, which calls from
REMOTE_ADDR 127.0.0.1; this module doubles as the URLconf it uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.dispatch import Signal
from django.test import Client
from django.test.utils import override_settings
from django.urls import include, path, re_path

from edge.protocol import (
    PASSTHROUGH_CHANNEL,
    PASSTHROUGH_SECRET,
    PASSTHROUGH_SUBSCRIBE,
    PASSTHROUGH_UNSUBSCRIBE,
)
from pushserver import views
from pushserver.signals import channel_subscribe, channel_unsubscribe
from tests.processes import ANY_PORT, EDGE_LINE, Launcher

urlpatterns = [
    path("passthrough", include("pushserver.urls")),
    # The original's form: url(r'^passthrough', include('pushserver.urls')).
    re_path(r"^legacy-passthrough", include("pushserver.urls", namespace="legacy")),
]

SUBSCRIBE = {PASSTHROUGH_CHANNEL: "news", PASSTHROUGH_SUBSCRIBE: "1"}
UNSUBSCRIBE = {PASSTHROUGH_CHANNEL: "news", PASSTHROUGH_UNSUBSCRIBE: "1"}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


@dataclass(frozen=True)
class Fired:
    signal: str
    sender: Any
    username: str
    channel_id: str


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    # The in-memory database lives as long as this thread's connection; the
    # test client keeps that open, so the tables are made once.
    call_command("migrate", run_syncdb=True, verbosity=0)


@pytest.fixture(autouse=True)
def site() -> Iterator[None]:
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=MIDDLEWARE,
        INTERNAL_IPS=["127.0.0.1"],
        PUSH_SERVER={},
    ):
        yield


@pytest.fixture
def fired() -> Iterator[list[Fired]]:
    """What the signals were sent with, in order."""
    seen: list[Fired] = []

    def recorder(name: str) -> Any:
        def receive(sender: Any, request: Any, channel_id: str, **kwargs: Any) -> None:
            seen.append(Fired(name, sender, request.user.get_username(), channel_id))

        return receive

    receivers: list[tuple[Signal, Any]] = [
        (channel_subscribe, recorder("subscribe")),
        (channel_unsubscribe, recorder("unsubscribe")),
    ]
    for signal, receiver in receivers:
        signal.connect(receiver)
    yield seen
    for signal, receiver in receivers:
        signal.disconnect(receiver)


@pytest.fixture
def connected() -> Iterator[list[tuple[Signal, Any]]]:
    """Receivers a test connects; disconnected after it."""
    receivers: list[tuple[Signal, Any]] = []
    yield receivers
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def logged_in(username: str) -> Client:
    user, _ = User.objects.get_or_create(username=username)
    # Edges hold no CSRF token: the view must pass with checks enforced.
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_internal_caller_fires_channel_subscribe_with_the_browsers_user(
    fired: list[Fired],
) -> None:
    response = logged_in("ada").post("/passthrough", SUBSCRIBE)
    assert response.status_code == 200
    assert response.content == b"subscribed"
    assert response["Content-Type"].startswith("text/plain")
    assert fired == [Fired("subscribe", views.passthrough, "ada", "news")]


def test_unsubscribe_fires_channel_unsubscribe(fired: list[Fired]) -> None:
    response = logged_in("ada").post("/passthrough", UNSUBSCRIBE)
    assert response.status_code == 200
    assert response.content == b"unsubscribed"
    assert fired == [Fired("unsubscribe", views.passthrough, "ada", "news")]


def test_a_client_without_session_is_anonymous(fired: list[Fired]) -> None:
    assert Client().post("/passthrough", SUBSCRIBE).status_code == 200
    assert fired == [Fired("subscribe", views.passthrough, "", "news")]


@pytest.mark.parametrize("url", ["/passthrough/", "/legacy-passthrough", "/legacy-passthrough/"])
def test_trailing_slash_and_the_original_url_include_reach_the_view(
    fired: list[Fired], url: str
) -> None:
    assert Client().post(url, SUBSCRIBE).status_code == 200
    assert [event.channel_id for event in fired] == ["news"]


def test_awkward_channel_ids_arrive_as_sent(fired: list[Fired]) -> None:
    awkward = "ünï cödé/with?all#the+marks%20"
    form = {PASSTHROUGH_CHANNEL: awkward, PASSTHROUGH_SUBSCRIBE: "1"}
    assert Client().post("/passthrough", form).status_code == 200
    assert [event.channel_id for event in fired] == [awkward]


def test_caller_outside_internal_ips_without_a_secret_is_forbidden(fired: list[Fired]) -> None:
    with override_settings(INTERNAL_IPS=[]):
        response = logged_in("ada").post("/passthrough", SUBSCRIBE)
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert b"INTERNAL_IPS" in response.content
    assert fired == []


def test_a_secret_header_is_ignored_when_no_secret_is_configured(fired: list[Fired]) -> None:
    with override_settings(INTERNAL_IPS=[]):
        response = Client().post("/passthrough", SUBSCRIBE, headers={PASSTHROUGH_SECRET: ""})
    assert response.status_code == 403
    assert fired == []


@pytest.mark.parametrize("given", ["wrong", "s3cre", "s3cret ", "wröng"])
def test_a_wrong_secret_is_forbidden_from_an_outside_address(
    fired: list[Fired], given: str
) -> None:
    with override_settings(INTERNAL_IPS=[], PUSH_SERVER={"passthrough_secret": "s3cret"}):
        response = Client().post(
            "/passthrough", SUBSCRIBE, REMOTE_ADDR="192.0.2.7", headers={PASSTHROUGH_SECRET: given}
        )
    assert response.status_code == 403
    assert fired == []


def test_right_secret_admits_a_caller_from_any_address(fired: list[Fired]) -> None:
    with override_settings(INTERNAL_IPS=[], PUSH_SERVER={"passthrough_secret": "s3cret"}):
        response = logged_in("ada").post(
            "/passthrough",
            SUBSCRIBE,
            REMOTE_ADDR="192.0.2.7",
            headers={PASSTHROUGH_SECRET: "s3cret"},
        )
    assert response.status_code == 200
    assert fired == [Fired("subscribe", views.passthrough, "ada", "news")]


def test_forwarded_for_an_internal_address_does_not_make_a_caller_trusted(
    fired: list[Fired],
) -> None:
    response = Client().post(
        "/passthrough", SUBSCRIBE, REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="127.0.0.1"
    )
    assert response.status_code == 403
    assert fired == []


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_methods_other_than_post_are_not_allowed(fired: list[Fired], method: str) -> None:
    response = getattr(Client(), method)("/passthrough")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response["Content-Type"].startswith("text/plain")
    assert fired == []


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ({}, b"missing form field 'channel_id'"),
        ({PASSTHROUGH_SUBSCRIBE: "1"}, b"missing form field 'channel_id'"),
        ({PASSTHROUGH_CHANNEL: "news"}, b"exactly one of"),
        ({PASSTHROUGH_CHANNEL: "news", PASSTHROUGH_SUBSCRIBE: "0"}, b"exactly one of"),
        ({**SUBSCRIBE, PASSTHROUGH_UNSUBSCRIBE: "1"}, b"exactly one of"),
        ({PASSTHROUGH_CHANNEL: "", PASSTHROUGH_SUBSCRIBE: "1"}, b"empty"),
        ({PASSTHROUGH_CHANNEL: "a\0b", PASSTHROUGH_SUBSCRIBE: "1"}, b"NUL"),
        ({PASSTHROUGH_CHANNEL: "x" * 1025, PASSTHROUGH_SUBSCRIBE: "1"}, b"longer than"),
    ],
)
def test_a_form_without_a_valid_channel_id_and_exactly_one_action_gets_400_and_fires_nothing(
    fired: list[Fired], form: dict[str, str], why: bytes
) -> None:
    response = Client().post("/passthrough", form)
    assert response.status_code == 400
    assert why in response.content
    assert fired == []


def test_an_untrusted_caller_with_a_bad_form_is_still_forbidden() -> None:
    with override_settings(INTERNAL_IPS=[]):
        assert Client().post("/passthrough", {}).status_code == 403


def test_a_receiver_raising_permission_denied_refuses_the_subscription(
    connected: list[tuple[Signal, Any]],
) -> None:
    def members_only(sender: Any, request: Any, channel_id: str, **kwargs: Any) -> None:
        if request.user.get_username() != "member":
            raise PermissionDenied("members only")

    channel_subscribe.connect(members_only)
    connected.append((channel_subscribe, members_only))
    refused = logged_in("stranger").post("/passthrough", SUBSCRIBE)
    assert refused.status_code == 403
    assert refused.content == b"subscription refused"
    assert logged_in("member").post("/passthrough", SUBSCRIBE).status_code == 200


def test_a_refusal_skips_the_receivers_connected_after_it(
    connected: list[tuple[Signal, Any]],
) -> None:
    later: list[str] = []

    def refuse(sender: Any, **kwargs: Any) -> None:
        raise PermissionDenied

    def record(sender: Any, channel_id: str, **kwargs: Any) -> None:
        later.append(channel_id)

    for receiver in (refuse, record):
        channel_subscribe.connect(receiver)
        connected.append((channel_subscribe, receiver))
    assert Client().post("/passthrough", SUBSCRIBE).status_code == 403
    assert later == []


def test_any_other_receiver_error_is_a_server_error(
    connected: list[tuple[Signal, Any]],
) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    for signal in (channel_subscribe, channel_unsubscribe):
        signal.connect(broken)
        connected.append((signal, broken))
    with pytest.raises(RuntimeError, match="receiver bug"):
        Client().post("/passthrough", SUBSCRIBE)
    # As a server answers it, rather than as the test client re-raises it.
    client = Client(raise_request_exception=False)
    assert client.post("/passthrough", SUBSCRIBE).status_code == 500
    assert client.post("/passthrough", UNSUBSCRIBE).status_code == 500


# Served by a real edge: the view through the --allrequests fallback, and
# static files as runserver serves them under DEBUG.
SITE_URLS = """
from django.core.exceptions import PermissionDenied
from django.urls import include, path

from pushserver.signals import channel_subscribe


def refuse_forbidden(sender, request, channel_id, **kwargs):
    if channel_id == "forbidden":
        raise PermissionDenied


channel_subscribe.connect(refuse_forbidden)
urlpatterns = [path("passthrough", include("pushserver.urls"))]
"""
STATIC_BODY = "window.servedByTheEdge = true;\n"


def start_site(launcher: Launcher, *args: str, debug: bool = True) -> str:
    (launcher.folder / "passthrough_site_urls.py").write_text(SITE_URLS)
    static = launcher.folder / "static_files"
    (static / "pushserver_test").mkdir(parents=True, exist_ok=True)
    (static / "pushserver_test" / "served.js").write_text(STATIC_BODY)
    process = launcher.start(
        "site",
        {"broker": dict(ANY_PORT)},
        "--allrequests",
        "127.0.0.1:0",
        *args,
        ROOT_URLCONF="passthrough_site_urls",
        INTERNAL_IPS=["127.0.0.1"],
        DEBUG=debug,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "django.contrib.staticfiles",
            "pushserver",
        ],
        STATIC_URL="/static/",
        STATICFILES_DIRS=[str(static)],
    )
    return process.wait_for(EDGE_LINE).group("url")


def test_allrequests_serves_the_passthrough_view_and_static_files(launcher: Launcher) -> None:
    base = start_site(launcher)
    admitted = httpx.post(base + "/passthrough", data=SUBSCRIBE, timeout=10)
    assert (admitted.status_code, admitted.text) == (200, "subscribed")
    forbidden = {PASSTHROUGH_CHANNEL: "forbidden", PASSTHROUGH_SUBSCRIBE: "1"}
    refused = httpx.post(base + "/passthrough/", data=forbidden, timeout=10)
    assert (refused.status_code, refused.text) == (403, "subscription refused")
    served = httpx.get(base + "/static/pushserver_test/served.js", timeout=10)
    assert (served.status_code, served.text) == (200, STATIC_BODY)


@pytest.mark.parametrize(
    ("args", "debug"), [(("--nostatic",), True), ((), False)], ids=["nostatic", "without-debug"]
)
def test_allrequests_leaves_static_files_to_the_site_with_nostatic_or_without_debug(
    launcher: Launcher, args: tuple[str, ...], debug: bool
) -> None:
    base = start_site(launcher, *args, debug=debug)
    response = httpx.get(base + "/static/pushserver_test/served.js", timeout=10)
    assert response.status_code == 404
    # The site itself is still served.
    assert httpx.post(base + "/passthrough", data=SUBSCRIBE, timeout=10).status_code == 200
