"""The passthrough end to end: an edge calls Django, whose signals see the browser's user."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.protocol import PASSTHROUGH_SECRET
from tests.client import Cursor, fresh, path, poll, publish, wait_for_subscribers
from tests.pollers import Subscriber
from tests.processes import ANY_PORT, Launcher, Process, eventually, free_port

SECRET = "edge-secret"


@dataclass
class Site:
    process: Process
    base: str
    events_file: Path
    refuse_all_flag: Path

    def logged(self, channel_id: str) -> list[dict[str, Any]]:
        """What Django's receivers saw for `channel_id`, one dict per signal."""
        if not self.events_file.exists():
            return []
        lines = self.events_file.read_text().splitlines()
        return [event for event in map(json.loads, lines) if event["channel_id"] == channel_id]

    def events(self, channel_id: str) -> list[tuple[str, str | None]]:
        return [(event["event"], event["user"]) for event in self.logged(channel_id)]

    @contextlib.contextmanager
    def browser(self, username: str | None) -> Iterator[httpx.Client]:
        """A client with cookies of its own, logged in as `username` unless it is None."""
        with httpx.Client(timeout=30) as client:
            if username is not None:
                response = client.get(f"{self.base}/login/{username}/")
                assert response.status_code == 200, response.text
            yield client


def django_settings(folder: Path) -> dict[str, object]:
    return {
        "ROOT_URLCONF": "tests.passthrough_site",
        "MIDDLEWARE": [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        "DATABASES": {
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(folder / "db.sqlite3")}
        },
        # Only the secret makes the edge trusted: loopback is not an internal IP here.
        "INTERNAL_IPS": [],
        "PASSTHROUGH_LOG": str(folder / "events.jsonl"),
        "REFUSED_USERS": ["mallory"],
        "REFUSE_ALL_FLAG": str(folder / "refuse-all"),
    }


def passthrough_locations(
    passthrough: str, grace: float, *more: dict[str, Any]
) -> tuple[dict[str, Any], ...]:
    """/updates/ and /grace/ (with `grace`) telling `passthrough`, `more`, and a publisher."""
    return (
        {"type": "subscriber", "url": r"/updates/([^/]+)", "passthrough": passthrough},
        {
            "type": "subscriber",
            "url": r"/grace/([^/]+)",
            "passthrough": passthrough,
            "passthrough_grace": grace,
        },
        *more,
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    )


@pytest.fixture(scope="module")
def site(module_launcher: Launcher) -> Site:
    """Django and an embedded broker and edge in one process (--allrequests), calling itself."""
    port = free_port()
    passthrough = f"http://127.0.0.1:{port}/passthrough"
    push_server = {
        "broker": dict(ANY_PORT),
        "passthrough_secret": SECRET,
        "long_poll_timeout": 2,
        "locations": passthrough_locations(
            passthrough,
            2,
            {
                "type": "subscriber",
                "url": r"/private/([^/]+)",
                "passthrough": passthrough,
                "authorize": True,
                "authorize_cache": 60,
            },
        ),
    }
    folder = module_launcher.folder
    module = module_launcher.settings(push_server, **django_settings(folder))
    module_launcher.manage(module, "migrate", "--noinput", "--verbosity=0")
    process = module_launcher.run("site", module, "--allrequests", f"127.0.0.1:{port}")
    process.wait_for("Edge listening on")
    return Site(process, f"http://127.0.0.1:{port}", folder / "events.jsonl", folder / "refuse-all")


@pytest.mark.parametrize("user", ["alice", None], ids=["logged-in", "anonymous"])
def test_a_poll_fires_subscribe_and_unsubscribe_with_the_browsers_user(
    site: Site, user: str | None
) -> None:
    channel = fresh("presence")
    publish(site.base, channel, "hello")
    with site.browser(user) as browser:
        assert poll(browser, site.base, channel).text == "hello"
    expected = [("subscribe", user), ("unsubscribe", user)]
    eventually(lambda: site.events(channel) == expected, 10, f"{expected} for {channel}")


def test_a_caller_without_the_secret_gets_403_and_fires_nothing(site: Site) -> None:
    channel = fresh("untrusted")
    form = {"channel_id": channel, "subscribe": "1"}
    refused = httpx.post(f"{site.base}/passthrough", data=form)
    assert refused.status_code == 403
    wrong = httpx.post(f"{site.base}/passthrough", data=form, headers={PASSTHROUGH_SECRET: "no"})
    assert wrong.status_code == 403
    trusted = httpx.post(
        f"{site.base}/passthrough", data=form, headers={PASSTHROUGH_SECRET: SECRET}
    )
    assert trusted.status_code == 200
    # Only the trusted call reached the receivers.
    eventually(lambda: site.events(channel) == [("subscribe", None)], 10, "one subscribe")


def test_grace_turns_twenty_polls_of_one_client_into_one_subscribe(site: Site) -> None:
    channel = fresh("grace")
    for n in range(20):
        publish(site.base, channel, f"update {n}")
    with site.browser("bob") as bob:
        cursor = Cursor()
        for n in range(20):
            response = poll(bob, site.base, channel, cursor, location="grace")
            assert response.text == f"update {n}"
            cursor = cursor.advanced(response)
        assert site.events(channel) == [("subscribe", "bob")]
    # Once the client stops polling, the unsubscribe follows after the grace.
    expected = [("subscribe", "bob"), ("unsubscribe", "bob")]
    eventually(lambda: site.events(channel) == expected, 10, "the unsubscribe after the grace")


def test_authorization_refuses_a_user_the_receiver_rejects_and_admits_another(
    site: Site,
) -> None:
    channel = fresh("private")
    publish(site.base, channel, "secret plans")
    with site.browser("mallory") as mallory:
        refused = poll(mallory, site.base, channel, location="private")
        assert refused.status_code == 403
        assert "refused" in refused.text
    with site.browser("alice") as alice:
        admitted = poll(alice, site.base, channel, location="private")
        assert admitted.status_code == 200
        assert admitted.text == "secret plans"
        # The admission is cached: Django refusing everyone now does not hold her poll.
        site.refuse_all_flag.touch()
        try:
            again = poll(alice, site.base, channel, location="private")
            assert again.status_code == 200
            with site.browser("carol") as carol:
                assert poll(carol, site.base, channel, location="private").status_code == 403
        finally:
            site.refuse_all_flag.unlink()


def test_delivery_to_a_hundred_subscribers_goes_on_while_django_is_down(launcher: Launcher) -> None:
    dead = f"http://127.0.0.1:{free_port()}/passthrough"
    locations = (
        {"type": "subscriber", "url": r"/updates/([^/]+)", "passthrough": dead},
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    )
    process, base = launcher.embedded(locations=locations, passthrough_timeout=1)
    channel = fresh("django-down")
    publish(base, channel, "first")

    async def run() -> tuple[list[list[bytes]], list[int]]:
        tasks = [asyncio.create_task(Subscriber([base], channel).walk(6)) for _ in range(100)]
        # Each has had "first" and holds a poll for what follows.
        await asyncio.to_thread(wait_for_subscribers, base, channel, 100)
        async with httpx.AsyncClient(timeout=30) as publisher:
            statuses = [
                (await publisher.post(url, content=f"m{n}".encode())).status_code for n in range(5)
            ]
        return await asyncio.wait_for(asyncio.gather(*tasks), 60), statuses

    url = base + path("send-update", channel)
    received, statuses = asyncio.run(run())
    # 201: the first message found subscribers waiting.
    assert statuses[0] == 201 and set(statuses) <= {201, 202}, statuses
    expected = [b"first"] + [f"m{n}".encode() for n in range(5)]
    assert all(walked == expected for walked in received)
    failures = eventually(
        lambda: [line for line in process.lines if "passthrough call" in line],
        10,
        "a logged passthrough failure",
    )
    print(f"Django down: 600 deliveries made; passthrough failures logged: {failures[-1]}")
