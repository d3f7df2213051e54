"""Benchmark: the whole stack's REST weight at the venue, idle and with 50 open positions.

The full stack runs as ``make run`` starts it (nats-server, the simulator, risk,
router, reconciler and entry as processes) against a simulator with 53 symbols.
The figure is the venue's own count: ``used_weight_1m`` from the simulator's
``/_sim/limits`` (the same number it sends as ``X-MBX-USED-WEIGHT-1M``), sampled
every second once a full minute of steady state is inside the rolling window.
The target is the reconciler's share of the limit (25% of 2,400 by default).

Phase 1: idle. Phase 2: 50 positions opened behind the stack's back; the
reconciler adopts them and the router places 50 stops; the window is measured
from the moment every position has its stop.

With ``--stream`` the venue-stream service runs too: fills and cancels are pushed, the reconciler's
REST pass is the slower backstop, and the target is 10% of the limit (issue 10).

    python -m bench.rest_budget [--seconds 70] [--positions 50] [--stream]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import dist, machine, start_stack
from services.simulator.testing import SimControl
from tools.stack import ENTRY, RECONCILER, RISK, ROUTER, VENUE_STREAM, LocalStack

WINDOW_SEC = 60.0  # the venue's rolling window


def used(sim: SimControl) -> int:
    return sum(ip["used_weight_1m"] for ip in sim.limits()["ips"].values())


def refusals(sim: SimControl) -> int:
    return sum(1 for r in sim.requests_log() if r["status"] in (418, 429))


def sample(sim: SimControl, seconds: float) -> list[float]:
    """Wait one full window, then read the venue's count every second for ``seconds``."""
    time.sleep(WINDOW_SEC)
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(float(used(sim)))
        time.sleep(1.0)
    return out


def protected(sim: SimControl, symbols: list[str]) -> bool:
    st = sim.state()
    stops = {a["symbol"] for a in st["algo_orders"] if a["algoStatus"] == "NEW"}
    return all(s in stops for s in symbols)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--seconds", type=float, default=70.0, help="sampling time per phase, after a full window"
    )
    ap.add_argument("--positions", type=int, default=50)
    ap.add_argument("--stream", action="store_true", help="with the venue stream (target: 10%% of the limit)")
    a = ap.parse_args()
    services = (RISK, ROUTER, RECONCILER, ENTRY, *((VENUE_STREAM,) if a.stream else ()))
    share = 0.10 if a.stream else 0.25
    run_dir = Path(tempfile.mkdtemp(prefix="erl-bench-"))
    stack = LocalStack(
        run_dir,
        extra_env={
            "SIM_TICK_MS": "0",
            "SIM_SYMBOLS": str(a.positions),
            "SIM_START_BALANCE": "1000000000",
            "RISK_HALT_TOKEN": "bench",
        },
    )
    result: dict = {"benchmark": "rest_budget", "machine": machine()}
    try:
        _, sim_child, result["baseline_js_acked_publish_ms"] = start_stack(stack, services)
        sim = SimControl(sim_child.url)
        limit = sim.limits()["weight_limit_1m"]
        target = share * limit
        idle = sample(sim, a.seconds)
        symbols = [s for s in sim.state()["prices"]][: a.positions]
        for s in symbols:
            sim.set_position(s, 1.0 if sim.state()["prices"][s] < 1000 else 0.01)
        t0 = time.monotonic()
        while not protected(sim, symbols):
            assert time.monotonic() - t0 < 120, f"positions not all protected, see {run_dir}/logs"
            time.sleep(0.5)
        stops_placed_sec = time.monotonic() - t0
        loaded = sample(sim, a.seconds)
        result.update(
            {
                "venue_weight_limit_1m": limit,
                "venue_stream": a.stream,
                "target_share": share,
                "target_weight_1m": target,
                "idle_used_weight_1m": dist(idle),
                f"{a.positions}_positions_used_weight_1m": dist(loaded),
                f"{a.positions}_positions_all_protected_after_sec": round(stops_placed_sec, 1),
                "responses_429_or_418": refusals(sim),
                "within_target": max(idle + loaded) <= target,
            }
        )
    finally:
        stack.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
