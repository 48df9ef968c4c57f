"""Seeded inputs for fuzzing the edge's HTTP port and the broker's ZeroMQ ports, and the
strict reader that judges what the edge answered.

Every input comes from a `random.Random` seeded by the test, so a failure is
reproduced by its seed and case number alone. Inputs are mutations of valid
requests and frames (a field at a time, then a few bytes), not noise: noise
stops at the first byte a parser refuses and never reaches the code behind it.

The trap: a generator that can produce the input of a known, not yet fixed
bug makes every run fail on it and hides anything new. Such inputs are left
out here, each beside the name of the strict xfail regression test that
keeps it; whoever fixes the bug lets the generator produce it again.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import msgpack

from broker import wire

# Scales every case count (PUSHSERVER_FUZZ_SCALE=50 for a run of several minutes);
# PUSHSERVER_FUZZ_SEED replaces the fixed seeds.
SCALE = float(os.environ.get("PUSHSERVER_FUZZ_SCALE", "1"))
SEED_OVERRIDE = os.environ.get("PUSHSERVER_FUZZ_SEED")


def count(base: int) -> int:
    return max(1, round(base * SCALE))


def seed(fixed: int) -> int:
    return int(SEED_OVERRIDE) if SEED_OVERRIDE is not None else fixed


# -- HTTP requests -------------------------------------------------------------------

TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CONTROLS = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"]
ODD_METHODS = [
    b"BREW",
    b"get",
    b"CONNECT",
    b"PRI",
    b"M-SEARCH",
    b"G ET",
    b"",
    b"GET\x00",
    b"\xff\xfe",
    b"X" * 300,
]
VERSIONS = [b"HTTP/1.1"] * 12 + [b"HTTP/1.0"] * 3
ODD_VERSIONS = [
    b"",
    b"HTTP/0.9",
    b"HTTP/2.0",
    b"HTTP/1.2",
    b"HTTP/1",
    b"http/1.1",
    b"HTTP/1.1 ",
    b"HTTP/11.1",
    b"HTTP/1.1\x00",
    b"HTTP/1.10",
]
SENTINEL = b"OPTIONS /poll/sentinel HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
PERCENT_PIECES = [
    "%",
    "%0",
    "%zz",
    "%00",
    "%ff",
    "%FF%FE",
    "%2f",
    "%2F",
    "%252f",
    "%c3%a9",
    "%c3",
    "%ed%a0%80",
    "%f4%90%80%80",
    "..",
    "/../",
    "/..%2f",
    "%2e%2e/",
    "//",
    "/./",
    "\\",
    ";",
    "?",
    "?a=%",
    "&&==",
    "#frag",
    "+",
    "%20",
]


@dataclass
class HttpRequest:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # "length", "chunked" or "none": how the body is framed on the wire.
    framing: str = "none"
    chunks: list[bytes] = field(default_factory=list)
    chunk_lines: list[bytes] | None = None
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _channel(rng: random.Random, channels: list[str]) -> str:
    if rng.random() < 0.8:
        return rng.choice(channels)
    return f"fuzz-{rng.randrange(10**6)}"


def http_date(rng: random.Random) -> bytes:
    """An If-Modified-Since, from a real date to out-of-range fields and zones."""
    days = [b"Mon", b"Tue", b"Thu", b"Sun", b"Xyz", b""]
    months = [b"Jan", b"Feb", b"Dec", b"Foo", b"jan", b""]
    years = [1970, 2026, 1, 0, 69, 99, 1900, 2038, 9998, 9999, 10000, rng.randrange(100000)]
    fields = [
        rng.choice(days) + b",",
        str(rng.choice([1, 0, 31, 32, 99, -1, rng.randrange(100)])).encode(),
        rng.choice(months),
        str(rng.choice(years)).encode(),
        b"%02d:%02d:%02d" % (rng.randrange(100), rng.randrange(100), rng.randrange(100)),
        rng.choice([b"GMT", b"UTC", b"+0000", b"-2359", b"+9999", b"-9999", b"EST", b"Z", b""]),
    ]
    if rng.random() < 0.2:
        del fields[rng.randrange(len(fields))]
    return b" ".join(fields)


def etag(rng: random.Random) -> bytes:
    number = rng.choice([0, 1, -1, 10**18 - 1, 10**18, 2**63, rng.randrange(1000)])
    return (
        rng.choice([b"%d", b'"%d"', b'W/"%d"', b" %d ", b"%d,%d", b"%x", b"*"])
        .replace(b"%d", str(number).encode())
        .replace(b"%x", format(abs(number), "x").encode())
    )


def subscriber_request(rng: random.Random, channels: list[str]) -> HttpRequest:
    location = rng.choice(["updates", "poll", "private", "named", "strict", "passthrough"])
    method = b"GET" if rng.random() < 0.85 else rng.choice([b"OPTIONS", b"HEAD", b"POST"])
    target = f"/{location}/{_channel(rng, channels)}".encode()
    headers = [(b"Host", b"edge")]
    if rng.random() < 0.6:
        headers.append((b"If-Modified-Since", http_date(rng)))
    if rng.random() < 0.6:
        headers.append((b"If-None-Match", etag(rng)))
    if rng.random() < 0.3:
        origin = rng.choice([b"http://allowed.example", b"http://evil.example", b"null", b""])
        headers.append((b"Origin", origin))
    if rng.random() < 0.2:
        headers.append((b"Cookie", b"sessionid=" + rng.randbytes(8).hex().encode()))
    return HttpRequest(method, target, rng.choice(VERSIONS), headers)


def accept(rng: random.Random) -> bytes:
    media = [b"application/json", b"text/xml", b"text/yaml", b"*/*", b"text/*", b"x/y", b""]
    parts = []
    for _ in range(rng.randrange(1, 4)):
        part = rng.choice(media)
        if rng.random() < 0.4:
            q = rng.choice([b"0", b"1", b"0.5", b"nan", b"inf", b"-1", b"1e400", b"", b"x"])
            part += b";q=" + q
        parts.append(part)
    return b",".join(parts)


def publisher_request(rng: random.Random, channels: list[str]) -> HttpRequest:
    location = rng.choice(["send-update"] * 4 + ["guarded"])
    method = rng.choice([b"POST"] * 5 + [b"GET", b"PUT", b"DELETE", b"PATCH"])
    target = f"/{location}/{_channel(rng, channels)}".encode()
    headers = [(b"Host", b"edge")]
    if rng.random() < 0.5:
        headers.append((b"Accept", accept(rng)))
    if rng.random() < 0.4:
        content_type = rng.choice(
            [b"text/plain", b"application/json", b"multipart/form-data", b"x/\xe9", b""]
        )
        headers.append((b"Content-Type", content_type))
    if location == "guarded" and rng.random() < 0.7:
        headers.append((b"X-Push-Secret", rng.choice([b"s3cret", b"wrong", b""])))
    if rng.random() < 0.1:
        headers.append((b"Expect", rng.choice([b"100-continue", b"100-Continue", b"nonsense"])))
    body = rng.randbytes(rng.choice([0, 1, 10, 100, 1000, 70_000]))
    request = HttpRequest(method, target, rng.choice(VERSIONS), headers, body)
    if method in (b"POST", b"PUT") or rng.random() < 0.2:
        request.framing = "chunked" if rng.random() < 0.3 else "length"
        request.chunks = _split(rng, body, rng.randrange(1, 5))
    return request


def other_request(rng: random.Random, channels: list[str]) -> HttpRequest:
    target = rng.choice(
        [
            b"/pushserver/metrics",
            b"/pushserver/metrics?x=1",
            b"/",
            b"/nowhere",
            b"/updates/",
            b"/updates/a/b",
            b"/send-update/",
            b"*",
            b"http://edge/updates/" + rng.choice(channels).encode(),
        ]
    )
    return HttpRequest(rng.choice(METHODS), target, rng.choice(VERSIONS), [(b"Host", b"edge")])


def _split(rng: random.Random, data: bytes, pieces: int) -> list[bytes]:
    if pieces <= 1 or len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _mutated_target(rng: random.Random, target: bytes) -> bytes:
    choice = rng.random()
    if choice < 0.5:
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(target) + 1)
            target = target[:at] + rng.choice(PERCENT_PIECES).encode() + target[at:]
        return target
    if choice < 0.65:
        at = rng.randrange(len(target) + 1)
        return target[:at] + bytes([rng.choice(CONTROLS + b" \x80\xff")]) + target[at:]
    if choice < 0.75:
        return target + b"?" + b"&".join(rng.randbytes(4).hex().encode() for _ in range(50))
    if choice < 0.8:
        return target + b"a" * rng.choice([1000, 8000, 70_000])
    if choice < 0.9:
        return b"http://" + rng.choice([b"edge", b"", b"\xff", b"a:b@c"]) + target
    return rng.choice([b"", b"*", b"/", b"//", b"updates/x", b"%", b"/%"])


def _odd_header(rng: random.Random) -> tuple[bytes, bytes]:
    choice = rng.random()
    if choice < 0.25:
        name = bytes(rng.choice(TOKEN_CHARS) for _ in range(rng.randrange(1, 12)))
        at = rng.randrange(len(name) + 1)
        name = name[:at] + bytes([rng.choice(CONTROLS + b' :()"\x80\xff')]) + name[at:]
        return name, b"v"
    if choice < 0.5:
        value = bytearray(rng.randbytes(rng.randrange(0, 20)).hex().encode())
        for _ in range(rng.randrange(1, 3)):
            value.insert(rng.randrange(len(value) + 1), rng.choice(CONTROLS + b"\x80\xff\t "))
        return b"X-Odd", bytes(value)
    if choice < 0.6:
        return b"X-Fold", b"a\r\n folded"
    if choice < 0.7:
        return b"", b"no name"
    if choice < 0.8:
        return b"Host", rng.choice([b"", b"a,b", b"h\x00", b"[::1]", b"h:99999", b"a b", b"\xff"])
    if choice < 0.9:
        return b"Connection", rng.choice(
            [b"close", b"keep-alive", b"upgrade", b"close, keep-alive", b"\x01"]
        )
    return b"Upgrade", rng.choice([b"websocket", b"h2c", b""])


def _framing_conflict(rng: random.Random, request: HttpRequest) -> None:
    """Content-Length and Transfer-Encoding that lie, repeat or contradict each other."""
    length = str(len(request.body)).encode()
    choice = rng.random()
    if choice < 0.3:
        request.headers.append(
            (
                b"Content-Length",
                rng.choice(
                    [
                        b"-1",
                        b"+5",
                        b" 5",
                        b"5 ",
                        b"0x10",
                        b"1e3",
                        b"99999999999999999999999",
                        b"18446744073709551615",
                        b"",
                        length + b"," + length,
                        b"\xb2",
                        str(len(request.body) + rng.choice([-5, -1, 1, 100])).encode(),
                    ]
                ),
            )
        )
        request.framing = "raw"
    elif choice < 0.55:
        request.headers.append((b"Content-Length", length))
        request.headers.append((b"Transfer-Encoding", b"chunked"))
        request.framing = rng.choice(["chunked", "raw"])
    elif choice < 0.75:
        request.headers.append(
            (
                b"Transfer-Encoding",
                rng.choice(
                    [b"Chunked", b"gzip, chunked", b"chunked, gzip", b" chunked", b"chunked\x00"]
                ),
            )
        )
        request.framing = rng.choice(["chunked", "raw"])
    else:
        request.framing = "chunked"
        lines = []
        for chunk in request.chunks or [b"x"]:
            declared = len(chunk) + rng.choice([0, 0, -1, 1, 1000])
            size = rng.choice(
                [
                    format(max(declared, 0), "x").encode(),
                    format(max(declared, 0), "X").encode(),
                    b"000" + format(max(declared, 0), "x").encode(),
                    b"ffffffffffffffffff",
                    b"-1",
                    b"zz",
                    b"",
                    format(max(declared, 0), "x").encode() + b";ext=1",
                    format(max(declared, 0), "x").encode() + b" ",
                ]
            )
            lines.append(size + b"\r\n" + chunk + rng.choice([b"\r\n", b"\r\n", b"", b"\n", b"X"]))
        last_chunks = [b"0\r\n\r\n", b"0\r\n", b"", b"0\r\nX-T: 1\r\n\r\n", b"0;a\r\n\r\n"]
        lines.append(rng.choice(last_chunks))
        request.chunk_lines = lines


def mutate(rng: random.Random, request: HttpRequest) -> HttpRequest:
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        choice = rng.random()
        if choice < 0.1:
            request.method = rng.choice(ODD_METHODS + METHODS)
        elif choice < 0.3:
            request.target = _mutated_target(rng, request.target)
        elif choice < 0.38:
            request.version = rng.choice(ODD_VERSIONS)
        elif choice < 0.55:
            for _ in range(rng.randrange(1, 4)):
                request.headers.insert(rng.randrange(len(request.headers) + 1), _odd_header(rng))
        elif choice < 0.62:
            small = [h for h in request.headers if len(h[1]) < 100] or [(b"X-Many", b"1")]
            request.headers += [rng.choice(small)] * rng.choice([2, 10, 200, 3000])
        elif choice < 0.66:
            size = rng.choice([4000, 60_000, 66_000, 200_000])
            request.headers.append((b"X-Huge", b"h" * size))
        elif choice < 0.7:
            request.headers = [h for h in request.headers if h[0].lower() != b"host"]
        elif choice < 0.9:
            if not request.body and rng.random() < 0.7:
                request.body = rng.randbytes(rng.choice([1, 5, 50, 500]))
                request.chunks = _split(rng, request.body, rng.randrange(1, 4))
            _framing_conflict(rng, request)
        else:
            request.headers.append((b"Expect", b"100-continue"))
    return request


def encode(rng: random.Random, request: HttpRequest) -> bytes:
    eol = b"\r\n" if rng.random() < 0.96 else rng.choice([b"\n", b"\r", b"\r\r\n"])
    line = b" ".join(part for part in (request.method, request.target, request.version) if part)
    if rng.random() < 0.03:
        line = line.replace(b" ", rng.choice([b"  ", b"\t", b"\x00"]), 1)
    headers = list(request.headers)
    if request.framing == "length":
        headers.append((b"Content-Length", str(len(request.body)).encode()))
    elif request.framing == "chunked" and not any(
        name.lower() == b"transfer-encoding" for name, _ in headers
    ):
        headers.append((b"Transfer-Encoding", b"chunked"))
    separator = rng.choice([b": "] * 20 + [b":", b" : ", b":\t", b":  "])
    head = eol.join([line, *(name + separator + value for name, value in headers), b""]) + eol
    if request.framing == "chunked":
        if request.chunk_lines is not None:
            body = b"".join(request.chunk_lines)
        else:
            body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in request.chunks if c)
            body += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in request.trailers)
            body += b"\r\n"
    elif request.framing in ("length", "raw"):
        body = request.body
    else:
        body = b""
    return head + body


def byte_noise(rng: random.Random, data: bytes) -> bytes:
    """A few bytes flipped, inserted, dropped or the message cut short."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not out:
            break
        at = rng.randrange(len(out))
        choice = rng.random()
        if choice < 0.3:
            out[at] ^= 1 << rng.randrange(8)
        elif choice < 0.55:
            out.insert(at, rng.choice(CONTROLS + b"\r\n :\x80"))
        elif choice < 0.8:
            del out[at]
        else:
            del out[at:]
    return bytes(out)


@dataclass
class HttpCase:
    number: int
    data: bytes
    # How the bytes go out: pieces, each after a pause (seconds).
    pieces: list[tuple[float, bytes]]
    # The client closes after this many seconds instead of reading to the end;
    # None: it reads until the edge closes (the sentinel asks it to).
    hang_up_after: float | None
    reset: bool


def http_case(rng: random.Random, number: int, channels: list[str]) -> HttpCase:
    makers: list[Callable[[random.Random, list[str]], HttpRequest]] = [
        subscriber_request,
        subscriber_request,
        publisher_request,
        publisher_request,
        other_request,
    ]
    requests = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        request = rng.choice(makers)(rng, channels)
        if request.version == b"HTTP/1.0" and rng.random() < 0.8:
            request.headers.append((b"Connection", b"keep-alive"))
        encoded = encode(rng, mutate(rng, request) if rng.random() < 0.5 else request)
        if rng.random() < 0.1:
            encoded = byte_noise(rng, encoded)
        requests.append(encoded)
    data = b"".join(requests)
    hang_up_after = None if rng.random() < 0.88 else rng.choice([0.0, 0.01, 0.1, 0.3])
    if hang_up_after is None:
        data += SENTINEL
    if rng.random() < 0.5:
        parts = [data]
    elif len(data) < 300 and rng.random() < 0.2:
        parts = [data[i : i + 1] for i in range(len(data))]
    else:
        parts = _split(rng, data, rng.randrange(2, 9))
    pieces = [(rng.choice([0.0, 0.0, 0.0, 0.001, 0.005]), part) for part in parts]
    return HttpCase(number, data, pieces, hang_up_after, rng.random() < 0.05)


# -- what llhttp reads of a case (the edge parses with the same library) -------------


@dataclass
class ParsedRequests:
    methods: list[bytes] = field(default_factory=list)
    targets: list[bytes] = field(default_factory=list)
    # Requests read to their end (body included) before any error.
    completed: int = 0
    error: str | None = None

    @property
    def ends_with_sentinel(self) -> bool:
        """Whether the sentinel is a request of its own, not swallowed by the one before
        it (into a head cut short, or a body whose length lies)."""
        return self.error is None and self.targets[-1:] == [b"/poll/sentinel"]


class _Heads:
    def __init__(self, parsed: ParsedRequests) -> None:
        self.parsed = parsed
        self.parser: Any = None
        self.url = b""

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.parsed.methods.append(self.parser.get_method())
        self.parsed.targets.append(self.url)

    def on_message_complete(self) -> None:
        self.parsed.completed += 1


def heads_of(data: bytes) -> ParsedRequests:
    """The requests llhttp finds in `data`, up to the first error."""
    parsed = ParsedRequests()
    heads = _Heads(parsed)
    heads.parser = httptools.HttpRequestParser(heads)
    try:
        heads.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        parsed.error = "upgrade"
    except httptools.HttpParserError as error:
        parsed.error = str(error) or type(error).__name__
    return parsed


# -- what the edge answered ----------------------------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\x20-\x7e]*\r\n")
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\x80-\xff\t]*)\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]+)\r\n")


class BadResponse(Exception):
    """Bytes from the edge that are not a well-formed HTTP/1.1 response."""


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def read_responses(data: bytes, head_possible: bool, complete: bool) -> list[Response]:
    """Split what the edge sent into responses, strictly; raises BadResponse.

    With `head_possible` (a HEAD was among the requests), a response with a
    Content-Length may come without its body when another status line or the
    end follows its head. `complete` says the edge closed the connection
    itself, so the last response may not be cut short.
    """
    responses: list[Response] = []
    at = 0
    while at < len(data):
        status_line = _STATUS_LINE.match(data, at)
        if status_line is None:
            if not complete and b"\r\n" not in data[at:]:
                break  # cut short by the client's own hang-up
            raise BadResponse(f"no status line at byte {at}: {data[at : at + 80]!r}")
        status = int(status_line.group(1))
        at = status_line.end()
        headers = []
        while not data.startswith(b"\r\n", at):
            header = _HEADER_LINE.match(data, at)
            if header is None:
                if not complete and b"\r\n" not in data[at:]:
                    return responses
                raise BadResponse(f"bad header line at byte {at}: {data[at : at + 80]!r}")
            headers.append((header.group(1).lower(), header.group(2).rstrip(b" \t")))
            at = header.end()
        at += 2
        names = [name for name, _ in headers]
        if names.count(b"content-length") > 1:
            raise BadResponse(f"{status} with Content-Length twice")
        values = dict(headers)
        if status < 200:
            if b"content-length" in values or b"transfer-encoding" in values:
                raise BadResponse(f"{status} with a body")
            continue
        if b"content-length" in values and b"transfer-encoding" in values:
            raise BadResponse(f"{status} with both Content-Length and Transfer-Encoding")
        if status in (204, 304):
            body = b""
        elif values.get(b"transfer-encoding") == b"chunked":
            body, at = _chunked_body(data, at, complete)
        elif b"content-length" in values:
            length = values[b"content-length"]
            if not length.isdigit():
                raise BadResponse(f"Content-Length {length!r}")
            bodiless = _STATUS_LINE.match(data, at) is not None or (complete and at == len(data))
            if head_possible and bodiless:
                body = b""
            else:
                body = data[at : at + int(length)]
                if len(body) < int(length) and complete:
                    raise BadResponse(f"{status} body cut short: {len(body)} of {length!r}")
                at += int(length)
        else:
            body, at = data[at:], len(data)
        responses.append(Response(status, headers, body))
    return responses


def _chunked_body(data: bytes, at: int, complete: bool) -> tuple[bytes, int]:
    body = b""
    while True:
        size = _CHUNK_SIZE.match(data, at)
        if size is None:
            if complete:
                raise BadResponse(f"bad chunk size line at byte {at}: {data[at : at + 40]!r}")
            return body, len(data)
        length = int(size.group(1), 16)
        at = size.end()
        if length == 0:
            if not data.startswith(b"\r\n", at) and complete:
                raise BadResponse("chunked body without its final CRLF")
            return body, at + 2
        body += data[at : at + length]
        at += length
        if not data.startswith(b"\r\n", at) and (complete or at < len(data)):
            raise BadResponse(f"chunk of {length} bytes not followed by CRLF")
        at += 2


# -- ZeroMQ frames ---------------------------------------------------------------------

MAX_UINT64 = 2**64 - 1


def wrong_value(rng: random.Random, depth: int = 0) -> Any:
    """A msgpack value of some type a field may not expect."""
    choice = rng.randrange(16 if depth < 3 else 12)
    if choice == 0:
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, MAX_UINT64, -(2**63), 2**53 + 1])
    if choice == 1:
        return rng.choice([0.0, -0.0, 1.0, 1.5, math.nan, math.inf, -math.inf, 1e308, 5e-324])
    if choice == 2:
        return rng.choice([True, False])
    if choice == 3:
        return None
    if choice == 4:
        return rng.choice(["", "x", "\0", "é€𝄞", "a" * 2000, "1", "m", "snapshot", "k"])
    if choice == 5:
        return rng.choice([b"", b"x", b"\0", b"\xff" * 3, rng.randbytes(rng.randrange(40))])
    if choice == 6:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(5)))
    if choice == 7:
        return rng.choice([[], [1], [1, 2], [1, 2, 3], [[1, 2]], ["a", "b"], [None, None]])
    if choice == 8:
        return rng.choice([{}, {"a": 1}, {b"k": 1}])
    if choice == 9:
        return rng.randrange(-(2**63), 2**64)
    if choice == 10:
        return rng.choice([[1, 2], (2**63, 0), (0, -1), [1.0, 2], [True, 1], [MAX_UINT64] * 2])
    if choice == 11:
        return msgpack.Timestamp(rng.randrange(2**33))
    if choice == 12:
        return [wrong_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 13:
        return {str(k): wrong_value(rng, depth + 1) for k in range(rng.randrange(4))}
    if choice == 14:
        nested: Any = 1
        # Past Python's recursion limit, within msgpack's nesting limit (1024).
        for _ in range(rng.choice([10, 100, 1000, 1015])):
            nested = [nested]
        return nested
    return rng.randbytes(rng.randrange(0, 200))


def pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    return packed


def raw_msgpack(rng: random.Random) -> bytes:
    """Bytes msgpack's own packer never writes: bad UTF-8 in a str, lengths that lie,
    maps keyed by ints, trailing bytes, reserved type bytes, deep nesting."""
    return rng.choice(
        [
            b"\xc1",
            b"\xa3\xff\xfe\xfd",
            b"\x97\x01\xa3\xff\xfe\xfd",
            b"\xdd\xff\xff\xff\xff",
            b"\xdf\xff\xff\xff\xff",
            b"\xc6\xff\xff\xff\xff",
            b"\x81\x01\x01",
            b"\x81\xc0\x01",
            b"\x81\x91\x01\x01",
            pack({"v": 1}) + b"\x00",
            b"\x91" * 2000 + b"\x01",
            b"\x91" * 1010 + b"\x01",
            b"\x81" * 1000,
            b"\xd4\xff\x00",
            b"\xd6\xff\xff\xff\xff\xff",
            b"",
            rng.randbytes(rng.randrange(1, 64)),
        ]
    )


def publish_fields(rng: random.Random, channels: list[str]) -> list[Any]:
    seq = rng.randrange(10)
    # The tenth field, an event name, only sometimes: as publishers write it.
    named = [rng.choice(["quote", "trade.1", "message", "a b"])] if rng.random() < 0.3 else []
    return [
        wire.VERSION,
        b"fuzz-" + rng.randbytes(4),
        seq,
        rng.choice(channels),
        "text/plain",
        rng.randbytes(rng.randrange(20)),
        rng.randrange(seq + 1),
        rng.choice([None, "key-" + rng.randbytes(3).hex()]),
        rng.random() < 0.5,
        *named,
    ]


def ingress_frames(rng: random.Random, channels: list[str]) -> list[bytes]:
    """What a publisher's DEALER might send: a publish, mistyped, misshapen or not msgpack."""
    choice = rng.random()
    fields = publish_fields(rng, channels)
    if choice < 0.55:
        for _ in range(rng.randrange(1, 3)):
            fields[rng.randrange(len(fields))] = wrong_value(rng)
        frames = [pack(fields)]
    elif choice < 0.65:
        if rng.random() < 0.5:
            del fields[rng.randrange(len(fields))]
        else:
            fields.insert(rng.randrange(len(fields) + 1), wrong_value(rng))
        frames = [pack(fields)]
    elif choice < 0.72:
        fields[0] = rng.choice([0, 2, "1", 1.0, True, None, -1])
        frames = [pack(fields)]
    elif choice < 0.8:
        frames = [pack(fields), rng.choice([b"", b"extra", pack(fields)])]
    elif choice < 0.85:
        frames = [pack(dict(enumerate(fields)))]
    elif choice < 0.95:
        frames = [raw_msgpack(rng)]
    else:
        # Content types that are strings, as the format asks, but odd in a header.
        fields[4] = rng.choice(["", " ", "a\tb", "x" * 5000, "a\r\nX-Forged: 1", "text/\xe9"])
        frames = [pack(fields)]
    return frames


def request_header(rng: random.Random, channels: list[str]) -> dict[str, Any]:
    kind = rng.choice(sorted(wire.REQUEST_KINDS - {wire.PRESENCE}))
    return {
        "v": wire.VERSION,
        "k": kind,
        "r": rng.randrange(1, 1000),
        "c": rng.choice(channels),
        "t": None,
        "create": rng.random() < 0.5,
    }


def control_frames(rng: random.Random, channels: list[str]) -> list[bytes]:
    """What an edge's DEALER might send: requests and presence reports, mistyped."""
    choice = rng.random()
    if choice < 0.35:
        header = request_header(rng, channels)
        key = rng.choice(list(header))
        header[key] = wrong_value(rng)
        frames = [pack(header)]
        if header.get("k") == wire.PUBLISH:
            frames.append(rng.randbytes(10))
    elif choice < 0.6:
        counts: Any = {
            rng.choice(channels): [rng.randrange(5), 1_000_000.0 + rng.randrange(100)]
            for _ in range(rng.randrange(1, 4))
        }
        victim = rng.random()
        if victim < 0.3:
            counts = wrong_value(rng)
        elif victim < 0.55:
            counts[rng.choice(list(counts))] = wrong_value(rng)
        elif victim < 0.7:
            times = [math.nan, math.inf, -math.inf, 1e308, -1.0, 0.0, 2**64 - 1]
            counts[rng.choice(list(counts))] = [rng.randrange(-1, 5), rng.choice(times)]
        else:
            counts[rng.choice([1, -1, 1.5, None, True, b"bz-0", "", "\0", "x" * 1025])] = [1, 1.0]
        frames = [pack({"v": wire.VERSION, "k": wire.PRESENCE, "counts": counts, "full": True})]
    elif choice < 0.75:
        header = request_header(rng, channels)
        frames = [pack(header)] * rng.choice([0, 2, 3])
        if not frames:
            frames = [b""]
    elif choice < 0.9:
        frames = [raw_msgpack(rng)]
    else:
        frames = [pack(wrong_value(rng))]
    return frames


def subscription_frames(rng: random.Random, channels: list[str]) -> list[bytes]:
    """What an edge's SUB might send up to the events XPUB: subscriptions and not."""
    choice = rng.random()
    if choice < 0.4:
        flag = rng.choice([b"\x01", b"\x00"])
        return [flag + rng.choice([wire.topic(rng.choice(channels)), b"\0", b""])]
    if choice < 0.7:
        topic = rng.choice(
            [b"a", b"a\0b", b"\xff\0", b"\0\0", b"x" * 3000 + b"\0", rng.randbytes(8) + b"\0"]
        )
        return [b"\x01" + topic]
    if choice < 0.85:
        return [rng.choice([b"\x02x", b"", b"garbage", rng.randbytes(30)])]
    return [b"\x01" + wire.topic(rng.choice(channels)), rng.randbytes(5)]


def _message_id(rng: random.Random) -> Any:
    return [rng.choice([rng.randrange(2**31), 2**40, -1]), rng.choice([0, 1, rng.randrange(2**63)])]


def event_frames(rng: random.Random, channels: list[str]) -> list[bytes]:
    """What an edge's SUB might receive: events of every kind, mistyped and misshapen.

    Topics are those the edge subscribed to (the NUL of heartbeats, its
    channels'), since a SUB socket drops every other one before the edge sees it.
    """
    channel = rng.choice(channels)
    kind = rng.choice(["m", "s", "d", "h"])
    if kind == "h":
        topic = wire.HEARTBEAT_TOPIC
        header: dict[str, Any] = {"k": "h", "epoch": "fuzz", "time": 1_000_000.0}
    else:
        topic = wire.topic(channel)
        header = {"k": kind}
        if kind == "m":
            header.update(id=_message_id(rng), prev=_message_id(rng), floor=None, t="text/plain")
            if rng.random() < 0.3:
                header["e"] = rng.choice(["quote", "pushserver-missed", "x" * 65])
        elif kind == "s":
            header.update(exists=True, last=_message_id(rng))
    header["v"] = wire.VERSION
    frames = [topic, pack(header)] + ([rng.randbytes(10)] if kind == "m" else [])
    choice = rng.random()
    if choice < 0.45:
        key = rng.choice(list(header))
        header[key] = wrong_value(rng)
        if key in ("id", "prev", "floor", "last") and isinstance(header[key], list):
            header[key] = [v if not isinstance(v, int) else v % 2**31 for v in header[key]]
        frames[1] = pack(header)
    elif choice < 0.6:
        frames[1] = raw_msgpack(rng)
    elif choice < 0.7:
        frames = frames[:1] if rng.random() < 0.5 else [*frames, rng.randbytes(3)]
    elif choice < 0.8:
        frames[0] = rng.choice([wire.HEARTBEAT_TOPIC, topic + b"x", topic[:-1] + b"\xff\0"])
    elif choice < 0.9:
        frames[1] = pack(wrong_value(rng))
    return frames


def reply_frames(rng: random.Random, channels: list[str]) -> list[bytes]:
    """What an edge's DEALER might receive: replies with info and snapshots, mistyped."""
    channel = rng.choice(channels)
    first, second = _message_id(rng), _message_id(rng)
    header: dict[str, Any] = {
        "v": wire.VERSION,
        # Ids the edge has not used: these replies must be decoded and dropped.
        "r": rng.choice([0, -1, 2**63 - 1, 10**9 + rng.randrange(1000)]),
        "found": True,
        "info": {"n": 2, "req": None, "s": 0, "last": second},
        "id": second,
    }
    bodies: list[bytes] = []
    if rng.random() < 0.6:
        header["snap"] = {
            "c": channel,
            "exists": True,
            "last": second,
            "floor": None,
            "limits": [10, 0, 60.0],
            "ids": [(first, None, "text/plain"), (second, first, None, "quote")],
        }
        bodies = [b"one", b"two"]
    choice = rng.random()
    target: dict[str, Any] = header
    if "snap" in header and choice < 0.5:
        target = header["snap"]
        if rng.random() < 0.4:
            entries = target["ids"]
            entry = list(entries[rng.randrange(len(entries))])
            entry[rng.randrange(3)] = wrong_value(rng)
            entries[0] = entry
            target = {}
    elif choice < 0.7:
        target = header["info"]
    if target:
        target[rng.choice(list(target))] = wrong_value(rng)
    frames = [pack(header), *bodies]
    choice = rng.random()
    if choice < 0.1:
        frames[0] = raw_msgpack(rng)
    elif choice < 0.2:
        frames = frames[:1] if len(frames) > 1 else [*frames, b"extra"]
    return frames
