"""CORS on the subscriber location: what the preflight allows, and what a walk costs in Chromium.

A walk is the protocol's loop of polls, each sending the previous answer's
`Last-Modified` / `Etag` back as `If-Modified-Since` / `If-None-Match`, on
one URL. Measured here, in Chromium, from a page on another origin: every
poll of a walk after the first is preceded by a preflight, whatever
`Access-Control-Max-Age` says, because a request with those validators is
in the "no-store" cache mode and Chromium does not look in its preflight
cache for a request that bypasses the HTTP cache. A walk whose only extra header is not a
validator pays one preflight for all its polls. The recorder in front of
the edge counts the OPTIONS requests; no browser API reports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edge.cors import PREFLIGHT_HEADERS
from edge.protocol import ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_EVENT_ID
from tests import cross_origin
from tests.browser import CHROMIUM, chromium_available
from tests.client import fresh, path
from tests.cross_origin import RequestRecorder, SeenRequest
from tests.processes import Launcher

assert chromium_available(), f"no Chromium at {CHROMIUM}: run `make test`, which installs it"

# Chromium keeps a preflight at most this long (seconds) and cuts a longer
# max-age down to it; an edge answering less would pay more preflights.
CHROMIUM_MAX_AGE_CAP = 2 * 60 * 60
POLLS = 8

# One walk of `polls` XMLHttpRequests with credentials, as a long-poll client
# makes it: `headers` on every poll, and the validators when `validators`.
# Resolves to each poll's [status, body].
WALK = """
async ([url, polls, headers, validators]) => {
  const answers = [];
  let cursor = null;
  for (let number = 0; number < polls; number++) {
    const request = await new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open('GET', url);
      xhr.withCredentials = true;
      for (const [name, value] of Object.entries(headers)) {
        xhr.setRequestHeader(name, value);
      }
      if (validators && cursor) {
        xhr.setRequestHeader('If-Modified-Since', cursor.lastModified);
        xhr.setRequestHeader('If-None-Match', cursor.etag);
      }
      xhr.onloadend = () => resolve(xhr);
      xhr.send();
    });
    answers.push([request.status, request.responseText]);
    cursor = {
      lastModified: request.getResponseHeader('Last-Modified'),
      etag: request.getResponseHeader('Etag'),
    };
  }
  return answers;
}
"""


def allowed_headers(preflight: httpx.Response) -> set[str]:
    return {
        name.strip().lower()
        for name in preflight.headers["Access-Control-Allow-Headers"].split(",")
    }


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    with cross_origin.page_server({"/": cross_origin.page_with_scripts()}) as origin:
        yield origin


@pytest.fixture(scope="module")
def edge(module_launcher: Launcher, page_origin: str) -> str:
    # Short, so a poll the browser's own cache sent past the last message ends soon.
    return cross_origin.edge_for_page(module_launcher, page_origin, long_poll_timeout=1)


@pytest.fixture(scope="module")
def recorder(edge: str) -> Iterator[RequestRecorder]:
    with cross_origin.recording(cross_origin.upstream(edge)) as started:
        yield started


@pytest.fixture
def page(browser: Any, page_origin: str) -> Iterator[Any]:
    """A fresh page on the page server's origin, with a preflight cache of its own."""
    context = browser.new_context()
    opened = context.new_page()
    opened.goto(page_origin + "/")
    yield opened
    context.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with cross_origin.chromium() as launched:
        yield launched


def test_the_preflight_allows_the_validators_nchan_subscribers_etag_and_last_event_id(
    edge: str, page_origin: str
) -> None:
    sent = [IF_MODIFIED_SINCE, IF_NONE_MATCH, ETAG, LAST_EVENT_ID]
    preflight = httpx.options(
        edge + path("updates", fresh("preflight")),
        headers={
            "Origin": page_origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": ",".join(name.lower() for name in sent),
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Headers"] == PREFLIGHT_HEADERS
    assert {name.lower() for name in sent} <= allowed_headers(preflight)
    assert int(preflight.headers["Access-Control-Max-Age"]) >= CHROMIUM_MAX_AGE_CAP


def test_a_preflight_from_an_allowed_origin_with_credentials_echoes_it_and_no_other(
    edge: str, page_origin: str
) -> None:
    url = edge + path("updates", fresh("preflight-credentials"))
    asked = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "etag"}
    allowed = httpx.options(url, headers={"Origin": page_origin, **asked})
    assert allowed.headers["Access-Control-Allow-Origin"] == page_origin
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in allowed.headers["Vary"]
    refused = httpx.options(url, headers={"Origin": "http://evil.example", **asked})
    assert "Access-Control-Allow-Origin" not in refused.headers


def walk(
    page: Any,
    recorder: RequestRecorder,
    edge: str,
    headers: dict[str, str],
    validators: bool,
) -> tuple[list[list[Any]], list[SeenRequest]]:
    """Publish POLLS messages to a fresh channel, walk it in the page; the answers the page
    read and the requests the edge received for that channel."""
    channel = fresh("walk")
    cross_origin.publish_all(edge, channel, [f"message {number}" for number in range(POLLS)])
    answers: list[list[Any]] = page.evaluate(
        WALK, [recorder.url + path("updates", channel), POLLS, headers, validators]
    )
    received = [seen for seen in recorder.requests() if seen.path == path("updates", channel)]
    return answers, received


def methods(received: list[SeenRequest], method: str) -> list[SeenRequest]:
    return [seen for seen in received if seen.method == method]


def test_in_chromium_every_poll_of_a_walk_after_the_first_costs_a_preflight(
    page: Any, recorder: RequestRecorder, edge: str
) -> None:
    answers, received = walk(page, recorder, edge, headers={}, validators=True)
    assert answers == [[200, f"message {number}"] for number in range(POLLS)]
    assert len(methods(received, "GET")) == POLLS
    preflights = methods(received, "OPTIONS")
    # The first poll has no validators yet: a simple request, no preflight.
    assert len(preflights) == POLLS - 1
    assert {seen.headers["access-control-request-headers"] for seen in preflights} == {
        "if-modified-since,if-none-match"
    }


def test_in_chromium_one_preflight_serves_a_walk_whose_only_extra_header_is_not_a_validator(
    page: Any, recorder: RequestRecorder, edge: str
) -> None:
    answers, received = walk(page, recorder, edge, headers={LAST_EVENT_ID: "0:0"}, validators=False)
    assert [status for status, _ in answers] == [200] * POLLS
    assert len(methods(received, "GET")) == POLLS
    preflights = methods(received, "OPTIONS")
    assert len(preflights) == 1
    assert preflights[0].headers["access-control-request-headers"] == LAST_EVENT_ID.lower()
