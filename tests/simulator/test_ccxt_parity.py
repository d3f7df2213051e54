"""Real ccxt against the simulator raises exactly what it raises against the real venue.

For every fault we take the simulator's raw HTTP answer, feed the same status
and body to ccxt's error handling *as if it came from fapi.binance.com*, and
require the exception class from the live call to be identical.
"""

from __future__ import annotations

import json
import time

import ccxt
import httpx
import pytest

from libs.venue.client import make_exchange
from tests.simulator.venue_calls import expected_class, raises

pytestmark = pytest.mark.integration

BTC = "BTC/USDT:USDT"


def raw(sim, method: str, path: str) -> tuple[int, str]:
    r = httpx.request(method, sim.base_url + path)
    return r.status_code, r.text


PRE_FAULTS = [
    {"kind": "http_error", "status": 429},
    {"kind": "http_error", "status": 418},
    {"kind": "http_error", "status": 500},
    {"kind": "http_error", "status": 502},
    {"kind": "http_error", "status": 503},
    {"kind": "http_error", "status": 504},
    {"kind": "binance_error", "code": -2011, "msg": "Unknown order sent."},
    {"kind": "binance_error", "code": -4116, "msg": "ClientOrderId is duplicated."},
    {"kind": "binance_error", "code": -2022, "msg": "ReduceOnly Order is rejected."},
    {"kind": "binance_error", "code": -2019, "msg": "Margin is insufficient."},
    {"kind": "binance_error", "code": -2021, "msg": "Order would immediately trigger."},
    {
        "kind": "binance_error",
        "code": -1021,
        "msg": "Timestamp for this request is outside of the recvWindow.",
    },
    {"kind": "binance_error", "code": -1003, "msg": "Too many requests."},
]


@pytest.mark.parametrize("fault", PRE_FAULTS, ids=lambda f: f"{f['kind']}:{f.get('status') or f.get('code')}")
async def test_injected_faults_raise_the_real_venue_class(sim, ex, fault):
    sim.add_fault(method="POST", path="/fapi/v1/order", count=1, **fault)
    status, body = raw(sim, "POST", "/fapi/v1/order")
    sim.add_fault(method="POST", path="/fapi/v1/order", count=1, **fault)
    err = await raises(ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "P1"}))
    assert type(err) is expected_class(status, body), (status, body, err)
    assert sim.position("BTCUSDT") == 0  # rejected before handling: nothing executed


async def test_unknown_after_accept_is_request_timeout_and_the_order_exists(sim, ex):
    sim.add_fault(kind="unknown_after_accept", method="POST", path="/fapi/v1/order", count=1)
    err = await raises(ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "U1"}))
    assert isinstance(err, ccxt.RequestTimeout)
    last = sim.requests_log()[-1]
    assert (last["status"], last["code"]) == (503, -1007)
    assert type(err) is expected_class(
        503, json.dumps({"code": -1007, "msg": "Timeout waiting for response"})
    )
    assert (await ex.fetch_order(None, BTC, {"clientOrderId": "U1"}))["status"] == "closed"


async def test_timeout_after_accept(sim, ex):
    sim.add_fault(kind="timeout_after_accept", method="POST", path="/fapi/v1/order", count=1, delay_ms=2500)
    err = await raises(ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "T1"}))
    assert isinstance(err, ccxt.RequestTimeout)
    assert sim.position("BTCUSDT") == pytest.approx(0.01)  # it was accepted all the same


async def test_latency(sim, ex):
    sim.add_fault(kind="latency", method="GET", path="/fapi/v1/openOrders", count=1, delay_ms=300)
    t = time.perf_counter()
    assert await ex.fetch_open_orders(BTC) == []
    assert time.perf_counter() - t >= 0.3


@pytest.mark.parametrize(
    "setup,call,code,cls",
    [
        (None, "cancel_unknown", -2011, ccxt.OrderNotFound),
        (None, "fetch_unknown", -2013, ccxt.OrderNotFound),
        (None, "reduce_only_flat", -2022, ccxt.InvalidOrder),
        (None, "too_big", -2019, ccxt.InsufficientFunds),
        ("long", "stop_through", -2021, ccxt.OrderImmediatelyFillable),
        ("resting", "duplicate", -4116, ccxt.InvalidOrder),
        ("long_with_stop", "second_close_position_stop", -4130, ccxt.ExchangeError),
    ],
)
async def test_natural_venue_errors(sim, ex, setup, call, code, cls):
    if setup in ("long", "long_with_stop"):
        sim.set_position("BTCUSDT", 0.01)
    close_stop = {"stopLossPrice": 40_000, "closePosition": True}
    if setup == "long_with_stop":
        await ex.create_order(BTC, "market", "sell", 0.0, None, {**close_stop, "clientOrderId": "C1"})
    if setup == "resting":
        await ex.create_order(BTC, "limit", "buy", 0.01, 48_000, {"clientOrderId": "D1"})
    calls = {
        "cancel_unknown": lambda: ex.cancel_order(None, BTC, {"clientOrderId": "nope"}),
        "fetch_unknown": lambda: ex.fetch_order(None, BTC, {"clientOrderId": "nope"}),
        "reduce_only_flat": lambda: ex.create_order(BTC, "market", "sell", 0.01, None, {"reduceOnly": True}),
        "too_big": lambda: ex.create_order(BTC, "market", "buy", 500, None, {}),
        "stop_through": lambda: ex.create_order(
            BTC, "market", "sell", 0.01, None, {"stopLossPrice": 60_000, "reduceOnly": True}
        ),
        "duplicate": lambda: ex.create_order(BTC, "limit", "buy", 0.01, 48_000, {"clientOrderId": "D1"}),
        "second_close_position_stop": lambda: ex.create_order(
            BTC, "market", "sell", 0.0, None, {**close_stop, "clientOrderId": "C2"}
        ),
    }
    err = await raises(calls[call]())
    assert type(err) is cls
    assert sim.requests_log()[-1]["code"] == code


async def test_fill_on_cancel_race(sim, ex):
    await ex.create_order(BTC, "limit", "buy", 0.01, 48_000, {"clientOrderId": "R1"})
    sim.add_fault(kind="fill_on_cancel", method="DELETE", path="/fapi/v1/order", count=1)
    err = await raises(ex.cancel_order(None, BTC, {"clientOrderId": "R1"}))
    assert isinstance(err, ccxt.OrderNotFound)
    assert (await ex.fetch_order(None, BTC, {"clientOrderId": "R1"}))["status"] == "closed"


async def test_fill_after_cancel_ack(sim, ex):
    await ex.create_order(BTC, "limit", "buy", 0.01, 48_000, {"clientOrderId": "R2"})
    sim.add_fault(kind="fill_after_cancel_ack", method="DELETE", path="/fapi/v1/order", count=1)
    answer = await ex.cancel_order(None, BTC, {"clientOrderId": "R2"})
    assert answer["status"] == "canceled"
    assert (await ex.fetch_order(None, BTC, {"clientOrderId": "R2"}))["status"] == "closed"


async def test_stop_lifecycle_through_algo_endpoints(sim, ex):
    sim.set_position("BTCUSDT", 0.02)
    s = await ex.create_order(
        BTC,
        "market",
        "sell",
        0.02,
        None,
        {"stopLossPrice": 45_000, "reduceOnly": True, "clientOrderId": "SL1"},
    )
    assert s["clientOrderId"] == "SL1" and s["triggerPrice"] == 45_000
    assert [o["clientOrderId"] for o in await ex.fetch_open_orders(BTC, params={"trigger": True})] == ["SL1"]
    sim.set_price("BTCUSDT", 44_000)
    fetched = await ex.fetch_order(None, BTC, {"clientOrderId": "SL1", "trigger": True})
    assert fetched["status"] == "closed"
    assert sim.position("BTCUSDT") == 0
    positions = await ex.fetch_positions([BTC])
    assert all(p["contracts"] in (0, None) for p in positions)


async def test_account_and_leverage(sim, ex):
    bal = await ex.fetch_balance()
    assert bal["USDT"]["total"] == pytest.approx(1_000_000)
    await ex.set_leverage(9, BTC)
    assert sim.leverage("BTCUSDT") == 9
    sim.set_position("BTCUSDT", 0.1, 50_000)
    (p,) = await ex.fetch_positions([BTC])
    assert (p["contracts"], p["side"], p["entryPrice"]) == (0.1, "long", 50_000)


async def test_bad_signature_and_key(sim):
    bad = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="wrong")
    nokey = make_exchange(api_url=sim.base_url, api_key="who", api_secret="sim-secret")
    try:
        await bad.load_markets()
        assert isinstance(await raises(bad.fetch_balance()), ccxt.AuthenticationError)
        assert isinstance(await raises(nokey.fetch_balance()), ccxt.AuthenticationError)
    finally:
        await bad.close()
        await nokey.close()


def test_control_api_rejects_bad_input(sim):
    assert httpx.post(sim.base_url + "/_sim/faults", json={"kind": "http_error"}).status_code == 422
    assert (
        httpx.post(sim.base_url + "/_sim/price", json={"symbol": "BTCUSDT", "price": -1}).status_code == 422
    )
    assert httpx.post(sim.base_url + "/_sim/price", json={"symbol": "NOPE", "price": 1}).status_code == 400
    assert httpx.request("GET", sim.base_url + "/fapi/v9/nothing").status_code == 404
