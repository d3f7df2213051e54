"""Benchmark: halt propagation, from the trigger to the entry side refusing.

The risk service runs as its own process. The "entry side" is a GuardView,
the exact component the entry service and the router use to read the knobs
(KV watch), living in this process. Two triggers are measured:

- operator: ``POST /halt`` -> knobs read as ``allow_entries=false``;
- mismatch storm: a ``reconcile.summary`` whose streak reaches
  KILL_RECONCILE_MISMATCH_STREAK_MAX lands on the bus -> same.

    python -m bench.halt_propagation [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import dist, machine
from libs.common.bus import Publisher, connect_nats
from libs.common.config import NatsSettings
from libs.common.guard import GuardView
from libs.common.messages import ReconcileSummary
from tools.stack import RISK, LocalStack

TOKEN = "bench-token"


async def drive(nats_url: str, risk_url: str, n: int) -> dict:
    settings = NatsSettings(url=nats_url)
    nc = await connect_nats(settings, "bench", fail_fast=True)
    pub = Publisher(nc.jetstream(), settings, "bench")
    stop = asyncio.Event()
    view = GuardView(nc, settings.kv_bucket, require_knobs=True, poll_sec=1.0)
    task = asyncio.ensure_future(view.run(stop))
    await view.wait_until(lambda k: k is not None and k.allow_entries, 15)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    operator: list[float] = []
    storm: list[float] = []
    tick = 0

    async def summary(streak: int) -> None:
        nonlocal tick
        tick += 1
        await pub.publish(ReconcileSummary(tick=tick, mismatch_streak=streak), uuid.uuid4().hex)

    async with httpx.AsyncClient(base_url=risk_url) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            r = await http.post("/halt", json={"reason": "bench"}, headers=auth)
            r.raise_for_status()
            await view.wait_until(lambda k: k is not None and not k.allow_entries, 5)
            operator.append((time.perf_counter() - t0) * 1000)
            (await http.post("/resume", json={"reason": "bench"}, headers=auth)).raise_for_status()
            await view.wait_until(lambda k: k is not None and k.allow_entries, 5)
        for _ in range(n):
            t0 = time.perf_counter()
            await summary(streak=6)
            await view.wait_until(lambda k: k is not None and not k.allow_entries, 5)
            storm.append((time.perf_counter() - t0) * 1000)
            await summary(streak=0)
            await view.wait_until(lambda k: k is not None and k.allow_entries, 5)
    stop.set()
    await task
    await nc.close()
    return {"operator_halt_ms": dist(operator), "mismatch_storm_halt_ms": dist(storm)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="erl-bench-"))
    env = {
        "RISK_ADMIN_TOKEN": TOKEN,
        "KILL_RECONCILE_MISMATCH_STREAK_MAX": "6",
        "KILL_RECONCILE_MISMATCH_HALT_SEC": "0",
        "KILL_STALE_DATA_SEC": "100000",
        "RISK_TIGHTEN_AFTER": "1000000",  # isolate the kill switch path from the controller
    }
    stack = LocalStack(run_dir, extra_env=env)
    try:
        nats = stack.start_nats()
        risk = stack.add(RISK)
        assert risk.wait_ready(), f"risk not ready, see {run_dir}/logs"
        result = asyncio.run(drive(nats.url, risk.url, a.n))
    finally:
        stack.stop()
    print(json.dumps({"benchmark": "halt_propagation", "machine": machine(), **result}, indent=2))


if __name__ == "__main__":
    main()
