"""The demo site behind a restartable edge, and headless Chromium to look at it.

Chromium is Debian's (`make test` installs the `chromium` package when it is
missing), driven by Playwright's Python package with `executable_path`: no
browser is ever downloaded. Chromium runs as root here, so it needs
`--no-sandbox`; the network is closed, so everything that phones home is
switched off. Playwright gives each launch a fresh profile directory.

The trap in timing a page with Playwright's sync API: its events
(`page.on("request")`) are dispatched only while the test is inside a
Playwright call, so their timestamps say when the test looked, not when
the browser sent. `POLL_RECORDER` therefore records each poll in the page
itself, with the page's own clock.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import EDGE_LINE, ROOT, Launcher, Process, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEMO = ROOT / "ops" / "demo"
CHANNEL_ID = "demo"
# A subscriber location beside the demo's own that admits only signed URLs.
SIGNED_PATH = "/signed/"
SIGNING_SECRET = "the-browser-tests-signing-secret-of-some-length"

# Runs before the page's scripts: every XMLHttpRequest to a subscriber
# location is logged in window.pollLog as {url, start, end, status} (ms, page clock).
POLL_RECORDER = """
(() => {
  const log = (window.pollLog = []);
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.pollUrl = String(url);
    return open.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (...args) {
    if (this.pollUrl.includes("/updates/") || this.pollUrl.includes("/signed/")) {
      const entry = { url: this.pollUrl, start: performance.now(), end: null, status: null };
      log.push(entry);
      this.addEventListener("loadend", () => {
        entry.end = performance.now();
        entry.status = this.status;
      });
    }
    return send.apply(this, args);
  };
})();
"""


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


@dataclass
class DemoSite:
    """The demo site served by one edge (`runpushserver --role=edge --allrequests`) on a fixed
    port, so the edge can be stopped and started again where the page expects it."""

    launcher: Launcher
    broker: dict[str, str]
    port: int = field(default_factory=free_port)
    edge: Process | None = None
    module: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push_server(self, passthrough_grace: float) -> dict[str, Any]:
        host = {"location": f"127.0.0.1:{self.port}", "secure": False}
        return {
            "broker": dict(self.broker),
            "address": "127.0.0.1",
            "port": self.port,
            "subscriber_host": host,
            "publisher_host": host,
            "signed_url_secrets": [SIGNING_SECRET],
            "locations": (
                {
                    "type": "subscriber",
                    "url": r"/updates/([^/]+)",
                    "passthrough": f"{self.url}/passthrough",
                    "passthrough_grace": passthrough_grace,
                },
                {"type": "subscriber", "url": SIGNED_PATH + "([^/]+)", "signed": True},
                {"type": "publisher", "url": r"/send-update/([^/]+)"},
            ),
        }

    def prepare(self, passthrough_grace: float = 1.0) -> None:
        """Write the settings module (the demo's, with this cluster and a fresh database),
        create the tables and the demo user."""
        self.module = f"demo_settings_{self.port}"
        database = self.launcher.folder / f"demo_{self.port}.sqlite3"
        lines = [
            "import sys",
            f"sys.path.insert(0, {str(DEMO)!r})",
            "from demo.settings import *  # noqa: E402, F403",
            f"PUSH_SERVER = {self.push_server(passthrough_grace)!r}",
            "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', "
            f"'NAME': {str(database)!r}}}}}",
            # Logging in hashes a password: the fast hasher keeps each login short.
            "PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']",
        ]
        (self.launcher.folder / f"{self.module}.py").write_text("\n".join(lines) + "\n")
        self.launcher.manage(self.module, "migrate", "--noinput")
        self.launcher.manage(self.module, "ensure_demo_user")

    def start(self) -> None:
        assert self.edge is None or self.edge.popen.poll() is not None, "the edge is running"
        self.edge = self.launcher.run(
            "demo edge", self.module, "--role=edge", "--allrequests", f"127.0.0.1:{self.port}"
        )
        self.edge.wait_for(EDGE_LINE)

    def stop(self) -> None:
        assert self.edge is not None
        self.edge.stop()

    @property
    def running(self) -> bool:
        return self.edge is not None and self.edge.popen.poll() is None
