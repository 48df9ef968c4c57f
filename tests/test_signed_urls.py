"""Signed channel URLs: the token format on its own, then a real edge admitting and refusing
polls by their token without asking Django or the broker."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import httpx
import pytest
from django.template.backends.django import DjangoTemplates
from django.test.utils import override_settings

from edge.signing import (
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_MISSING,
    TOKEN_PARAMETER,
    query_problem,
    sign,
    verify,
)
from pushserver.locations import subscriber_url
from tests.client import Cursor, fresh, in_background, info, path, publish, wait_for_subscribers
from tests.processes import Launcher, free_port

NEW = "the-secret-pages-are-signed-with-from-today"
OLD = "the-secret-pages-were-signed-with-until-today"
NOW = 1_800_000_000.0
LATER = int(NOW) + 3600


# -- the token on its own --------------------------------------------------------


def test_a_token_opens_its_channel_until_it_expires() -> None:
    token = sign(NEW, ["news"], LATER)
    assert verify([NEW], ["news"], token, NOW) is None
    assert verify([NEW], ["news"], token, LATER - 0.5) is None
    assert verify([NEW], ["news"], token, LATER) == TOKEN_EXPIRED
    assert verify([NEW], ["news"], token, LATER + 86400) == TOKEN_EXPIRED


def test_a_token_opens_no_other_channel_list() -> None:
    token = sign(NEW, ["a"], LATER)
    for other in (["b"], ["ab"], ["a", "b"], ["A"], ["a "]):
        assert verify([NEW], other, token, NOW) == TOKEN_INVALID, other


def test_a_multi_channel_token_binds_the_exact_ids_in_order() -> None:
    token = sign(NEW, ["a", "b"], LATER)
    assert verify([NEW], ["a", "b"], token, NOW) is None
    assert verify([NEW], ("a", "b"), token, NOW) is None
    for other in (["b", "a"], ["a"], ["b"], ["ab"], ["a", "b", "c"], ["a", "b", "b"], ["", "ab"]):
        assert verify([NEW], other, token, NOW) == TOKEN_INVALID, other
    # The same ids split differently never share a token.
    assert sign(NEW, ["a", "bc"], LATER) != sign(NEW, ["ab", "c"], LATER)
    assert sign(NEW, ["a b"], LATER) != sign(NEW, ["a", "b"], LATER)


def test_an_altered_expiry_or_mac_is_invalid_not_expired_or_valid() -> None:
    token = sign(NEW, ["news"], LATER)
    expires, mac = token.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for altered in (
        f"{LATER + 3600}.{mac}",  # a longer life
        f"{int(NOW) - 10}.{mac}",  # made to look expired
        f"0{expires}.{mac}",
        f"{expires}.{flipped}",
        f"{expires}.{mac}=",
        f"{expires}.{mac.swapcase()}",
        f"{expires}.{mac[:-1]}é",
        f"{expires}{mac}",
        f" {token}",
        f"{expires}.",
        mac,
    ):
        assert verify([NEW], ["news"], altered, NOW) == TOKEN_INVALID, altered


def test_a_token_from_another_secret_is_invalid_even_when_expired() -> None:
    forged = sign("an-attacker-guess-at-the-secret-of-this-site", ["news"], LATER)
    assert verify([NEW], ["news"], forged, NOW) == TOKEN_INVALID
    stale_forgery = sign("an-attacker-guess-at-the-secret-of-this-site", ["news"], 1000)
    assert verify([NEW], ["news"], stale_forgery, NOW) == TOKEN_INVALID


def test_every_listed_secret_verifies_and_an_unlisted_one_does_not() -> None:
    by_old = sign(OLD, ["news"], LATER)
    assert verify([NEW, OLD], ["news"], by_old, NOW) is None
    assert verify([NEW], ["news"], by_old, NOW) == TOKEN_INVALID
    assert verify([], ["news"], by_old, NOW) == TOKEN_INVALID


def test_no_token_is_missing_and_an_empty_one_too() -> None:
    assert verify([NEW], ["news"], None, NOW) == TOKEN_MISSING
    assert verify([NEW], ["news"], "", NOW) == TOKEN_MISSING


def test_the_mac_is_hmac_sha256_over_a_prefixed_nul_ended_encoding() -> None:
    token = sign(NEW, ["a", "b"], LATER)
    message = b"django-pushserver signed channel URL v1\0%d\x002\0a\0b\0" % LATER
    digest = hmac.digest(NEW.encode(), message, hashlib.sha256)
    assert token == f"{LATER}." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("channel_ids", "expires"),
    [
        (["a\0b"], LATER),
        ([""], LATER),
        ([], LATER),
        ("news", LATER),
        (["news"], -1),
        (["news"], 1.5),
        (["news"], True),
    ],
)
def test_sign_refuses_what_no_token_should_say(channel_ids: Any, expires: Any) -> None:
    with pytest.raises(ValueError):
        sign(NEW, channel_ids, expires)


def test_the_token_is_read_from_the_query_string_once() -> None:
    token = sign(NEW, ["news"], LATER)
    assert query_problem([NEW], ["news"], f"{TOKEN_PARAMETER}={token}", NOW) is None
    assert query_problem([NEW], ["news"], f"a=1&{TOKEN_PARAMETER}={token}&b=", NOW) is None
    assert query_problem([NEW], ["news"], "", NOW) == TOKEN_MISSING
    assert query_problem([NEW], ["news"], f"{TOKEN_PARAMETER}=", NOW) == TOKEN_MISSING
    assert query_problem([NEW], ["news"], "tokens=" + token, NOW) == TOKEN_MISSING
    twice = f"{TOKEN_PARAMETER}={token}&{TOKEN_PARAMETER}={token}"
    assert query_problem([NEW], ["news"], twice, NOW) == TOKEN_INVALID


# -- through a real edge ---------------------------------------------------------

SIGNED = {"type": "subscriber", "url": r"/signed/([^/]+)", "signed": True}
LOCATIONS = (
    SIGNED,
    {"type": "subscriber", "url": r"/updates/([^/]+)"},
    # Both checks on: the token first, then Django (here nobody listens, so 503).
    {
        "type": "subscriber",
        "url": r"/guarded/([^/]+)",
        "signed": True,
        "authorize": True,
        "passthrough": f"http://127.0.0.1:{free_port()}/passthrough",
    },
    {"type": "publisher", "url": r"/send-update/([^/]+)"},
)


def start(launcher: Launcher, *secrets: str) -> str:
    _, base = launcher.embedded(
        long_poll_timeout=2,
        passthrough_timeout=1,
        signed_url_secrets=list(secrets),
        locations=LOCATIONS,
    )
    return base


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher) -> str:
    """An edge verifying with the new secret and, while pages signed with it live, the old."""
    return start(module_launcher, NEW, OLD)


def signed_url(
    base: str,
    channel_id: str,
    secret: str = NEW,
    expires: int | None = None,
    location: str = "signed",
    token_for: list[str] | None = None,
) -> str:
    expires = int(time.time()) + 600 if expires is None else expires
    token = sign(secret, token_for or [channel_id], expires)
    return f"{base}{path(location, channel_id)}?{TOKEN_PARAMETER}={token}"


def longer_lived(url: str) -> str:
    """`url` with its token's expiry moved a day later, the MAC left as it was."""
    head, _, token = url.partition(f"?{TOKEN_PARAMETER}=")
    expires, _, mac = token.partition(".")
    return f"{head}?{TOKEN_PARAMETER}={int(expires) + 86400}.{mac}"


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 403, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    return response.text.strip()


def test_a_valid_token_walks_the_channel_with_the_same_url_for_every_poll(edge: str) -> None:
    channel = fresh("walk")
    for n in range(3):
        publish(edge, channel, f"update {n}")
    url = signed_url(edge, channel)
    received = []
    with httpx.Client(timeout=30) as client:
        cursor = Cursor()
        for _ in range(3):
            response = client.get(url, headers=cursor.headers())
            assert response.status_code == 200, response.text
            received.append(response.text)
            cursor = cursor.advanced(response)
    assert received == ["update 0", "update 1", "update 2"]


def test_a_held_signed_poll_is_answered_by_the_next_update(edge: str) -> None:
    channel = fresh("held")
    publish(edge, channel, "first")
    url = signed_url(edge, channel)
    with httpx.Client(timeout=30) as client:
        first = client.get(url)
        assert first.status_code == 200
        waiting = client.build_request("GET", url, headers=Cursor().advanced(first).headers())
        answer = in_background(client.send, waiting)
        wait_for_subscribers(edge, channel, 1)
        publish(edge, channel, "second")
        assert answer.result(10).text == "second"


@pytest.mark.parametrize(
    ("make_url", "reason"),
    [
        (lambda base, channel: base + path("signed", channel), TOKEN_MISSING),
        (lambda base, channel: base + path("signed", channel) + "?other=1", TOKEN_MISSING),
        (
            lambda base, channel: signed_url(base, channel, expires=int(time.time()) - 1),
            TOKEN_EXPIRED,
        ),
        (
            lambda base, channel: signed_url(base, channel, secret="a-forger-s-own-secret-x" * 2),
            TOKEN_INVALID,
        ),
        (
            lambda base, channel: signed_url(base, channel, token_for=[channel + "-other"]),
            TOKEN_INVALID,
        ),
        (
            lambda base, channel: signed_url(base, channel + "b", token_for=[channel]),
            TOKEN_INVALID,
        ),
        (lambda base, channel: longer_lived(signed_url(base, channel)), TOKEN_INVALID),
    ],
    ids=["missing", "other-parameter", "expired", "forged", "other-channel", "a-on-ab", "altered"],
)
def test_a_poll_without_a_valid_token_is_refused_before_the_broker_hears_of_it(
    edge: str, make_url: Any, reason: str
) -> None:
    channel = fresh("refused")
    url = make_url(edge, channel)
    assert refusal(httpx.get(url, timeout=10)) == reason
    # The location creates channels on GET: a refused poll created nothing.
    assert info(edge, channel) is None
    assert info(edge, channel + "b") is None


def test_the_token_is_checked_before_the_passthrough_and_a_valid_one_goes_on_to_it(
    edge: str,
) -> None:
    channel = fresh("both")
    publish(edge, channel, "for members")
    expired = signed_url(edge, channel, expires=int(time.time()) - 1, location="guarded")
    assert refusal(httpx.get(expired, timeout=10)) == TOKEN_EXPIRED
    # Admitted by its token, the poll waits for Django's word; nobody answers there.
    valid = httpx.get(signed_url(edge, channel, location="guarded"), timeout=10)
    assert valid.status_code == 503, valid.text


def test_a_cors_preflight_needs_no_token(edge: str) -> None:
    response = httpx.options(
        edge + path("signed", fresh("preflight")),
        headers={"Origin": "http://site.example", "Access-Control-Request-Method": "GET"},
        timeout=10,
    )
    assert response.status_code == 200


def test_an_unsigned_location_ignores_a_token(edge: str) -> None:
    channel = fresh("unsigned")
    publish(edge, channel, "open to all")
    response = httpx.get(f"{edge}{path('updates', channel)}?{TOKEN_PARAMETER}=nonsense")
    assert response.status_code == 200 and response.text == "open to all"


def test_a_rotated_out_secret_opens_nothing_once_the_edge_stops_listing_it(
    edge: str, launcher: Launcher
) -> None:
    channel = fresh("rotation")
    publish(edge, channel, "still here")
    by_old = signed_url(edge, channel, secret=OLD)
    by_new = signed_url(edge, channel, secret=NEW)
    assert httpx.get(by_old, timeout=10).text == "still here"
    assert httpx.get(by_new, timeout=10).text == "still here"

    rotated = start(launcher, NEW)
    publish(rotated, channel, "after rotation")
    assert refusal(httpx.get(by_old.replace(edge, rotated), timeout=10)) == TOKEN_INVALID
    assert httpx.get(by_new.replace(edge, rotated), timeout=10).text == "after rotation"


def test_the_url_channel_url_builds_opens_its_channel_on_the_edge(edge: str) -> None:
    channel = fresh("template")
    publish(edge, channel, "via the template")
    push_server = {
        "subscriber_host": {"location": edge.removeprefix("http://"), "secure": False},
        "signed_url_secrets": [NEW, OLD],
        "locations": LOCATIONS,
    }
    engine = DjangoTemplates({"NAME": "t", "DIRS": [], "APP_DIRS": False, "OPTIONS": {}})
    with override_settings(PUSH_SERVER=push_server):
        rendered = engine.from_string("{% load pushserver %}{% channel_url id %}").render(
            {"id": channel}
        )
        other = subscriber_url(fresh("elsewhere"))
    assert rendered.startswith(f"{edge}/signed/{channel}?{TOKEN_PARAMETER}=")
    assert httpx.get(rendered, timeout=10).text == "via the template"
    # The token opens no other channel than the one it was built for.
    token = rendered.partition("?")[2]
    other_channel = other.partition("?")[0]
    assert refusal(httpx.get(f"{other_channel}?{token}", timeout=10)) == TOKEN_INVALID
