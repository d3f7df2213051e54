"""Alerts reach a person: the real stack, Debian's Prometheus with the deployed rules and Alertmanager
with the deployed routing, and a webhook sink standing in for the operator's endpoint.

The kill switch trips for real (the reconciler dies, reconcile data goes stale), and the notification
that arrives must carry the replay command, which must then run against the stack's journal.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosStack
from tests.deploy.monitoring import Alertmanager, Prometheus, WebhookSink, tool
from tools.alertmanager_config import render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def test_rendered_alertmanager_configs_pass_amtool(tmp_path):
    amtool = tool("amtool")
    for config in (render(), render("http://127.0.0.1:1/x"), render("http://127.0.0.1:1/x", "1:t", "-42")):
        path = tmp_path / "alertmanager.yml"
        path.write_text(json.dumps(config))  # as tools.alertmanager_config writes it: JSON is YAML
        r = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def firing(alertname: str) -> Callable[[list[dict]], dict | None]:
    def find(bodies: list[dict]) -> dict | None:
        for body in bodies:
            for alert in body.get("alerts", []):
                if alert["labels"].get("alertname") == alertname and alert["status"] == "firing":
                    return alert
        return None

    return find


async def test_a_kill_switch_trip_reaches_the_webhook_with_its_replay_command():
    tool("prometheus")
    tool("prometheus-alertmanager")
    c = ChaosStack()
    sink = WebhookSink()
    am = prom = None
    try:
        await asyncio.to_thread(c.start)
        config = render(sink.url)
        config["route"]["group_wait"] = "1s"  # the deployed 5 s would only slow the test down
        am = Alertmanager(config).start()
        await asyncio.to_thread(am.wait_ready)
        prom = Prometheus(
            {"risk": f"127.0.0.1:{c.stack['risk'].port}"}, RULES, alertmanager=f"127.0.0.1:{am.port}"
        ).start()
        await asyncio.to_thread(prom.wait_ready)
        assert c.get("risk", "/guard")["kill_switch"]["tripped"] is False

        c.kill("reconciler")  # no reconcile data: stale after KILL_STALE_DATA_SEC (4 s in the harness)
        alert = await asyncio.to_thread(sink.wait_for, firing("ErlKillSwitchTripped"), 90)

        assert alert["labels"]["severity"] == "critical"
        replay = alert["annotations"]["replay"]
        assert replay.startswith("python -m tools.replay ")
        assert "stale_data" in c.get("risk", "/guard")["kill_switch"]["reasons"]
        # the command the operator is handed runs, against this stack's journal
        argv = shlex.split(replay)
        r = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "NATS_URL": c.stack.nats.url, "PYTHONPATH": str(ROOT)},
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "undecodable" in r.stdout
    finally:
        for server in (prom, am):
            if server is not None:
                server.stop()
        sink.close()
        await asyncio.to_thread(c.close)
