"""Each strict venue rule, through the real ccxt binanceusdm client (issue 7, items 1-5 and 7).

Expected exception classes come from ccxt's handling of the same answer on the
real venue's host, so the services see here exactly what they would see there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import ccxt
import pytest

from tests.simulator.venue_calls import expected_class, raises

pytestmark = pytest.mark.integration

BTC = "BTC/USDT:USDT"
SOL = "SOL/USDT:USDT"
CLOSE_STOP = {"stopLossPrice": 45_000, "closePosition": True}


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for simulator state (never a fixed sleep): poll it until the predicate holds."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def last(sim) -> dict:
    return sim.requests_log()[-1]


def venue_class_for(sim) -> type[BaseException]:
    import json

    entry = last(sim)
    return expected_class(entry["status"], json.dumps({"code": entry["code"], "msg": "x"}))


# ----------------------------------------------------------------------------- 1. validity at handling time


async def test_a_request_delayed_past_its_recv_window_is_refused(sim, ex):
    ex.options["recvWindow"] = 300
    sim.add_fault(kind="latency", method="POST", path="/fapi/v1/order", delay_ms=600)
    err = await raises(ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "LATE1"}))
    assert isinstance(err, ccxt.InvalidNonce) and type(err) is venue_class_for(sim)
    assert last(sim)["code"] == -1021
    assert sim.position("BTCUSDT") == 0 and sim.state()["orders"] == []


async def test_a_request_delayed_past_the_client_timeout_but_inside_its_window_executes(sim, ex):
    ex.options["recvWindow"] = 5_000
    ex.timeout = 200
    sim.add_fault(kind="latency", method="POST", path="/fapi/v1/order", delay_ms=600)
    err = await raises(ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "SLOW1"}))
    assert isinstance(err, ccxt.RequestTimeout)  # the client gave up ...
    await until(lambda: sim.position("BTCUSDT") == pytest.approx(0.01))  # ... the venue did not


async def test_a_timestamp_more_than_a_second_ahead_is_refused(sim, ex):
    ex.options["timeDifference"] = -1_500  # our clock runs 1.5 s ahead of the venue's
    err = await raises(ex.fetch_balance())
    assert isinstance(err, ccxt.InvalidNonce) and last(sim)["code"] == -1021


async def test_recv_window_over_a_minute_is_refused(sim, ex):
    ex.options["recvWindow"] = 60_001
    err = await raises(ex.fetch_balance())
    assert type(err) is venue_class_for(sim) and last(sim)["code"] == -1131


# ----------------------------------------------------------------------------- 2. query lag


async def test_query_lag_hides_an_accepted_order(sim, ex):
    sim.add_fault(kind="query_lag", method="POST", path="/fapi/v1/order", delay_ms=1_500)
    placed = await ex.create_order(BTC, "limit", "buy", 0.01, 48_000, {"clientOrderId": "LAG1"})
    assert placed["status"] == "open"
    err = await raises(ex.fetch_order(None, BTC, {"clientOrderId": "LAG1"}))
    assert isinstance(err, ccxt.OrderNotFound) and last(sim)["code"] == -2013
    assert await ex.fetch_open_orders(BTC) == []
    assert [o["clientOrderId"] for o in sim.state()["orders"] if o["status"] == "NEW"] == ["LAG1"]
    seen: list = []

    async def lookup() -> bool:
        try:
            seen.append(await ex.fetch_order(None, BTC, {"clientOrderId": "LAG1"}))
            return True
        except ccxt.OrderNotFound:
            return False

    deadline = time.monotonic() + 10
    while not await lookup():
        assert time.monotonic() < deadline
        # paced: an unpaced poll sends ~2,000 lookups in the 1.5 s lag, near the 2,400 weight/min limit (429)
        await asyncio.sleep(0.05)
    assert seen[-1]["status"] == "open"


async def test_query_lag_setting_applies_to_every_order(sim, ex):
    sim.engine.query_lag_ms = 60_000
    try:
        await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "LAG2"})
        assert isinstance(
            await raises(ex.fetch_order(None, BTC, {"clientOrderId": "LAG2"})), ccxt.OrderNotFound
        )
        assert sim.position("BTCUSDT") == pytest.approx(0.01)
    finally:
        sim.engine.query_lag_ms = 0


# ----------------------------------------------------------------------------- 3. reduce-only and closePosition


@pytest.mark.parametrize(
    "setup,params,code",
    [
        ("flat", CLOSE_STOP, -4509),
        ("long", {**CLOSE_STOP, "reduceOnly": True}, -1106),
        ("long", {**CLOSE_STOP, "quantity": "0.01"}, -4137),
    ],
)
async def test_close_position_refusals(sim, ex, setup, params, code):
    if setup == "long":
        sim.set_position("BTCUSDT", 0.01)
    err = await raises(ex.create_order(BTC, "market", "sell", 0.0, None, {**params, "clientOrderId": "CP1"}))
    assert last(sim)["code"] == code and type(err) is venue_class_for(sim)
    assert sim.state()["algo_orders"] == []


async def test_close_position_stop_expires_when_the_position_goes_flat(sim, ex):
    await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "E1"})
    await ex.create_order(BTC, "market", "sell", 0.0, None, {**CLOSE_STOP, "clientOrderId": "SL1"})
    await ex.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True, "clientOrderId": "X1"})
    o = await ex.fetch_order(None, BTC, {"clientOrderId": "SL1", "trigger": True})
    assert o["status"] == "expired" and o["info"]["algoStatus"] == "EXPIRED"
    assert await ex.fetch_open_orders(BTC, params={"trigger": True}) == []


async def test_keep_protection_fault_leaves_the_stop_behind(sim, ex):
    sim.add_fault(kind="keep_protection", symbol="BTCUSDT")
    await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "E2"})
    await ex.create_order(BTC, "market", "sell", 0.0, None, {**CLOSE_STOP, "clientOrderId": "SL2"})
    await ex.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True, "clientOrderId": "X2"})
    left = await ex.fetch_open_orders(BTC, params={"trigger": True})
    assert [o["clientOrderId"] for o in left] == ["SL2"]


async def test_resting_reduce_only_expires_instead_of_opening_a_position(sim, ex):
    await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "E3"})
    await ex.create_order(BTC, "limit", "sell", 0.01, 51_000, {"reduceOnly": True, "clientOrderId": "TP3"})
    await ex.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True, "clientOrderId": "X3"})
    sim.set_price("BTCUSDT", 51_500)
    o = await ex.fetch_order(None, BTC, {"clientOrderId": "TP3"})
    assert o["status"] == "expired" and o["filled"] == 0
    assert sim.position("BTCUSDT") == 0


# ----------------------------------------------------------------------------- 4. prices


async def test_marketable_limit_fills_at_the_book(sim, ex):
    o = await ex.create_order(BTC, "limit", "buy", 0.01, 52_000, {"clientOrderId": "L1"})
    assert o["status"] == "closed" and o["average"] == pytest.approx(50_010)


@pytest.mark.parametrize(
    "symbol,amount,price,params,code",
    [
        (BTC, 0.01, 53_000, {}, -4016),  # above the PERCENT_PRICE cap
        (BTC, 0.01, 47_000, {}, -4024),  # below its floor
        (BTC, 0.01, 48_000, {"price": "48000.05"}, -4014),  # off the tick
        (BTC, 0.01, 48_000, {"quantity": "0.0105"}, -1111),  # off the step
        (SOL, 0.01, 150, {}, -4164),  # 1.5 USDT: under the minimum notional
        (BTC, 0.01, 48_000, {"clientOrderId": "not allowed!"}, -1100),
    ],
)
async def test_price_quantity_and_id_refusals(sim, ex, symbol, amount, price, params, code):
    err = await raises(ex.create_order(symbol, "limit", "buy", amount, price, params))
    assert last(sim)["code"] == code and type(err) is venue_class_for(sim)
    assert sim.state()["orders"] == []


# ----------------------------------------------------------------------------- 5. triggered stops


async def test_a_triggered_stop_reports_the_order_it_created(sim, ex):
    await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "E5"})
    await ex.create_order(BTC, "market", "sell", 0.0, None, {**CLOSE_STOP, "clientOrderId": "SL5"})
    sim.set_price("BTCUSDT", 44_990)
    algo = await ex.fetch_order(None, BTC, {"clientOrderId": "SL5", "trigger": True})
    assert algo["status"] == "closed" and algo["info"]["algoStatus"] == "FINISHED"
    made = await ex.fetch_order(algo["info"]["actualOrderId"], BTC)
    assert made["status"] == "closed" and made["filled"] == pytest.approx(0.01)
    assert made["average"] == pytest.approx(sim.engine.book("BTCUSDT", "SELL"))


# ----------------------------------------------------------------------------- 7. overload


async def test_overload_refuses_entries_but_lets_protection_through(sim, ex):
    sim.set_position("BTCUSDT", 0.01)
    sim.add_fault(kind="overload", count=None)
    err = await raises(ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "B1"}))
    assert last(sim)["code"] == -1008 and type(err) is venue_class_for(sim)
    await ex.create_order(BTC, "market", "sell", 0.0, None, {**CLOSE_STOP, "clientOrderId": "SL7"})
    await ex.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True, "clientOrderId": "X7"})
    assert sim.position("BTCUSDT") == 0


async def test_the_state_can_be_read_with_resting_orders_only(sim, ex):
    # the soak samples positions and resting stops every second: the open-only view stays small
    await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "OPEN1"})
    await ex.create_order(BTC, "limit", "buy", 0.01, 48_000, {"clientOrderId": "REST1"})
    await ex.create_order(BTC, "market", "sell", 0.01, None, {**CLOSE_STOP, "clientOrderId": "STOP1"})
    full, rest = sim.state(), sim.state(open_only=True)
    assert sorted(o["clientOrderId"] for o in full["orders"]) == ["OPEN1", "REST1"]
    assert [o["clientOrderId"] for o in rest["orders"]] == ["REST1"]
    assert [a["clientAlgoId"] for a in rest["algo_orders"]] == ["STOP1"]
    assert rest["positions"] == full["positions"] and rest["ts_ms"] >= full["ts_ms"]
