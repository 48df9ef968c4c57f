"""Many long-polling subscribers in one test process, on plain asyncio streams.

A general-purpose client pool serialises too much to hold a hundred
long-polls at once; each subscriber here owns one keep-alive connection
and speaks just the HTTP/1.1 the edges answer with (Content-Length bodies).
"""

from __future__ import annotations

import asyncio
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


@dataclass
class Subscriber:
    """Walks one channel with the protocol's cursor, on the next edge at every poll."""

    edges: list[str]
    channel_id: str
    offset: int = 0
    received: list[bytes] = field(default_factory=list)
    polls: int = 0

    async def walk(self, count: int) -> list[bytes]:
        connections = [Connection(base) for base in self.edges]
        headers: dict[str, str] = {}
        target = path("updates", self.channel_id)
        try:
            while len(self.received) < count:
                index = (self.offset + self.polls) % len(connections)
                self.polls += 1
                response = await connections[index].get(target, headers)
                if response.status == 304:
                    continue
                assert response.status == 200, (response.status, response.body)
                self.received.append(response.body)
                headers = {
                    IF_MODIFIED_SINCE: response.headers[LAST_MODIFIED.lower()],
                    IF_NONE_MATCH: response.headers[ETAG.lower()],
                }
        finally:
            for connection in connections:
                connection.close()
        return self.received
