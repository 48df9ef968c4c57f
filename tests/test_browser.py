"""The demo pages in headless Chromium, served through `runpushserver --allrequests`.

A broker runs alone and an edge serves the whole demo site (pages, static
files, passthrough, push locations) on a fixed port, so it can be stopped
and started again where the page expects it. Updates are sent from this
process with `send_update`, straight to the broker. The page is the real
demo page with the real client (`pushserver.createClient`, as
`window.demoClient`), on its default transports (EventSource, long-poll
where streams fail) or, for what only polls show, `?transport=longpoll`.
What its processors saw is on `window.demoSeen`, and
`tests.browser.POLL_RECORDER` logs its polls. The demo's jQuery page shows
`$.updates` working over the same client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test.utils import override_settings

from edge.signing import TOKEN_EXPIRED, sign
from pushserver import sender
from pushserver.locations import channel_url
from pushserver.utils import updates
from tests.browser import (
    CHANNEL_ID,
    CHROMIUM,
    CHROMIUM_ARGS,
    POLL_RECORDER,
    SIGNED_PATH,
    SIGNING_SECRET,
    DemoSite,
    chromium_available,
)
from tests.client import wait_for_subscribers
from tests.processes import Launcher, eventually

# `make test` installs Chromium and Playwright; a machine without them fails
# these tests rather than skipping them.
assert chromium_available(), f"no Chromium at {CHROMIUM}: run `make test`, which installs it"
from playwright import sync_api  # noqa: E402

# Short, so the outage tests see several retries in a few seconds.
BACKOFF = {"base": 400, "cap": 1600}


@pytest.fixture(scope="module")
def site(module_launcher: Launcher) -> Iterator[DemoSite]:
    _, endpoints = module_launcher.broker(
        store={"type": "memory", "max_messages": 1000, "message_timeout": 600}
    )
    demo = DemoSite(module_launcher, endpoints)
    demo.prepare(passthrough_grace=1.0)
    demo.start()
    # This process publishes too, straight to the broker.
    sender.close()
    with override_settings(PUSH_SERVER={"broker": endpoints}):
        yield demo
        sender.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def demo_page(site: DemoSite, browser: Any, path: str) -> Iterator[Any]:
    """The demo page at `path`, logged in as the demo user, following channel 'demo'."""
    context = browser.new_context()
    context.add_init_script(POLL_RECORDER)
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    log_in(opened, site.url)
    if path != "/":
        opened.goto(site.url + path)
    opened.wait_for_function("window.demoSeen !== undefined || window.jquerySeen !== undefined")
    yield opened
    context.close()
    if not site.running:  # a failed outage test must not take the next test's edge with it
        site.start()


@pytest.fixture
def page(site: DemoSite, browser: Any) -> Iterator[Any]:
    """The demo page on the client's default transports."""
    yield from demo_page(site, browser, "/")


@pytest.fixture
def polling_page(site: DemoSite, browser: Any) -> Iterator[Any]:
    """The demo page long-polling only, so that every request it makes is in its poll log."""
    yield from demo_page(site, browser, "/?transport=longpoll")


@pytest.fixture
def jquery_page(site: DemoSite, browser: Any) -> Iterator[Any]:
    """The demo's jQuery page: `$.updates` from pushserver/updates.js."""
    yield from demo_page(site, browser, "/jquery/")


def log_in(page: Any, base: str, username: str = "demo", password: str = "demo") -> None:
    page.goto(base + "/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_function("window.demoSeen !== undefined")


def send(text: str, update_type: str = "message") -> None:
    updates.send_update(CHANNEL_ID, {"type": update_type, "text": text})


def seen(page: Any, update_type: str, prefix: str) -> list[str]:
    texts: list[str] = page.evaluate(f"window.demoSeen[{update_type!r}]")
    return [text for text in texts if text.startswith(prefix)]


def wait_seen(page: Any, prefix: str, expected: list[str], timeout: float = 15) -> None:
    """Wait until the page's message processor saw `expected`, then check it saw nothing more."""

    def complete() -> bool:
        return len(seen(page, "message", prefix)) >= len(expected)

    eventually(complete, timeout, f"{len(expected)} messages {prefix!r}… on the page")
    assert seen(page, "message", prefix) == expected


def poll_log(page: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = page.evaluate("window.pollLog")
    return entries


def failed_polls(page: Any, since: float) -> list[dict[str, Any]]:
    return [
        entry
        for entry in poll_log(page)
        if entry["start"] >= since and entry["end"] is not None and entry["status"] == 0
    ]


def page_clock(page: Any) -> float:
    now: float = page.evaluate("performance.now()")
    return now


def marker(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]} "


def test_each_processor_gets_every_update_of_its_type_once_in_order(
    site: DemoSite, page: Any
) -> None:
    run = marker("burst")
    wait_for_subscribers(site.url, CHANNEL_ID, 1)
    # A second processor for the same type, registered by the test.
    page.evaluate(
        """() => {
          window.testSeen = [];
          demoClient.registerProcessor('demo', 'message', (data) => {
            window.testSeen.push(data.text);
          });
        }"""
    )
    expected = [f"{run}{number}" for number in range(50)]
    for number, text in enumerate(expected):
        send(text)
        if number in (10, 25, 40):
            send(f"{run}unregistered {number}", update_type="nobody-listens")

    wait_seen(page, run, expected)
    assert [text for text in page.evaluate("window.testSeen") if text.startswith(run)] == expected
    # The updates of the unregistered type reached no processor.
    every_text = page.evaluate("Object.values(window.demoSeen).flat().map(String)")
    assert not [text for text in every_text if "unregistered" in text]
    assert page.evaluate("window.demoSeen.missed") == 0
    # The demo streams: its channel is followed over EventSource, not polled.
    assert page.evaluate("demoClient.transportOf('demo')") == "eventsource"


def test_page_catches_up_after_the_edge_restarts_without_duplicates(
    site: DemoSite, page: Any
) -> None:
    run = marker("outage")
    page.evaluate(f"demoClient.options.backoff = {BACKOFF}")
    before = [f"{run}before {number}" for number in range(5)]
    for text in before:
        send(text)
    wait_seen(page, run, before)

    site.stop()
    during = [f"{run}during {number}" for number in range(20)]
    for text in during:
        send(text)  # the broker keeps them while no edge runs
    eventually(lambda: failures_in_a_row(page) >= 2, 15, "two failures in a row")
    assert "Connection lost" in page.inner_text("#status")
    site.start()

    wait_seen(page, run, before + during)
    after = [f"{run}after {number}" for number in range(5)]
    for text in after:
        send(text)
    wait_seen(page, run, before + during + after)
    assert page.evaluate("window.demoSeen.missed") == 0
    assert "Live" in page.inner_text("#status")


def failures_in_a_row(page: Any) -> int:
    """How many times in a row the page's client has failed to reach the edge, by its status."""
    status: dict[str, Any] | None = page.evaluate("window.demoSeen.status")
    if not status or status["state"] != "retrying":
        return 0
    failures: int = status["failures"]
    return failures


def test_page_polls_a_stopped_edge_no_faster_than_the_backoff_allows(
    site: DemoSite, polling_page: Any
) -> None:
    page = polling_page
    run = marker("backoff")
    page.evaluate(f"demoClient.options.backoff = {BACKOFF}")
    send(f"{run}first")
    wait_seen(page, run, [f"{run}first"])

    since = page_clock(page)
    site.stop()
    retries = 5
    eventually(lambda: len(failed_polls(page, since)) >= retries, 20, f"{retries} failed polls")
    window = page_clock(page) - since
    # From the poll the edge held when it stopped to the last retry.
    polls = [entry for entry in poll_log(page) if entry["end"] is None or entry["end"] >= since]
    site.start()

    failures = 0
    for previous, current in zip(polls, polls[1:], strict=False):
        if previous["status"] != 0:
            failures = 0  # answered by the stopping edge: the next poll may follow at once
            continue
        failures += 1
        gap = current["start"] - previous["end"]
        least = least_delay(failures)
        assert gap >= least - 5, f"retry {failures} after {gap:.0f} ms; back-off allows {least}"
    assert failures >= retries - 1
    # The count over the outage: one poll answered by the stopping edge, then
    # at most as many retries as the shortest delays fit into the window.
    most, waited = 2, least_delay(1)
    while waited <= window:
        most += 1
        waited += least_delay(most - 1)
    assert len(polls) <= most, (len(polls), window)

    # And the page recovers on its own once the edge is back.
    send(f"{run}back")
    wait_seen(page, run, [f"{run}first", f"{run}back"], timeout=20)


def least_delay(failures: int) -> float:
    """The shortest wait the client may make after `failures` failed polls in a row:
    min(cap, base * 2^(failures-1)) times a jitter factor of at least 0.5."""
    return 0.5 * min(BACKOFF["cap"], BACKOFF["base"] << (failures - 1))


def test_presence_lists_a_second_visitor_until_they_leave(
    site: DemoSite, page: Any, browser: Any
) -> None:
    eventually(lambda: "demo" in page.inner_text("#presence"), 10, "the demo user present")
    other = browser.new_context()
    try:
        visitor = other.new_page()
        visitor.goto(site.url + "/")
        visitor.click("#new-visitor")
        name = visitor.inner_text("#me")
        assert name.startswith("visitor-")
        eventually(lambda: name in page.inner_text("#presence"), 10, f"{name} present")
    finally:
        other.close()
    # Gone once its browser stopped polling for the grace (1 s here).
    eventually(lambda: name not in page.inner_text("#presence"), 10, f"{name} gone")
    assert "demo" in page.inner_text("#presence")


def test_an_expired_signed_url_reaches_the_pages_callback_which_carries_on_with_a_fresh_one(
    site: DemoSite, polling_page: Any
) -> None:
    page = polling_page
    channel = f"signed-{uuid.uuid4().hex[:8]}"
    expired = sign(SIGNING_SECRET, [channel], int(time.time()) - 1)
    expired_url = f"{site.url}{SIGNED_PATH}{channel}?token={expired}"
    with override_settings(PUSH_SERVER=site.push_server(passthrough_grace=1.0)):
        fresh_url = channel_url(channel, location=SIGNED_PATH + "([^/]+)")
        updates.send_update(channel, {"type": "message", "text": "before the refusal"})
    page.evaluate(
        """([expiredUrl, freshUrl]) => {
          window.signedSeen = [];
          window.forbidden = [];
          demoClient.registerProcessor('signed', 'message', (data) => {
            window.signedSeen.push(data.text);
          });
          demoClient.onForbidden('signed', (name, reason) => {
            window.forbidden.push([name, reason]);
            // As a page would after fetching a fresh URL from its site.
            demoClient.subscribe({[name]: freshUrl});
          });
          demoClient.subscribe({signed: expiredUrl});
        }""",
        [expired_url, fresh_url],
    )
    eventually(lambda: page.evaluate("window.signedSeen.length") >= 1, 15, "the first update")
    wait_for_subscribers(site.url, channel, 1)
    updates.send_update(channel, {"type": "message", "text": "after the refusal"})
    eventually(lambda: page.evaluate("window.signedSeen.length") >= 2, 15, "the second update")

    assert page.evaluate("window.forbidden") == [["signed", TOKEN_EXPIRED]]
    assert page.evaluate("window.signedSeen") == ["before the refusal", "after the refusal"]
    # The expired URL was asked once, answered 403, and never polled again.
    polls = [entry for entry in poll_log(page) if SIGNED_PATH in entry["url"]]
    assert [(entry["url"], entry["status"]) for entry in polls[:2]] == [
        (expired_url, 403),
        (fresh_url, 200),
    ]
    assert all(entry["url"] == fresh_url for entry in polls[1:])


def test_the_jquery_page_gets_every_update_once_in_order_through_dollar_updates(
    site: DemoSite, jquery_page: Any
) -> None:
    run = marker("jquery")
    wait_for_subscribers(site.url, CHANNEL_ID, 1)
    expected = [f"{run}{number}" for number in range(30)]
    for text in expected:
        send(text)

    def texts() -> list[str]:
        found: list[str] = jquery_page.evaluate("window.jquerySeen.message")
        return [text for text in found if text.startswith(run)]

    eventually(lambda: len(texts()) >= len(expected), 15, f"{len(expected)} messages on the page")
    assert texts() == expected
    # No jQuery on the demo's own page; this one has it, and its polls go through $.ajax.
    assert jquery_page.evaluate("typeof jQuery.updates.subscribe") == "function"
    assert {entry["url"] for entry in poll_log(jquery_page)} == {site.url + "/updates/demo"}


def test_the_demo_site_serves_the_client_as_a_script_and_as_an_es_module(page: Any) -> None:
    same = page.evaluate(
        """() => import('/static/pushserver/pushserver.module.js').then(
             (module) => module.default === window.pushserver)"""
    )
    assert same is True
    # No jQuery on the demo page: the client needs none.
    assert page.evaluate("typeof window.jQuery") == "undefined"
