"""SIM_STATE_FILE: a simulator restart keeps positions, orders, algo orders, balances and ids; the health
endpoints answer like the services'."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from libs.venue.client import make_exchange
from services.simulator.engine import Engine
from services.simulator.persistence import StateFile, StateFileError, restore, snapshot
from services.simulator.testing import SimulatorThread

BTC = "BTC/USDT:USDT"


def trade(e: Engine) -> None:
    e.set_price("BTCUSDT", 50_000)
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.1, price=None, client_id="ENTRY1")
    e.place_order(
        symbol="BTCUSDT", side="SELL", type="LIMIT", qty=0.05, price=51_000, client_id="TP1", reduce_only=True
    )
    e.place_algo(
        symbol="BTCUSDT",
        side="SELL",
        order_type="STOP_MARKET",
        qty=None,
        price=None,
        trigger_price=49_000,
        client_id="SL1",
        close_position=True,
    )


def test_snapshot_round_trip_keeps_every_venue_fact() -> None:
    a = Engine(["BTCUSDT", "ETHUSDT"], start_balance=100_000)
    trade(a)
    b = Engine(["BTCUSDT", "ETHUSDT"], start_balance=1)
    restore(b, json.loads(json.dumps(snapshot(a))))
    assert snapshot(b) == snapshot(a)
    assert b.pos_qty("BTCUSDT") == 0.1 and b.wallet == a.wallet
    # ids continue where they were: a new order never reuses an old id
    o = b.place_order(symbol="ETHUSDT", side="BUY", type="MARKET", qty=1, price=None, client_id="X")
    assert o.order_id > max(a.orders)


def test_unusable_files_stop_the_start_with_the_file_named(tmp_path: Path) -> None:
    e = Engine(["BTCUSDT"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StateFileError, match=str(bad)):
        StateFile(bad).load(e)
    other = Engine(["BTCUSDT", "SOLUSDT"])
    other.set_position("SOLUSDT", 3)
    f = tmp_path / "sol.json"
    StateFile(f).save(other)
    with pytest.raises(StateFileError, match="SOLUSDT"):
        StateFile(f).load(e)
    assert StateFile(tmp_path / "none.json").load(e) is False  # a first start: empty


def test_written_only_on_change_and_atomically(tmp_path: Path) -> None:
    e = Engine(["BTCUSDT"])
    f = StateFile(tmp_path / "state.json")
    assert f.save(e) is True and f.save(e) is False
    e.set_position("BTCUSDT", 0.2)
    assert f.save(e) is True and f.saves == 2
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind


async def test_a_restarted_simulator_keeps_positions_and_orders(tmp_path: Path) -> None:
    path = tmp_path / "venue.json"
    with SimulatorThread(state_file=str(path), state_save_sec=0.05) as sim:
        trade(sim.engine)
        ex = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret", timeout_ms=2000)
        try:
            await ex.set_leverage(7, BTC)
        finally:
            await ex.close()
        before = sim.state()
        # written when it changes, not only at shutdown (a kill -9 loses at most one period)
        deadline = time.monotonic() + 10
        while '"SL1"' not in (path.read_text() if path.exists() else ""):
            assert time.monotonic() < deadline, "state not written"
            await asyncio.sleep(0.02)
        status = sim.status()
        assert status["state_file"]["path"] == str(path) and status["state_file"]["saves"] >= 1
    with SimulatorThread(state_file=str(path)) as again:
        after = again.state()
        for key in ("orders", "algo_orders", "positions", "leverage"):
            assert after[key] == before[key], key
        assert after["account"]["totalWalletBalance"] == before["account"]["totalWalletBalance"]
        ex = make_exchange(
            api_url=again.base_url, api_key="sim-key", api_secret="sim-secret", timeout_ms=2000
        )
        try:
            # the real client sees the same venue: the stop by its client id, the position
            stop = await ex.fetch_order(None, BTC, {"clientOrderId": "SL1", "trigger": True})
            assert stop["status"] == "open"
            positions = await ex.fetch_positions([BTC])
            assert [float(p["contracts"]) for p in positions if p["contracts"]] == [0.1]
        finally:
            await ex.close()
        assert (
            "loaded 1 position(s), 1 open order(s), 1 open algo order(s)"
            in again.status()["state_file"]["loaded"]
        )


def test_health_endpoints_answer_like_the_services() -> None:
    with SimulatorThread() as sim:
        base = sim.base_url
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "service": "simulator"}
        assert httpx.get(f"{base}/readyz").json()["ready"] is True
        st = httpx.get(f"{base}/status").json()
        assert st["service"] == "simulator" and st["persistence"].startswith("off")
        metrics = httpx.get(f"{base}/metrics")
        assert metrics.status_code == 200 and "erl_sim_up 1.0" in metrics.text
