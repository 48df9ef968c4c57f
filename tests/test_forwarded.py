"""Forwarding headers reach Django's passthrough view only from proxies the edge trusts.

A real Django site (`tests.passthrough_site`, under `--allrequests`) logs
the forwarding headers each signal's request carries. Two edges call it:
one trusting loopback (the default `forwarded_allow_ips`), so the tests,
nginx and HAProxy on 127.0.0.1 are its trusted proxies, and one trusting
only a network no test connects from. Then nginx and HAProxy, started from
the configs in ops/, stand in front of the trusting edge, as deployed.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import httpx
import pytest

from tests.client import fresh, poll, publish
from tests.processes import EDGE_LINE, Launcher, eventually, free_port
from tests.test_ops_files import BALANCERS, accepts
from tests.test_passthrough import SECRET, Site, django_settings, passthrough_locations

# No test connects from TEST-NET-1, so to this edge every peer is a stranger.
NOBODY = ["192.0.2.0/24"]

# What a browser may claim about itself, in every header that says so.
CLAIMS = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Real-IP": "203.0.113.8",
    "Forwarded": "for=203.0.113.9;host=evil.example;proto=https",
}


@dataclass
class Edges:
    site: Site
    # The site's own edge (it serves Django too), trusting loopback.
    trusting: str
    # Another edge of the cluster, calling the same Django, trusting nobody here.
    untrusting: str


@pytest.fixture(scope="module")
def edges(module_launcher: Launcher) -> Edges:
    _, endpoints = module_launcher.broker()
    port = free_port()
    passthrough = f"http://127.0.0.1:{port}/passthrough"

    def push_server(**more: object) -> dict[str, object]:
        return {
            "broker": endpoints,
            "passthrough_secret": SECRET,
            "long_poll_timeout": 2,
            "locations": passthrough_locations(passthrough, 5),
            **more,
        }

    folder = module_launcher.folder
    module = module_launcher.settings(push_server(), **django_settings(folder))
    module_launcher.manage(module, "migrate", "--noinput", "--verbosity=0")
    process = module_launcher.run(
        "site", module, "--role=edge", "--allrequests", f"127.0.0.1:{port}"
    )
    process.wait_for(EDGE_LINE)
    site = Site(process, f"http://127.0.0.1:{port}", folder / "events.jsonl", folder / "none")
    other = module_launcher.start(
        "untrusting edge",
        push_server(forwarded_allow_ips=NOBODY),
        "--role=edge",
        "127.0.0.1:0",
        **django_settings(folder),
    )
    untrusting = other.wait_for(EDGE_LINE).group("url")
    return Edges(site, site.base, untrusting)


def forwarded_to_django(site: Site, channel_id: str) -> dict[str, str]:
    """The forwarding headers of the subscribe Django heard for `channel_id`."""
    subscribes = eventually(
        lambda: [e for e in site.logged(channel_id) if e["event"] == "subscribe"],
        10,
        f"a subscribe of {channel_id}",
    )
    forwarded: dict[str, str] = subscribes[0]["forwarded"]
    return forwarded


def poll_once(
    base: str, channel_id: str, headers: dict[str, str], location: str = "updates"
) -> None:
    with httpx.Client(timeout=30) as client:
        response = poll(client, base, channel_id, location=location, headers=headers)
        assert response.status_code == 200, response.text


def test_a_trusted_proxys_forwarding_headers_reach_django_with_the_edge_as_the_last_hop(
    edges: Edges,
) -> None:
    channel = fresh("trusted")
    publish(edges.trusting, channel, "hello")
    poll_once(edges.trusting, channel, CLAIMS)
    # Every claim arrives, so the site logs each header the other tests find absent.
    assert forwarded_to_django(edges.site, channel) == {
        **CLAIMS,
        "X-Forwarded-For": "203.0.113.7, 127.0.0.1",
    }


def test_from_any_other_peer_django_hears_only_what_the_edge_writes(edges: Edges) -> None:
    channel = fresh("untrusted")
    publish(edges.untrusting, channel, "hello")
    poll_once(edges.untrusting, channel, CLAIMS)
    host = edges.untrusting.removeprefix("http://")
    assert forwarded_to_django(edges.site, channel) == {
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Host": host,
        "X-Forwarded-Proto": "http",
    }


def test_without_claims_even_a_trusted_peer_gets_the_edges_own_headers(edges: Edges) -> None:
    channel = fresh("plain")
    publish(edges.trusting, channel, "hello")
    poll_once(edges.trusting, channel, {})
    assert forwarded_to_django(edges.site, channel) == {
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Host": edges.trusting.removeprefix("http://"),
        "X-Forwarded-Proto": "http",
    }


@pytest.mark.parametrize("which", ["trusting", "untrusting"])
def test_a_header_name_with_an_underscore_never_reaches_django(edges: Edges, which: str) -> None:
    # A WSGI server reads X_Forwarded_Port as X-Forwarded-Port.
    base = getattr(edges, which)
    channel = fresh("underscore")
    publish(base, channel, "hello")
    poll_once(base, channel, {"X_Forwarded_Port": "8443", "X_Real_IP": "203.0.113.10"})
    forwarded = forwarded_to_django(edges.site, channel)
    assert "X-Forwarded-Port" not in forwarded and "X-Real-IP" not in forwarded, forwarded


@pytest.mark.parametrize(
    ("which", "subscribes"), [("trusting", 2), ("untrusting", 1)], ids=["trusted", "untrusted"]
)
def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    edges: Edges, which: str, subscribes: int
) -> None:
    # Within the grace, polls of one client are one subscription; the same
    # cookies and user agent from two addresses are two clients.
    base = getattr(edges, which)
    channel = fresh("address")
    publish(base, channel, "hello")
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.1"):
        poll_once(base, channel, {"X-Forwarded-For": address}, location="grace")
    expected = [("subscribe", None)] * subscribes
    eventually(lambda: edges.site.events(channel) == expected, 10, f"{subscribes} subscribes")
    # And no more follow: the grace (5 s) holds every unsubscribe for now.
    assert edges.site.events(channel) == expected


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
def test_through_the_shipped_balancer_configs_a_browsers_claims_never_reach_django(
    edges: Edges, launcher: Launcher, balancer: str
) -> None:
    port = free_port()
    process = BALANCERS[balancer](launcher, [edges.trusting.removeprefix("http://")], port)
    eventually(lambda: accepts(port) or process.popen.poll() is not None, 20, balancer)
    assert process.popen.poll() is None, process.output
    channel = fresh(f"via-{balancer}")
    publish(edges.trusting, channel, "hello")
    lowercase = {name.lower(): value for name, value in CLAIMS.items()}
    for claims in (CLAIMS, lowercase):
        poll_once(f"http://127.0.0.1:{port}", channel, claims)

    def subscribes() -> list[dict[str, str]]:
        return [e["forwarded"] for e in edges.site.logged(channel) if e["event"] == "subscribe"]

    heard = eventually(lambda: len(subscribes()) == 2 and subscribes(), 10, "two subscribes")
    # What the balancer saw of the browser, then what the edge saw of the balancer.
    assert (
        heard
        == [
            {
                "X-Forwarded-For": "127.0.0.1, 127.0.0.1",
                "X-Forwarded-Host": f"127.0.0.1:{port}",
                "X-Forwarded-Proto": "http",
                "X-Real-IP": "127.0.0.1",
            }
        ]
        * 2
    )
    assert process.stop(signal.SIGTERM, 10) is not None
