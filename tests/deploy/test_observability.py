"""Observability, for real: the stack runs as processes, Debian's Prometheus scrapes it, and every
panel query of every dashboard must return data. Alert rules are checked and unit-tested by promtool.

Prometheus and promtool come from Debian's `prometheus` package (tests/deploy/monitoring.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from libs.common.bus import Publisher
from libs.common.messages import CancelIntent, OrderTransition, ProtectionGap, Signal
from libs.common.state_machine import OrderState
from tests.chaos.harness import ADMIN_TOKEN, ChaosStack
from tests.deploy.monitoring import Prometheus, tool
from tests.integration.helpers import make_intent
from tools.dashboards import all_queries, rendered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
JOBS = ("router", "reconciler", "risk", "entry", "venue_stream")


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
        # a fresh stack, nothing sent yet: the retry and error panels read 0 (pre-initialised series),
        # not "no data", once Prometheus has scraped twice (rate and increase need two samples)
        fresh = [(d, p, concrete(e)) for d, p, e in all_queries() if d == "erl / Retries and errors"]
        missing = await _without_data(prom, fresh, within=30)
        assert missing == [], "fresh-stack panels without data:\n" + "\n".join(
            f"{d} / {p}: {e}" for d, p, e in missing
        )
        await exercise(c)
        missing = await _without_data(prom, [(d, p, concrete(e)) for d, p, e in all_queries()], within=90)
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


async def _without_data(
    prom: Prometheus, queries: list[tuple[str, str, str]], within: float
) -> list[tuple[str, str, str]]:
    """The queries that still return nothing after ``within`` seconds (asked again each second: Prometheus
    only knows what it has scraped)."""
    missing = queries
    deadline = time.monotonic() + within
    while missing and time.monotonic() < deadline:
        missing = [(d, p, e) for d, p, e in missing if not await asyncio.to_thread(_has_data, prom, e)]
        if missing:
            await asyncio.sleep(1.0)
    return missing


def _has_data(prom: Prometheus, expr: str) -> bool:
    try:
        return bool(prom.query(expr))
    except OSError:
        return False
