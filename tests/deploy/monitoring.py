"""Debian's Prometheus and Alertmanager as child processes, and a webhook sink that records what arrives.

Prometheus, promtool and Alertmanager come from Debian's `prometheus` and `prometheus-alertmanager`
packages (`make test` installs them, tools/ensure_prometheus.sh). Without them the tests that need them
skip, unless ERL_REQUIRE_ALL=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tools.natsd import die_with_parent, free_port, stop_process


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: apt-get install prometheus prometheus-alertmanager (make test does)"
        if os.environ.get("ERL_REQUIRE_ALL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class _Process:
    """A child server with its own temp dir and log; stop() ends it and removes the dir."""

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str]) -> None:
        log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, preexec_fn=die_with_parent)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=5) as r:
            return json.load(r)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /-/ready (bounded): both servers answer it once their config is loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.base} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Prometheus(_Process):
    def __init__(self, targets: dict[str, str], rules: Path, alertmanager: str | None = None) -> None:
        super().__init__("erl-prom-")
        scrape = "".join(
            f"  - job_name: {job}\n    static_configs: [{{targets: ['{t}']}}]\n" for job, t in targets.items()
        )
        alerting = (
            f"alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{alertmanager}']}}]\n"
            if alertmanager
            else ""
        )
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n{alerting}scrape_configs:\n{scrape}"
        )

    def start(self) -> Prometheus:
        self._spawn(
            [
                tool("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        return self

    def query(self, expr: str) -> list:
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", body
        return body["data"]["result"]


class Alertmanager(_Process):
    """Alertmanager with a rendered config (tools/alertmanager_config.py), alone: no cluster port."""

    def __init__(self, config: dict) -> None:
        super().__init__("erl-am-")
        (self.dir / "alertmanager.yml").write_text(json.dumps(config))

    def start(self) -> Alertmanager:
        self._spawn(
            [
                tool("prometheus-alertmanager"),
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # no gossip port on every interface
            ]
        )
        return self


class WebhookSink:
    """A local HTTP receiver: every POSTed JSON body is kept, and waiters are woken."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self._cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with sink._cond:
                    sink.bodies.append(body)
                    sink._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[list[dict]], Any], timeout: float) -> Any:
        """The first truthy predicate(bodies) within ``timeout`` seconds, else TimeoutError."""
        with self._cond:
            found = self._cond.wait_for(lambda: predicate(self.bodies), timeout)
        if not found:
            raise TimeoutError(f"no matching notification in {timeout}s; got {self.bodies}")
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
