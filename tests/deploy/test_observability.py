"""Observability, for real: the stack runs as processes, Debian's Prometheus scrapes it, and every
panel query of every dashboard must return data. Alert rules are checked and unit-tested by promtool.

Prometheus and promtool come from Debian's `prometheus` package (`make test` installs it). Without
them these tests skip, unless ERL_REQUIRE_ALL=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import httpx
import pytest

from libs.common.bus import Publisher
from libs.common.messages import CancelIntent, OrderTransition, ProtectionGap, Signal
from libs.common.state_machine import OrderState
from tests.chaos.harness import ADMIN_TOKEN, ChaosStack
from tests.integration.helpers import make_intent
from tools.dashboards import all_queries, rendered
from tools.natsd import die_with_parent, free_port, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
JOBS = ("router", "reconciler", "risk", "entry", "venue_stream")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: apt-get install prometheus (make test does)"
        if os.environ.get("ERL_REQUIRE_ALL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def test_dashboards_are_rendered_from_their_definition():
    for path, text in rendered().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m tools.dashboards --write"


def test_alert_rules_check_and_unit_tests(tmp_path):
    promtool = tool("promtool")
    d = DEPLOY / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run([promtool, *args], cwd=d, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    # the compose config names the rules at their in-container path: check it against the local copy
    local = tmp_path / "prometheus.yml"
    local.write_text(
        (d / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(d / "alerts.yml"))
    )
    r = subprocess.run([promtool, "check", "config", str(local)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


class Prometheus:
    def __init__(self, targets: dict[str, str], rules: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="erl-prom-"))
        self.port = free_port()
        scrape = "".join(
            f"  - job_name: {job}\n    static_configs: [{{targets: ['{t}']}}]\n" for job, t in targets.items()
        )
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\nscrape_configs:\n{scrape}"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        return self

    def query(self, expr: str) -> list:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.load(r)

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$__range", "10m")


async def exercise(c: ChaosStack) -> None:
    """Enough real activity that every metric the dashboards show has a sample."""
    pub = Publisher(c.nc.jetstream(), c.settings, "obs-test")
    c.sim.add_fault(kind="http_error", method="POST", path="/fapi/v1/order", count=2, status=429)
    await pub.publish(Signal(signal_id="obs-1", symbol="BTC/USDT:USDT", side="buy", qty=0.01), "signal.obs-1")
    stop = await c.tap.wait_for(
        lambda: next(
            (
                t
                for t in c.tap.of(OrderTransition)
                if t.bucket.value == "SL" and t.to_state is OrderState.ACKED
            ),
            None,
        )
    )
    # a cancel of something that is not there (idempotent success), and a malformed message
    ghost = make_intent()
    await pub.publish(
        CancelIntent(
            correlation_id=ghost.correlation_id, client_order_id=ghost.client_order_id, symbol=ghost.symbol
        ),
        "obs-cancel",
    )
    await c.nc.jetstream().publish("erl.intent.order.cbroken", b"{not json")
    # a stop cancelled behind our back: the reconciler repairs it, the gap opens and closes
    c.sim.cancel_behind_back("BTCUSDT", stop.client_order_id)
    await c.tap.wait_for(lambda: [g for g in c.tap.of(ProtectionGap) if g.state == "closed"])
    # a halt: entries are refused by entry and by the router, then resume
    async with httpx.AsyncClient() as http:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        (
            await http.post(c.url("risk", "/halt"), json={"reason": "observability drill"}, headers=auth)
        ).raise_for_status()
        await pub.publish(
            Signal(signal_id="obs-2", symbol="BTC/USDT:USDT", side="buy", qty=0.01), "signal.obs-2"
        )
        blocked = make_intent()
        await pub.publish(blocked, "obs-blocked")
        await c.tap.wait_for(
            lambda: any(
                t.to_state is OrderState.BLOCKED
                for t in c.tap.of(OrderTransition, client_order_id=blocked.client_order_id)
            )
        )
        (
            await http.post(c.url("risk", "/resume"), json={"reason": "drill over"}, headers=auth)
        ).raise_for_status()


async def test_every_dashboard_panel_returns_data_from_a_live_stack():
    tool("prometheus")
    c = ChaosStack()
    prom = None
    try:
        await asyncio.to_thread(c.start)
        await c.connect()
        targets = {job: f"127.0.0.1:{c.stack[job].port}" for job in JOBS}
        prom = Prometheus(targets, DEPLOY / "prometheus" / "alerts.yml").start()
        await exercise(c)
        queries = [(d, p, concrete(e)) for d, p, e in all_queries()]
        missing = queries
        deadline = time.monotonic() + 90
        while missing and time.monotonic() < deadline:
            # Prometheus only knows what it has scraped: ask again until it has, bounded
            missing = [(d, p, e) for d, p, e in missing if not await asyncio.to_thread(_has_data, prom, e)]
            if missing:
                await asyncio.sleep(1.0)
        assert missing == [], "panels without data:\n" + "\n".join(f"{d} / {p}: {e}" for d, p, e in missing)
        rules = prom.get("/api/v1/rules")["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) == 7
        up = {r["metric"]["job"]: r["value"][1] for r in prom.query("up")}
        assert up == dict.fromkeys(JOBS, "1")
    finally:
        if prom is not None:
            prom.stop()
        await c.disconnect()
        await asyncio.to_thread(c.close)


def _has_data(prom: Prometheus, expr: str) -> bool:
    try:
        return bool(prom.query(expr))
    except OSError:
        return False
