"""A path names one location, the same one to the balancer and to the edge.

Found by an attacker: `POST /send-update/..%2fupdates%2fx` through the
nginx config was published, because nginx decoded and resolved the path to
pick `/updates/` and the edge routed the raw path to its publisher, which
trusted nginx's loopback address; and with a site `location /` turned on,
a browser's POST to `/passthrough` fired `channel_subscribe`.

Here every trick is sent byte for byte (raw sockets: HTTP clients resolve
dot segments themselves) with every method, through real nginx and HAProxy
started from the files in ops/, as shipped and with the site's `location
/` (backend) they suggest, in front of a real edge that is also the Django
site (`--allrequests`, the passthrough view, `INTERNAL_IPS = ["127.0.0.1"]`
as the README advises). What is judged is what the edge and Django did: no
message published, no channel created or deleted, no channel info or
metrics answered, no signal fired. Then the rule itself, straight to an
edge, and the trust a proxy's report of its client gets.
"""

from __future__ import annotations

import re
import signal
import socket
import textwrap
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import zmq

from broker import wire
from edge import paths
from edge.protocol import PASSTHROUGH_CHANNEL, PASSTHROUGH_SUBSCRIBE
from tests.client import fresh, info, path, poll, publish
from tests.processes import EDGE_LINE, Launcher, Process, eventually, free_port
from tests.test_ops_files import (
    accepts,
    haproxy_for,
    nginx_command,
    nginx_for,
    program,
)
from tests.test_passthrough import Site, django_settings

METHODS = ("GET", "POST", "PUT", "DELETE")
PUBLISHER = re.compile(r"/send-update/([^/]+)$")
# What only the publisher location's channel info and the metrics answer with.
INFO_MARKERS = (b"queued messages", b"last message id", b"last_message_id", b"subscribers")
METRICS_MARKER = b"pushserver_edge_"

# {c}: the victim channel. Each trick aims at the publisher location (or below, the
# metrics and the passthrough view) by a path some normaliser reads another way.
PUBLISHER_TRICKS = (
    "/send-update/..%2fupdates%2f{c}",
    "/send-update/..%2Fupdates%2F{c}",
    "/send-update/%2e%2e%2fupdates%2f{c}",
    "/send-update/%2E%2E%2Fupdates%2F{c}",
    "/send-update/.%2e/updates/{c}",
    "/send-update/../updates/{c}",
    "/send-update/./{c}",
    "/send-update//{c}",
    "//send-update/{c}",
    "/./send-update/{c}",
    "/updates/../send-update/{c}",
    "/updates/..%2fsend-update%2f{c}",
    "/updates/%2e%2e/send-update/{c}",
    "/updates/%2E%2E%2Fsend-update%2F{c}",
    "/updates/./../send-update/{c}",
    "/updates//../send-update/{c}",
    "/updates/{c}/..%2f..%2fsend-update%2f{c}",
    "/updates%2f..%2fsend-update%2f{c}",
    "/updates/x;/../../send-update/{c}",
    "/updates/..;/send-update/{c}",
    "/updates;/../send-update/{c}",
    "/%73end-update/{c}",
    "/%73%65%6e%64-update/{c}",
    "/send%2Dupdate/{c}",
    "/send-update%2F{c}",
    "/SEND-UPDATE/{c}",
    "/Send-Update/{c}",
    "/send-update;x/{c}",
    "/send-update/{c};x",
    "/send-update\\{c}",
    "/updates\\..\\send-update\\{c}",
    "/updates/..%5csend-update%5c{c}",
    "/send-update/{c}%00",
    "/updates/%00/../../send-update/{c}",
    "/send-update/{c}\x00",
    "/updates/\x00/../../send-update/{c}",
    "/send-update/%252e%252e%252fupdates%252f{c}",
    "/updates/%252e%252e%252fsend-update%252f{c}",
    "/send-update/{c}%23",
    "/send-update/{c}?x=/../../updates/x",
    "http://127.0.0.1/send-update/{c}",
)
METRICS_TRICKS = (
    "/pushserver/metrics",
    "/updates/..%2fpushserver%2fmetrics",
    "/updates/../pushserver/metrics",
    "/updates/%2e%2e/pushserver/metrics",
    "//pushserver/metrics",
    "/pushserver//metrics",
    "/pushserver/./metrics",
    "/%70ushserver/metrics",
    "/pushserver%2fmetrics",
    "/PUSHSERVER/metrics",
    "/pushserver/metrics;x",
    "/pushserver/metrics%00",
    "/pushserver\\metrics",
)
PASSTHROUGH_TRICKS = (
    "/passthrough",
    "/passthrough/",
    "//passthrough",
    "/./passthrough",
    "/x/../passthrough",
    "/updates/../passthrough",
    "/updates/..%2fpassthrough",
    "/updates/%2e%2e/passthrough",
    "/%70assthrough",
    "/passthrough%2f",
    "/PASSTHROUGH",
    "/Passthrough/",
    "/passthrough;x",
    "/passthrough\\",
)


# -- the rule itself, without sockets --------------------------------------------


@pytest.mark.parametrize(
    "accepted",
    [
        "/updates/news",
        "/updates/news%20feed",
        "/updates/a%2Fb",  # a channel id holding a slash
        "/updates/a%2f%2fb",
        "/updates/a,b%2Cc",  # a multi-channel URL: ids encoded, joined by a literal ","
        "/updates/v1..2",
        "/updates/.hidden",
        "/updates/%C3%A9t%C3%A9",
        "/updates/50%25",
        "/passthrough/",
        "/",
        "/.well-known/x",
    ],
)
def test_a_canonical_path_is_routed(accepted: str) -> None:
    assert paths.path_problem(accepted) is None


@pytest.mark.parametrize(
    ("refused", "why"),
    [
        ("*", paths.NOT_A_PATH),
        ("http://edge/updates/x", paths.NOT_A_PATH),
        ("/send-update/..%2fupdates%2fx", paths.DOT_SEGMENT),
        ("/updates/a%2F..%2Fb", paths.DOT_SEGMENT),
        ("/updates/../send-update/x", paths.DOT_SEGMENT),
        ("/updates/./x", paths.DOT_SEGMENT),
        ("/updates/x/.", paths.DOT_SEGMENT),
        ("/updates/%2e%2e/x", paths.ENCODED_UNRESERVED),
        ("/updates/.%2E/x", paths.ENCODED_UNRESERVED),
        ("/%73end-update/x", paths.ENCODED_UNRESERVED),
        ("/updates/%7Euser", paths.ENCODED_UNRESERVED),
        ("//send-update/x", paths.EMPTY_SEGMENT),
        ("/send-update//x", paths.EMPTY_SEGMENT),
        ("/send-update\\x", paths.BACKSLASH),
        ("/send-update/%5cx", paths.BACKSLASH),
        ("/send-update/x%00", paths.NUL),
        ("/send-update/x%", paths.BAD_ESCAPE),
        ("/send-update/x%zz", paths.BAD_ESCAPE),
    ],
)
def test_a_path_a_normaliser_would_change_is_refused_with_the_reason(
    refused: str, why: str
) -> None:
    assert paths.path_problem(refused) == why


def test_a_push_locations_literal_part_may_not_be_percent_encoded() -> None:
    assert paths.outside_group_problem("/send-update/a%2Fb", "a%2Fb") is None
    assert paths.outside_group_problem("/send%2Bupdate/a", "a") == paths.ENCODED_PREFIX


# -- straight to an edge ----------------------------------------------------------


def send(base: str, method: str, target: str, body: bytes = b"", *headers: str) -> Response:
    """One request written byte for byte on its own connection, and its whole answer."""
    host, _, port = base.removeprefix("http://").rstrip("/").rpartition(":")
    head = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
        "",
        "",
    ]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("\r\n".join(head).encode("latin-1") + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1."), (method, target, answer[:200])
    return Response(method, target, int(status_line.split()[1]), rest)


@dataclass(frozen=True)
class Response:
    method: str
    target: str
    status: int
    # Everything after the status line: headers and body.
    rest: bytes

    @property
    def body(self) -> bytes:
        return self.rest.partition(b"\r\n\r\n")[2]


def known_to_the_broker(control: str, channel_id: str) -> bool:
    """Whether the broker has the channel, asked on its control socket as an edge asks
    (HTTP cannot ask for an id the edges refuse to route)."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(control)
        dealer.send_multipart(wire.encode_request(wire.Request(wire.INFO, 1, channel_id)))
        assert dealer.poll(10_000), "the broker did not answer"
        return wire.decode_reply(dealer.recv_multipart()).found
    finally:
        dealer.close()
        context.term()


@dataclass(frozen=True)
class Cluster:
    edge: str
    control: str


@pytest.fixture(scope="module")
def cluster(module_launcher: Launcher) -> Cluster:
    _, endpoints = module_launcher.broker()
    _, base = module_launcher.edge(
        endpoints,
        locations=(
            {"type": "subscriber", "url": r"/updates/([^/]+)", "polling": "interval"},
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
    )
    return Cluster(base.rstrip("/"), endpoints["control"])


@pytest.fixture(scope="module")
def edge(cluster: Cluster) -> str:
    return cluster.edge


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/send-update/..%2fupdates%2f{c}", paths.DOT_SEGMENT),
        ("/updates/%2E%2E%2Fsend-update%2F{c}", paths.ENCODED_UNRESERVED),
        ("//send-update/{c}", paths.EMPTY_SEGMENT),
        ("/%73end-update/{c}", paths.ENCODED_UNRESERVED),
        ("/send-update\\{c}", paths.BACKSLASH),
        ("/send-update/{c}%00", paths.NUL),
        ("http://127.0.0.1/send-update/{c}", paths.NOT_A_PATH),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_straight_to_an_edge_a_trick_gets_400_with_the_reason_and_does_nothing(
    cluster: Cluster, target: str, why: str, method: str
) -> None:
    edge = cluster.edge
    victim = fresh("victim")
    publish(edge, victim, b"only")
    target = target.format(c=victim)
    answer = send(edge, method, target, b"forged")
    assert (answer.status, answer.body) == (400, f"malformed request: {why}\n".encode())
    assert (info(edge, victim) or {}).get("messages") == 1
    for channel_id in candidates(target, victim) - {victim}:
        assert not known_to_the_broker(cluster.control, channel_id), channel_id


@pytest.mark.parametrize(
    "channel_id", ["a/b", "a//b", "news feed", "50%", "v1..2", ".hidden", "été", "a,b", "x;y"]
)
def test_every_channel_id_channel_url_encodes_still_works_unless_a_part_is_a_dot(
    edge: str, channel_id: str
) -> None:
    publish(edge, channel_id, b"kept")
    with httpx.Client(timeout=10) as client:
        response = poll(client, edge, channel_id)
    assert (response.status_code, response.content) == (200, b"kept")
    for dotted in ("..", ".", "a/../b", "./a"):
        answer = send(edge, "GET", path("updates", dotted))
        assert answer.status == 400, (dotted, answer)


# -- whose address is judged ------------------------------------------------------

# No test connects from TEST-NET-3: a client "from the world" as a proxy reports it.
WORLD = "203.0.113.7"


@pytest.mark.parametrize(
    "report",
    [
        f"X-Forwarded-For: {WORLD}",
        f"X-Forwarded-For: {WORLD}, 127.0.0.1",
        f"X-Real-IP: {WORLD}",
        f'Forwarded: for="{WORLD}:4711";proto=https',
        "X-Forwarded-For: not-an-address",
        "X-Forwarded-For: ",
    ],
    ids=["xff", "xff-chain", "x-real-ip", "forwarded", "garbage", "empty"],
)
def test_behind_a_trusted_proxy_the_publisher_and_metrics_judge_the_client_it_reports(
    edge: str, report: str
) -> None:
    # The test connects from loopback: to the edge, a trusted proxy (forwarded_allow_ips).
    victim = fresh("judged")
    publish(edge, victim, b"only")
    for method in METHODS:
        answer = send(edge, method, path("send-update", victim), b"forged", report)
        assert answer.status == 403, (method, answer)
    metrics = send(edge, "GET", "/pushserver/metrics", b"", report)
    assert metrics.status == 403 and METRICS_MARKER not in metrics.rest
    assert (info(edge, victim) or {}).get("messages") == 1
    # The proxy's own request (no report) is judged by the proxy's address, and a
    # client it reports on loopback by that address.
    assert send(edge, "GET", "/pushserver/metrics").status == 200
    local = send(edge, "GET", path("send-update", victim), b"", "X-Forwarded-For: 127.0.0.1")
    assert local.status == 200


def test_a_peer_that_is_not_a_trusted_proxy_is_judged_by_its_own_address(
    launcher: Launcher,
) -> None:
    # Trusting no proxy, the edge ignores what a peer claims about a client.
    _, base = launcher.embedded(forwarded_allow_ips=[])
    channel = fresh("claims")
    answer = send(base.rstrip("/"), "PUT", path("send-update", channel), b"", "X-Real-IP: 1.2.3.4")
    assert answer.status == 200
    assert info(base, channel) is not None


# -- through the balancers --------------------------------------------------------


def commented_block(text: str, first: str, last: str) -> str:
    """The commented-out lines from one starting with `first` to the next one starting
    with `last`, uncommented and dedented: a config's suggestion as a site applies it."""
    lines = [line.strip()[1:] for line in text.splitlines() if line.strip().startswith("#")]
    start = next(n for n, line in enumerate(lines) if line.strip().startswith(first))
    end = next(n for n in range(start, len(lines)) if lines[n].strip().startswith(last))
    return textwrap.dedent("\n".join(lines[start : end + 1]))


def nginx_with_site(edges: list[str], port: int, site: str) -> str:
    """The shipped nginx config with the site's `location /` its comments suggest."""
    text = nginx_for(edges, port)
    upstream = commented_block(text, "upstream django {", "upstream django {")
    upstream = re.sub(r"server \S+;", f"server {site};", upstream)
    location = commented_block(text, "location / {", "}")
    assert "proxy_pass http://django;" in location
    edges_upstream = "    upstream pushserver_edges {"
    text = text.replace(edges_upstream, f"    {upstream}\n\n{edges_upstream}", 1)
    stub = re.compile(r"\n(\s*)location / \{\s*return 404;\s*\}")
    assert stub.search(text)
    return stub.sub(lambda m: "\n" + textwrap.indent(location, m.group(1)), text, count=1)


def haproxy_with_site(edges: list[str], port: int, site: str) -> str:
    """The shipped HAProxy config with the site's backend its comments suggest: the
    `http-request return` line deleted, `default_backend django`, the backend added."""
    text = haproxy_for(edges, port)
    backend = commented_block(text, "backend django", "server django1 ")
    backend = re.sub(r"server django1 \S+", f"server django1 {site}", backend)
    text, removed = re.subn(r"\n\s*http-request return status 404 [^\n]*", "", text, count=1)
    assert removed == 1
    frontend_end = text.index("\nbackend pushserver_edges")
    text = text[:frontend_end] + "\n    default_backend django\n" + text[frontend_end:]
    return f"{text}\n{backend}\n"


def start_config(launcher: Launcher, balancer: str, config: str) -> Process:
    if balancer == "nginx":
        prefix = launcher.folder / "nginx"
        prefix.mkdir()
        (prefix / "pushserver.conf").write_text(config)
        command = nginx_command(prefix / "pushserver.conf", prefix, directives="daemon off;")
    else:
        (launcher.folder / "haproxy.cfg").write_text(config)
        command = [program("haproxy"), "-db", "-f", str(launcher.folder / "haproxy.cfg")]
    return launcher.spawn(balancer, command)


CONFIGS: dict[tuple[str, str], Callable[[list[str], int, str], str]] = {
    ("nginx", "shipped"): lambda edges, port, site: nginx_for(edges, port),
    ("nginx", "with-site"): nginx_with_site,
    ("haproxy", "shipped"): lambda edges, port, site: haproxy_for(edges, port),
    ("haproxy", "with-site"): haproxy_with_site,
}


@dataclass(frozen=True)
class SiteEdge:
    site: Site
    control: str

    @property
    def base(self) -> str:
        return self.site.base

    def logged(self, channel_id: str) -> list[dict[str, object]]:
        return self.site.logged(channel_id)

    def events(self, channel_id: str) -> list[tuple[str, str | None]]:
        return self.site.events(channel_id)


@pytest.fixture(scope="module")
def site(module_launcher: Launcher) -> SiteEdge:
    """Django (the passthrough view, receivers that log) served by an edge of the cluster
    (`--allrequests`), so one process answers the push locations and the site alike.
    INTERNAL_IPS holds loopback, as the README advises; no passthrough secret is set."""
    _, endpoints = module_launcher.broker()
    port = free_port()
    folder = module_launcher.folder
    push_server = {
        "broker": endpoints,
        "locations": (
            {"type": "subscriber", "url": r"/updates/([^/]+)", "polling": "interval"},
            {"type": "publisher", "url": r"/send-update/([^/]+)"},
        ),
    }
    settings = {**django_settings(folder), "INTERNAL_IPS": ["127.0.0.1"]}
    module = module_launcher.settings(push_server, **settings)
    module_launcher.manage(module, "migrate", "--noinput", "--verbosity=0")
    process = module_launcher.run(
        "site", module, "--role=edge", "--allrequests", f"127.0.0.1:{port}"
    )
    process.wait_for(EDGE_LINE)
    site = Site(process, f"http://127.0.0.1:{port}", folder / "events.jsonl", folder / "none")
    return SiteEdge(site, endpoints["control"])


def subscribe_form(channel_id: str) -> bytes:
    return urllib.parse.urlencode(
        {PASSTHROUGH_CHANNEL: channel_id, PASSTHROUGH_SUBSCRIBE: "1"}
    ).encode()


FORM = "Content-Type: application/x-www-form-urlencoded"


def test_the_passthrough_admits_a_direct_internal_caller_but_not_one_a_proxy_forwarded(
    site: SiteEdge,
) -> None:
    # The control the balancer tests below rely on: the view logs what it admits.
    direct = fresh("direct")
    assert send(site.base, "POST", "/passthrough", subscribe_form(direct), FORM).status == 200
    eventually(lambda: site.events(direct) == [("subscribe", None)], 10, "the direct subscribe")
    # From loopback too, but a proxy's X-Forwarded-For says whom it relays.
    relayed = fresh("relayed")
    answer = send(
        site.base,
        "POST",
        "/passthrough",
        subscribe_form(relayed),
        FORM,
        "X-Forwarded-For: 127.0.0.1",
    )
    assert answer.status == 403 and b"INTERNAL_IPS" in answer.body
    assert site.logged(relayed) == []


@dataclass
class Front:
    base: str
    process: Process


@pytest.fixture(params=sorted(CONFIGS), ids=lambda key: "-".join(key))
def front(request: pytest.FixtureRequest, site: SiteEdge, launcher: Launcher) -> Iterator[Front]:
    balancer, _ = request.param
    port = free_port()
    edge_host = site.base.removeprefix("http://")
    config = CONFIGS[request.param]([edge_host], port, edge_host)
    process = start_config(launcher, balancer, config)
    eventually(lambda: accepts(port) or process.popen.poll() is not None, 20, balancer)
    assert process.popen.poll() is None, process.output
    yield Front(f"http://127.0.0.1:{port}", process)
    assert process.stop(signal.SIGTERM, 10) is not None


def candidates(target: str, victim: str) -> set[str]:
    """Every channel a trick could have touched, had a publisher location taken it: the
    victim, and the id the edge's publisher pattern would read from the raw path."""
    found = {victim}
    raw = target.partition("?")[0]
    for form in (raw, raw.replace("\\", "/")):
        match = PUBLISHER.match(form)
        if match:
            found.add(urllib.parse.unquote(match.group(1)))
    # An id no channel can have (NUL, say) names none.
    return {channel_id for channel_id in found if wire.channel_id_problem(channel_id) is None}


def test_through_the_balancer_no_trick_reaches_the_publisher(front: Front, site: SiteEdge) -> None:
    edge = site.base
    victim = fresh("victim")
    publish(edge, victim, b"only")
    touched = set()
    for trick in PUBLISHER_TRICKS:
        target = trick.format(c=victim)
        touched |= candidates(target, victim)
        for method in METHODS:
            answer = send(front.base, method, target, b"forged", "Content-Type: text/plain")
            assert answer.status not in (201, 202), answer
            assert not any(marker in answer.rest for marker in INFO_MARKERS), answer
    # Nothing published, created or deleted, on the victim or on any channel a trick named.
    assert (info(edge, victim) or {}).get("messages") == 1
    for channel_id in touched - {victim}:
        assert not known_to_the_broker(site.control, channel_id), channel_id
    # The subscriber location is still served through it.
    with httpx.Client(timeout=10) as client:
        assert poll(client, front.base, victim).content == b"only"


def test_through_the_balancer_no_trick_shows_the_metrics(front: Front) -> None:
    for target in METRICS_TRICKS:
        for method in METHODS:
            answer = send(front.base, method, target)
            assert answer.status != 200 and METRICS_MARKER not in answer.rest, answer


def test_through_the_balancer_no_browser_calls_the_passthrough(
    front: Front, site: SiteEdge
) -> None:
    probes = []
    for n, target in enumerate(PASSTHROUGH_TRICKS):
        for method in METHODS:
            probe = fresh(f"probe{n}")
            probes.append(probe)
            answer = send(front.base, method, target, subscribe_form(probe), FORM)
            # Refused by the balancer itself (or by the edge's path rule behind it),
            # not left to the view's own check.
            assert answer.status in (400, 404), answer
    # The view logs a signal before it answers; a moment more for a slow write.
    control = fresh("control")
    assert send(site.base, "POST", "/passthrough", subscribe_form(control), FORM).status == 200
    eventually(lambda: site.logged(control), 10, "the control subscribe")
    assert [probe for probe in probes if site.logged(probe)] == []
