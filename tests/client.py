"""A small protocol client for tests: publish, poll, walk a channel by its cursor."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from edge.protocol import ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED
from tests.processes import eventually


def fresh(name: str) -> str:
    """A channel id no other test uses."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


def path(location: str, channel_id: str) -> str:
    return f"/{location}/{quote(channel_id, safe='')}"


@dataclass
class Cursor:
    last_modified: str | None = None
    etag: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.last_modified is not None:
            headers[IF_MODIFIED_SINCE] = self.last_modified
        if self.etag is not None:
            headers[IF_NONE_MATCH] = self.etag
        return headers

    def advanced(self, response: httpx.Response) -> Cursor:
        return Cursor(response.headers.get(LAST_MODIFIED), response.headers.get(ETAG))


def publish(
    base: str,
    channel_id: str,
    body: bytes | str,
    content_type: str | None = "text/plain",
    location: str = "send-update",
) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    content = body.encode() if isinstance(body, str) else body
    response = httpx.post(
        base + path(location, channel_id), content=content, headers=headers, timeout=10
    )
    assert response.status_code in (201, 202), response.text
    return response


def info(base: str, channel_id: str) -> dict[str, object] | None:
    response = httpx.get(
        base + path("send-update", channel_id), headers={"Accept": "application/json"}, timeout=10
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    loaded: dict[str, object] = json.loads(response.text)
    return loaded


def wait_for_subscribers(base: str, channel_id: str, count: int) -> None:
    def enough() -> bool:
        found = info(base, channel_id)
        return found is not None and int(str(found["subscribers"])) >= count

    eventually(enough, 10, f"{count} held subscribers on {channel_id!r}")


def poll(
    client: httpx.Client,
    base: str,
    channel_id: str,
    cursor: Cursor | None = None,
    location: str = "updates",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    merged = (cursor or Cursor()).headers()
    merged.update(headers or {})
    return client.get(base + path(location, channel_id), headers=merged)


def hold(
    client: httpx.Client,
    base: str,
    channel_id: str,
    cursor: Cursor,
    *,
    location: str = "updates",
    headers: dict[str, str] | None = None,
    held: int = 1,
    counted_by: str | None = None,
) -> Future[httpx.Response]:
    """Poll from `cursor` in the background; returns once the poll is held.

    Held means the broker counts `held` polls waiting on the channel, as
    the publisher location at `counted_by` (default `base`) reports it.
    """
    waiting = in_background(poll, client, base, channel_id, cursor, location, headers)
    wait_for_subscribers(counted_by or base, channel_id, held)
    return waiting


def walk(
    base: str,
    channel_id: str,
    count: int,
    cursor: Cursor | None = None,
    into: list[bytes] | None = None,
) -> list[bytes]:
    """Follow the channel from `cursor` until `count` messages were received.

    `into`, when given, gets each message as it arrives, for a test that
    paces itself on the walk.
    """
    received = [] if into is None else into
    cursor = cursor or Cursor()
    with httpx.Client(timeout=30) as client:
        while len(received) < count:
            response = poll(client, base, channel_id, cursor)
            if response.status_code == 304:
                continue
            assert response.status_code == 200, response.text
            received.append(response.content)
            cursor = cursor.advanced(response)
    return received


def in_background(function, *args, **kwargs) -> Future:  # type: ignore[no-untyped-def, type-arg]
    executor = ThreadPoolExecutor(1)
    future = executor.submit(function, *args, **kwargs)
    executor.shutdown(wait=False)
    return future


def figures(url: str, pattern: str) -> dict[str, float]:
    """The samples of a metrics page whose line matches `pattern` (its first group names one)."""
    return {
        found.group(1): float(found.group(2))
        for found in re.finditer(pattern, httpx.get(url).text, re.MULTILINE)
    }


def edge_channels(url: str) -> int:
    found = figures(f"{url}/pushserver/metrics", r"^pushserver_edge_(channels) (\S+)$")
    assert found, "no pushserver_edge_channels gauge"
    return int(found["channels"])
