"""Benchmark: one reconcile tick with 200 symbols, each with a position and a stop.

The simulator runs as its own process with 200 synthetic perpetuals; the
reconciler runs in this process against it and a real nats-server, and we time
``tick_once`` end to end: three venue reads (positions, open orders, open
conditional orders) through real ccxt, the diff, and journaling.

    python -m bench.reconcile_tick [--symbols 200] [--ticks 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench.common import dist, machine
from libs.common.config import BootSettings, ExchangeSettings, NatsSettings, ReconcilerSettings
from libs.venue.client import make_exchange
from services.reconciler.service import ReconcilerService
from services.simulator.testing import SimControl
from tools.stack import SIMULATOR, LocalStack


async def setup_book(sim_url: str, symbols: list[str]) -> None:
    """A long position and a close-position stop on every symbol."""
    sim = SimControl(sim_url)
    ex = make_exchange(api_url=sim_url, api_key="sim-key", api_secret="sim-secret")
    try:
        markets = await ex.load_markets()
        by_id = {m["id"]: m for m in markets.values()}
        prices = sim.state()["prices"]
        for sid in symbols:
            m = by_id[sid]
            px = float(prices[sid])
            amount = float(
                ex.amount_to_precision(m["symbol"], max(20.0 / px, m["limits"]["amount"]["min"] or 0))
            )
            sim.set_position(sid, amount, px)
            await ex.create_order(
                m["symbol"], "market", "sell", 0, None, {"stopLossPrice": px * 0.9, "closePosition": True}
            )
    finally:
        await ex.close()
        sim.close()


async def drive(nats_url: str, sim_url: str, ticks: int) -> dict:
    svc = ReconcilerService(
        NatsSettings(url=nats_url),
        ExchangeSettings(api_url=sim_url),
        ReconcilerSettings(http_port=0, interval_sec=3600, equity_every_ticks=1),
        BootSettings(rebuild_on_start=True),
    )
    await svc.start()
    await svc.wait_ready()
    took: list[float] = []
    try:
        for _ in range(ticks):
            t0 = time.perf_counter()
            s = await svc.tick_once()
            took.append((time.perf_counter() - t0) * 1000)
            assert s.ok and s.mismatches == 0, s
        symbols = s.symbols
    finally:
        await svc.stop()
    return {"symbols_with_positions": symbols, "tick_ms": dist(took)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=200)
    ap.add_argument("--ticks", type=int, default=50)
    a = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="erl-bench-"))
    stack = LocalStack(
        run_dir,
        # ticks back to back, far beyond the venue's weight budget: this bench times one tick's cost
        extra_env={
            "SIM_SYMBOLS": str(a.symbols),
            "SIM_TICK_MS": "0",
            "SIM_START_BALANCE": "1000000000",
            "SIM_RATE_LIMITS": "false",
        },
    )
    try:
        nats = stack.start_nats()
        sim = stack.add(SIMULATOR)
        assert sim.wait_ready()
        symbols = [f"S{i:03d}USDT" for i in range(1, a.symbols + 1)]
        asyncio.run(setup_book(sim.url, symbols))
        result = asyncio.run(drive(nats.url, sim.url, a.ticks))
    finally:
        stack.stop()
    print(json.dumps({"benchmark": "reconcile_tick", "machine": machine(), **result}, indent=2))


if __name__ == "__main__":
    main()
