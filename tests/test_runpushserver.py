"""`manage.py runpushserver`: roles, --allrequests, and stopping cleanly on signals."""

from __future__ import annotations

import gc
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pushserver import rules
from pushserver.allocator import environment_for_malloc
from pushserver.runner import COLLECTOR_THRESHOLDS, settle_collector
from tests.client import Cursor, fresh, in_background, poll, publish, wait_for_subscribers
from tests.processes import ANY_PORT, EDGE_LINE, Launcher, eventually


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_answers_held_polls_with_304_and_stops_the_server(
    launcher: Launcher, sig: int
) -> None:
    process, base = launcher.embedded(long_poll_timeout=60)
    channel = fresh("stopping")
    publish(base, channel, "only")
    with httpx.Client(timeout=30) as client:
        first = poll(client, base, channel)
        waiting = in_background(poll, client, base, channel, Cursor().advanced(first))
        wait_for_subscribers(base, channel, 1)
        assert process.stop(sig, timeout=10) == 0
        response = waiting.result(5)
    assert response.status_code == 304
    assert response.headers["Etag"] == first.headers["Etag"]


def test_allrequests_serves_django_beside_the_push_locations(launcher: Launcher) -> None:
    process = launcher.start(
        "allrequests",
        {"broker": dict(ANY_PORT)},
        "--allrequests",
        "127.0.0.1:0",
        ROOT_URLCONF="tests.allrequests_urls",
    )
    base = process.wait_for(EDGE_LINE).group("url")
    assert httpx.get(base + "/hello/").text == "hello from django"
    with_cookie = httpx.get(base + "/cookie/", timeout=10)
    assert with_cookie.text == "cookie set"
    assert with_cookie.cookies["flavour"] == "oatmeal"
    channel = fresh("beside-django")
    publish(base, channel, "pushed")
    with httpx.Client(timeout=30) as client:
        # Views stuck in Django do not stall the event loop serving pushes.
        stuck = [in_background(httpx.get, base + "/slow/", timeout=30) for _ in range(4)]
        assert poll(client, base + "", channel).text == "pushed"
        assert not any(request.done() for request in stuck)
        assert client.get(base + "/release/").text == "released"
    assert [request.result(10).text for request in stuck] == ["slow view done"] * 4
    assert httpx.get(base + "/nowhere/").status_code == 404


def test_without_allrequests_other_paths_get_404_with_a_reason(launcher: Launcher) -> None:
    _, base = launcher.embedded()
    response = httpx.get(base + "/hello/")
    assert response.status_code == 404
    assert "no push location" in response.text


def test_broker_role_refuses_an_edge_address(launcher: Launcher) -> None:
    process = launcher.start("broker", {"broker": dict(ANY_PORT)}, "--role=broker", "8011")
    assert process.popen.wait(30) != 0
    assert "for edges" in process.output


def test_invalid_settings_fail_at_startup_with_a_check_id(launcher: Launcher) -> None:
    process = launcher.start("bad", {"store": {"type": "memory", "max_messages": -3}})
    assert process.popen.wait(30) != 0
    assert rules.MAX_MESSAGES.id in process.output


def test_an_edge_alone_and_a_broker_alone_deliver_together(launcher: Launcher) -> None:
    _, endpoints = launcher.broker()
    _, base = launcher.edge(endpoints)
    channel = fresh("roles")
    publish(base, channel, "through the broker")
    with httpx.Client(timeout=30) as client:
        assert poll(client, base, channel).text == "through the broker"


def test_manage_py_help_lists_the_options() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "help",
            "runpushserver",
            "--settings=tests.django_settings",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--role", "--allrequests", "--ipv6", "addrport"):
        assert option in result.stdout


def test_workers_share_one_port_and_each_takes_connections(launcher: Launcher) -> None:
    _, endpoints = launcher.broker()
    process = launcher.start(
        "workers", {"broker": dict(endpoints)}, "--role=edge", "--workers=2", "127.0.0.1:0"
    )
    base = process.wait_for(EDGE_LINE).group("url")
    channel = fresh("workers")
    publish(base, channel, "from either worker")
    pids: set[str] = set()

    def both_answered() -> bool:
        # A new connection each time: the kernel picks the worker per connection.
        response = httpx.get(base + "/pushserver/metrics", headers={"Connection": "close"})
        pids.update(re.findall(r'pushserver_edge_process\{pid="(\d+)"\}', response.text))
        with httpx.Client(timeout=10) as client:
            assert poll(client, base, channel).text == "from either worker"
        return len(pids) == 2

    eventually(both_answered, 30, "both workers to answer")
    assert str(process.popen.pid) not in pids
    assert process.stop(signal.SIGTERM, timeout=15) == 0


def test_workers_are_refused_without_the_edge_role(launcher: Launcher) -> None:
    process = launcher.start("workers", {"broker": dict(ANY_PORT)}, "--workers=2")
    assert process.popen.wait(30) != 0
    assert "--workers is for --role=edge" in process.output


def allocator_of(pid: int) -> str | None:
    for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = variable.partition(b"=")
        if name == b"PYTHONMALLOC":
            return value.decode()
    return None


def test_the_server_runs_on_malloc_unless_pythonmalloc_names_another_allocator(
    launcher: Launcher,
) -> None:
    module = launcher.settings({"broker": dict(ANY_PORT)})
    command = [sys.executable, "-m", "django", "runpushserver", "127.0.0.1:0"]
    chosen = launcher.spawn("default", command, launcher.environment(module))
    kept = launcher.spawn(
        "kept", command, {**launcher.environment(module), "PYTHONMALLOC": "pymalloc"}
    )
    for process in (chosen, kept):
        process.wait_for(EDGE_LINE)
    assert allocator_of(chosen.popen.pid) == "malloc"
    assert allocator_of(kept.popen.pid) == "pymalloc"
    # Started again before it wrote a line: the checks and the banner appear once.
    assert chosen.output.count("Performing system checks") == 1


def test_the_command_is_run_again_on_malloc_only_where_it_can_be_trimmed_and_is_not_chosen() -> (
    None
):
    environ = {"DJANGO_SETTINGS_MODULE": "site.settings"}
    assert environment_for_malloc(environ, trims=True, ignores_environment=False) == {
        **environ,
        "PYTHONMALLOC": "malloc",
    }
    # The operator's choice, and the second start, which finds its own choice there.
    for allocator in ("pymalloc", "malloc", "malloc_debug"):
        chosen = {**environ, "PYTHONMALLOC": allocator}
        assert environment_for_malloc(chosen, trims=True, ignores_environment=False) is None
    # No malloc_trim (musl, macOS): nothing would give the pages back.
    assert environment_for_malloc(environ, trims=False, ignores_environment=False) is None
    # Under -E or -I the variable would be ignored, and the command started in vain.
    assert environment_for_malloc(environ, trims=True, ignores_environment=True) is None


def test_serving_leaves_what_startup_made_out_of_collections_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        held = [{"made": "at start-up"} for _ in range(1000)]
        settle_collector()
        assert gc.get_threshold() == COLLECTOR_THRESHOLDS
        assert COLLECTOR_THRESHOLDS[0] > before[0]
        # Frozen: no later collection walks what start-up made and kept.
        assert gc.get_freeze_count() >= len(held)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
