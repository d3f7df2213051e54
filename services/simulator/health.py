"""The simulator's own health endpoints, as every service has them: /healthz, /readyz, /status, /metrics.

Its metrics live in a registry of their own (not the process-wide default): tests run several
simulators in one process, and the services' metric families are not the simulator's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

if TYPE_CHECKING:
    from services.simulator.app import Simulator


def status(sim: Simulator) -> dict[str, Any]:
    e = sim.engine
    with e.lock:
        positions = {s: p.qty for s, p in e.positions.items() if p.qty}
        open_orders = len(e.live_orders())
        open_algos = len(e.live_algos())
    return {
        "service": "simulator",
        "ready": True,
        "ready_reason": "ready",
        "uptime_sec": round(time.time() - sim.started_at, 1),
        "symbols": len(e.markets),
        "positions": positions,
        "open_orders": open_orders,
        "open_algo_orders": open_algos,
        "fault_rules": len(sim.faults.rules),
        "state_file": sim.state_file.view() if sim.state_file else None,
        "persistence": "on" if sim.state_file else "off: a restart forgets positions and orders",
    }


def add_health_routes(app: FastAPI, sim: Simulator) -> None:
    registry = CollectorRegistry()
    up = Gauge("erl_sim_up", "The simulator answers", registry=registry)
    positions = Gauge("erl_sim_positions", "Open positions at the simulated venue", registry=registry)
    orders = Gauge("erl_sim_open_orders", "Resting orders (plain and algo)", registry=registry)
    saves = Gauge("erl_sim_state_saves", "State file writes since start", registry=registry)
    up.set(1)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "service": "simulator"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        # it serves as soon as it listens: its state (loaded from SIM_STATE_FILE) is in place before that
        return JSONResponse({"ready": True, "reason": "ready"})

    @app.get("/status")
    async def sim_status() -> dict:
        return status(sim)

    @app.get("/metrics")
    async def metrics() -> Response:
        s = status(sim)
        positions.set(len(s["positions"]))
        orders.set(s["open_orders"] + s["open_algo_orders"])
        saves.set(sim.state_file.saves if sim.state_file else 0)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
