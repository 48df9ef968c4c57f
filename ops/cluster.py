"""A local cluster on loopback: one broker, N edges and a load balancer in front.

    python -m ops.cluster --edges 3 [--balancer nginx|haproxy|none] [--workers N] [--curve]
                          [--standby]

prints where each part listens and stops them all on Ctrl-C. The tests
and the benchmarks drive the same `Cluster` to kill, stop and restart its
parts: every part keeps its ports across restarts, so clients and the
balancer find it again. The balancer's configuration is the one under
ops/nginx or ops/haproxy, rewritten only where it names ports.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from broker.curve import create_key_files
from ops.launch import BROKER_LINE, EDGE_LINE, ROOT, Launcher, Process, eventually, free_port

NGINX_CONFIG = ROOT / "ops" / "nginx" / "pushserver.conf"
HAPROXY_CONFIG = ROOT / "ops" / "haproxy" / "haproxy.cfg"
BALANCERS = ("nginx", "haproxy")


def nginx_config(template: str, port: int, edges: list[int]) -> str:
    """The nginx configuration with this cluster's edges and listening port.

    Each edge gets the options the template's first `server` line has.
    """
    server_line = re.compile(r"(?m)^(\s*)server\s+\S+([^;]*);\s*\n")

    def upstream(match: re.Match[str]) -> str:
        first = server_line.search(match.group(2))
        if first is None:
            raise ValueError("the nginx upstream `pushserver_edges` has no `server` line")
        indent, options = first.groups()
        servers = "".join(f"{indent}server 127.0.0.1:{edge}{options};\n" for edge in edges)
        body = server_line.sub("", match.group(2))
        return f"{match.group(1)}\n{servers}{body.lstrip(chr(10))}{match.group(3)}"

    rewritten, count = re.subn(
        r"(upstream\s+pushserver_edges\s*\{)(.*?)(\})", upstream, template, flags=re.S
    )
    if count != 1:
        raise ValueError("the nginx config must have one `upstream pushserver_edges` block")
    return re.sub(r"(?m)^(\s*listen\s+)[^;]+;", rf"\g<1>127.0.0.1:{port};", rewritten)


def haproxy_config(template: str, port: int, edges: list[int]) -> str:
    """The HAProxy configuration with this cluster's edges and listening port.

    The backend's `server` lines are replaced where the first one stood, each
    edge with that line's options.
    """
    lines = []
    in_backend = False
    placed = False
    for line in template.splitlines():
        stripped = line.strip()
        if re.match(r"^(frontend|backend|listen|defaults|global)\b", stripped):
            in_backend = stripped.split()[:2] == ["backend", "pushserver_edges"]
        elif in_backend and stripped.startswith("server "):
            if not placed:
                indent = line[: len(line) - len(line.lstrip())]
                options = " ".join(stripped.split()[3:])
                lines += [
                    f"{indent}server edge{n} 127.0.0.1:{edge} {options}".rstrip()
                    for n, edge in enumerate(edges, 1)
                ]
                placed = True
            continue
        lines.append(re.sub(r"^(\s*bind\s+)\S+:\d+", rf"\g<1>127.0.0.1:{port}", line))
    if not placed:
        raise ValueError("the HAProxy backend `pushserver_edges` has no `server` line")
    return "\n".join(lines) + "\n"


class Cluster:
    """A broker, `edges` edges and optionally a balancer, all on loopback ports of their own.

    `curve`: True puts CURVE on every ZeroMQ link with keys made for the cluster,
    a `PUSH_SERVER['curve']` dict with those keys. `standby`: a standby pair, the
    primary (`broker`) and a backup (`backup`), each with a history file of its own
    in `folder` (a "host" of its own), `failover_timeout` seconds apart.
    """

    def __init__(
        self,
        folder: Path,
        edges: int = 3,
        balancer: str | None = "nginx",
        workers: int = 1,
        launcher: Launcher | None = None,
        curve: bool | dict[str, str] = False,
        standby: bool = False,
        failover_timeout: float = 2.0,
        **push_server: Any,
    ) -> None:
        if balancer is not None and balancer not in BALANCERS:
            raise ValueError(f"balancer must be one of {BALANCERS} or None, got {balancer!r}")
        self.folder = folder
        self.launcher = launcher or Launcher(folder)
        self.balancer = balancer
        self.workers = workers
        self.endpoints = {
            name: f"tcp://127.0.0.1:{free_port()}" for name in ("ingress", "events", "control")
        }
        # On a port of its own, so it is found again after a broker restart.
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        broker = {**self.endpoints, "metrics": self.metrics_url.split("/")[2]}
        self.push_server = {"broker": broker, **push_server}
        if curve is True:
            # Every part on this machine holds every key; the settings name them all.
            layout, _ = create_key_files(folder / "keys")
            curve = layout.setting()
        if curve:
            self.push_server["curve"] = curve
        self.backup_metrics_url: str | None = None
        if standby:
            self.backup_metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
            self.push_server.setdefault("history_file", str(folder / "primary.history"))
            addresses = [f"tcp://127.0.0.1:{free_port()}" for _ in range(5)]
            self.push_server["standby"] = {
                **dict(zip(self.endpoints, addresses[:3], strict=True)),
                "metrics": self.backup_metrics_url.split("/")[2],
                "peer": addresses[3:],
                "failover_timeout": failover_timeout,
                "history_file": str(folder / "backup.history"),
            }
        self.backup: Process | None = None
        self.edge_ports = [free_port() for _ in range(edges)]
        self.port = free_port() if balancer else None
        self.broker: Process | None = None
        self.edges: list[Process | None] = [None] * edges
        self.balancer_process: Process | None = None

    @property
    def edge_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.edge_ports]

    @property
    def url(self) -> str:
        """Where clients connect: the balancer, or the first edge without one."""
        return f"http://127.0.0.1:{self.port}" if self.port else self.edge_urls[0]

    def start(self) -> Cluster:
        self.start_broker()
        if "standby" in self.push_server:
            self.start_backup()
        for index in range(len(self.edge_ports)):
            self.start_edge(index)
        if self.balancer == "nginx":
            self._start_nginx()
        elif self.balancer == "haproxy":
            self._start_haproxy()
        return self

    def start_broker(self) -> Process:
        self.broker = self.launcher.start("broker", self.push_server, "--role=broker")
        self.broker.wait_for(BROKER_LINE)
        return self.broker

    def start_backup(self) -> Process:
        """The standby pair's backup (`runpushserver --role=broker --standby`)."""
        self.backup = self.launcher.start("backup", self.push_server, "--role=broker", "--standby")
        self.backup.wait_for(BROKER_LINE)
        return self.backup

    def stop_backup(self, sig: int = signal.SIGTERM) -> None:
        assert self.backup is not None, "the backup is not running"
        if sig == signal.SIGKILL:
            self.backup.kill()
        else:
            self.backup.stop(sig)
        self.backup = None

    def start_edge(self, index: int) -> Process:
        args = ["--role=edge", f"127.0.0.1:{self.edge_ports[index]}"]
        if self.workers > 1:
            args.append(f"--workers={self.workers}")
        edge = self.launcher.start(f"edge{index + 1}", self.push_server, *args)
        edge.wait_for(EDGE_LINE)
        self.edges[index] = edge
        return edge

    def stop_edge(self, index: int, sig: int = signal.SIGTERM) -> int:
        edge = self.edges[index]
        assert edge is not None, f"edge {index + 1} is not running"
        self.edges[index] = None
        if sig == signal.SIGKILL:
            edge.kill()
            return -signal.SIGKILL
        return edge.stop(sig)

    def stop_broker(self, sig: int = signal.SIGTERM) -> None:
        assert self.broker is not None, "the broker is not running"
        if sig == signal.SIGKILL:
            self.broker.kill()
        else:
            self.broker.stop(sig)
        self.broker = None

    def _start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        prefix = self.folder / "nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        assert self.port is not None
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(NGINX_CONFIG.read_text(), self.port, self.edge_ports))
        directives = f"daemon off; pid {prefix}/nginx.pid; error_log stderr;"
        self.balancer_process = self._start_balancer(
            "nginx", [nginx, "-p", f"{prefix}/", "-c", str(config), "-g", directives]
        )

    def _start_haproxy(self) -> None:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert self.port is not None
        config = self.folder / "haproxy.cfg"
        config.write_text(haproxy_config(HAPROXY_CONFIG.read_text(), self.port, self.edge_ports))
        self.balancer_process = self._start_balancer("haproxy", [haproxy, "-db", "-f", str(config)])

    def _start_balancer(self, name: str, command: list[str]) -> Process:
        process = self.launcher.spawn(name, command)
        port = self.port
        assert port is not None

        def listening() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError(f"{name} exited:\n{process.output}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        eventually(listening, 20, f"{name} to listen on {port}")
        return process

    def stop(self) -> None:
        self.launcher.stop_all()

    def describe(self) -> str:
        lines = [
            f"Broker: ingress {self.endpoints['ingress']}, events {self.endpoints['events']}, "
            f"control {self.endpoints['control']}, metrics {self.metrics_url}"
            + (", CURVE on" if "curve" in self.push_server else "")
        ]
        standby = self.push_server.get("standby")
        if standby is not None:
            lines.append(
                f"Backup broker: ingress {standby['ingress']}, events {standby['events']}, "
                f"control {standby['control']}, metrics {self.backup_metrics_url}"
            )
        lines += [f"Edge {n}: {url}/" for n, url in enumerate(self.edge_urls, 1)]
        if self.balancer:
            lines.append(f"Load balancer ({self.balancer}): {self.url}/")
        lines.append(f"Subscribe: {self.url}/updates/<channel_id>")
        lines.append(f"Publish:   {self.edge_urls[0]}/send-update/<channel_id>")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ops.cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument("--balancer", choices=[*BALANCERS, "none"], default="nginx")
    parser.add_argument("--workers", type=int, default=1, help="edge processes per edge port")
    parser.add_argument(
        "--curve", action="store_true", help="CURVE on every ZeroMQ link, keys made for the run"
    )
    parser.add_argument(
        "--standby", action="store_true", help="a standby pair of brokers rather than one"
    )
    options = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="pushserver-cluster-"))
    balancer = None if options.balancer == "none" else options.balancer
    cluster = Cluster(
        folder,
        options.edges,
        balancer,
        options.workers,
        curve=options.curve,
        standby=options.standby,
    )
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        cluster.start()
        print(cluster.describe(), "\nStop the cluster with CONTROL-C.", flush=True)
        while not stopping:
            time.sleep(0.2)
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print("cluster stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
