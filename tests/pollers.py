"""Many long-polling subscribers in one test process, on plain asyncio streams.

A general-purpose client pool serialises too much to hold a hundred
long-polls at once; each subscriber here owns one keep-alive connection
and speaks just the HTTP/1.1 the edges answer with (Content-Length bodies).
"""

from __future__ import annotations

import asyncio
import email.utils
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from edge.protocol import ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED
from tests.client import path


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Connection:
    base: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def get(self, target: str, headers: dict[str, str]) -> Response:
        for attempt in (1, 2):
            if self.writer is None:
                parts = urlsplit(self.base)
                self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port)
            assert self.reader is not None
            lines = [f"GET {target} HTTP/1.1", f"Host: {urlsplit(self.base).netloc}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            try:
                self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                return await self._read()
            except (ConnectionError, asyncio.IncompleteReadError):
                # A kept-alive connection the server closed meanwhile: open a new one once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read(self) -> Response:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(length) if length else b""
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(int(status_line.split()[1]), headers, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# After an error (an edge gone, the balancer answering 502), the pause
# before asking again from the same cursor.
RETRY_AFTER = 0.2


@dataclass
class Subscriber:
    """Walks one channel with the protocol's cursor, on the next edge at every poll.

    With `tolerate_errors`, a failed poll (refused connection, reset, 5xx) is
    counted and asked again from the same cursor, as a browser client does.
    """

    edges: list[str]
    channel_id: str
    offset: int = 0
    tolerate_errors: bool = False
    received: list[bytes] = field(default_factory=list)
    ids: list[tuple[int, int]] = field(default_factory=list)
    polls: int = 0
    errors: int = 0

    async def walk(self, count: int) -> list[bytes]:
        connections = [Connection(base) for base in self.edges]
        headers: dict[str, str] = {}
        target = path("updates", self.channel_id)
        try:
            while len(self.received) < count:
                index = (self.offset + self.polls) % len(connections)
                self.polls += 1
                try:
                    response = await connections[index].get(target, headers)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    if not self.tolerate_errors:
                        raise
                    response = Response(0, {}, b"")
                if response.status == 304:
                    continue
                if response.status != 200 and self.tolerate_errors:
                    self.errors += 1
                    connections[index].close()
                    await asyncio.sleep(RETRY_AFTER)
                    continue
                assert response.status == 200, (response.status, response.body)
                self.received.append(response.body)
                last_modified = response.headers[LAST_MODIFIED.lower()]
                etag = response.headers[ETAG.lower()]
                seconds = int(email.utils.parsedate_to_datetime(last_modified).timestamp())
                self.ids.append((seconds, int(etag)))
                headers = {IF_MODIFIED_SINCE: last_modified, IF_NONE_MATCH: etag}
        finally:
            for connection in connections:
                connection.close()
        return self.received
