"""A create's raw answer read directly equals ccxt's parse of it (``venue_order_from_ccxt(parse_order)``).

The answers come from the simulator's engine and wire (what the router is answered in every test and
bench), from Binance's documentation, and from perturbations of them (fields missing, empty, zero,
numbers instead of strings, other statuses); answers outside the shapes read here must say so (None).
"""

from __future__ import annotations

import copy
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from libs.common.state_machine import OrderState
from libs.venue.parsing import venue_order_from_ccxt
from libs.venue.raw_orders import order_from_answer
from services.simulator import wire
from services.simulator.engine import Engine, Order
from tests.builders import SIM_SYMBOLS, offline_client

BTC = "BTC/USDT:USDT"


@pytest_asyncio.fixture
async def client() -> AsyncIterator[Any]:
    c = await offline_client()
    yield c
    await c.close()


def ccxt_reading(client: Any, raw: dict, cid: str, is_trigger: bool):
    return venue_order_from_ccxt(
        client.parse_order(copy.deepcopy(raw), client.markets[BTC]), cid, is_trigger=is_trigger
    )


def ours(raw: dict, cid: str, is_trigger: bool):
    return order_from_answer(copy.deepcopy(raw), cid, is_trigger=is_trigger, market_id="BTCUSDT", symbol=BTC)


def simulator_answers() -> list[tuple[str, dict, bool]]:
    """(name, answer, is_trigger): what the simulator answers creates (and later reads) of each kind."""
    e = Engine(SIM_SYMBOLS, seed=1)
    out: list[tuple[str, dict, bool]] = []
    filled = e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.02, price=None, client_id="E1")
    out.append(("market FILLED", wire.order(filled), False))
    resting = e.place_order(
        symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.01, price=49_000.0, client_id="L1"
    )
    out.append(("limit NEW", wire.order(resting), False))
    out.append(("limit CANCELED", wire.order(e.cancel_order("BTCUSDT", None, "L1")), False))
    exit_ = e.place_order(
        symbol="BTCUSDT", side="SELL", type="MARKET", qty=0.005, price=None, client_id="X1", reduce_only=True
    )
    out.append(("reduce-only FILLED", wire.order(exit_), False))
    partial = Order(7, "P1", "BTCUSDT", "BUY", "LIMIT", 0.03, 50_010.0, False, "GTC", 1, 2)
    partial.status, partial.executed, partial.avg_price, partial.cum_quote = (
        "PARTIALLY_FILLED",
        0.01,
        50_001.5,
        500.015,
    )
    out.append(("limit PARTIALLY_FILLED", wire.order(partial), False))
    expired = Order(8, "P2", "BTCUSDT", "SELL", "LIMIT", 0.03, 50_010.0, True, "IOC", 1, 2, status="EXPIRED")
    out.append(("limit EXPIRED", wire.order(expired), False))
    stop = e.place_algo(
        symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET", qty=None, price=None,
        trigger_price=49_000.0, client_id="S1", close_position=True,
    )  # fmt: skip
    out.append(("stop close-position NEW", wire.algo(stop), True))
    tp = e.place_algo(
        symbol="BTCUSDT", side="SELL", order_type="TAKE_PROFIT_MARKET", qty=0.01, price=None,
        trigger_price=52_000.0, client_id="T1", reduce_only=True,
    )  # fmt: skip
    out.append(("take profit NEW", wire.algo(tp), True))
    trail = e.place_algo(
        symbol="BTCUSDT", side="SELL", order_type="TRAILING_STOP_MARKET", qty=0.01, price=None,
        trigger_price=None, client_id="R1", reduce_only=True, callback_rate=1.0,
    )  # fmt: skip
    out.append(("trailing NEW", wire.algo(trail), True))
    trail_act = e.place_algo(
        symbol="BTCUSDT", side="SELL", order_type="TRAILING_STOP_MARKET", qty=0.01, price=None,
        trigger_price=None, client_id="R2", reduce_only=True, callback_rate=0.5, activate_price=51_000.0,
    )  # fmt: skip
    out.append(("trailing activation NEW", wire.algo(trail_act), True))
    out.append(("algo CANCELED", wire.algo(e.cancel_algo("BTCUSDT", None, "T1")), True))
    e.set_price("BTCUSDT", 48_900.0)  # the stop triggers: the order it placed fills
    out.append(("algo triggered", wire.algo(e.get_algo("BTCUSDT", None, "S1")), True))
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.01, price=None, client_id="E2")
    stop2 = e.place_algo(
        symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET", qty=None, price=None,
        trigger_price=47_000.0, client_id="S2", close_position=True,
    )  # fmt: skip
    e.place_order(
        symbol="BTCUSDT", side="SELL", type="MARKET", qty=0.02, price=None, client_id="X2", reduce_only=True
    )
    out.append(
        ("algo EXPIRED (position closed)", wire.algo(e.get_algo("BTCUSDT", None, stop2.client_id)), True)
    )
    return out


# Binance's documented answers (New Order, New Algo Order), as published
DOC_ORDER = {
    "clientOrderId": "testOrder", "cumQty": "0", "cumQuote": "0", "executedQty": "0", "orderId": 22542179,
    "avgPrice": "0.00000", "origQty": "10", "price": "0", "reduceOnly": False, "side": "BUY",
    "positionSide": "SHORT", "status": "NEW", "stopPrice": "9300", "closePosition": False, "symbol": "BTCUSDT",
    "timeInForce": "GTD", "type": "TRAILING_STOP_MARKET", "origType": "TRAILING_STOP_MARKET",
    "activatePrice": "9020", "priceRate": "0.3", "updateTime": 1566818724722, "workingType": "CONTRACT_PRICE",
    "priceProtect": False, "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 1693207680000,
}  # fmt: skip
DOC_ALGO = {
    "algoId": 2146760, "clientAlgoId": "6B2I9XVcJpCjqPAJ4YoFX7", "algoType": "CONDITIONAL",
    "orderType": "TAKE_PROFIT", "symbol": "BTCUSDT", "side": "SELL", "positionSide": "BOTH",
    "timeInForce": "GTC", "quantity": "0.01", "algoStatus": "NEW", "triggerPrice": "750.000",
    "price": "750.000", "icebergQuantity": None, "selfTradePreventionMode": "EXPIRE_MAKER",
    "workingType": "CONTRACT_PRICE", "priceMatch": "NONE", "closePosition": False, "priceProtect": False,
    "reduceOnly": False, "activatePrice": "", "callbackRate": "", "createTime": 1750485492076,
    "updateTime": 1750485492076, "triggerTime": 0, "goodTillDate": 0,
}  # fmt: skip

ANSWERS = [*simulator_answers(), ("doc order", DOC_ORDER, False), ("doc algo", DOC_ALGO, True)]


@pytest.mark.parametrize("name,raw,is_trigger", ANSWERS, ids=[a[0] for a in ANSWERS])
async def test_the_raw_reading_is_ccxts(client, name, raw, is_trigger):
    cid = str(raw.get("clientOrderId") or raw.get("clientAlgoId"))
    got = ours(raw, cid, is_trigger)
    assert got is not None, "a shape Binance answers creates with must be read directly"
    assert got == ccxt_reading(client, raw, cid, is_trigger)


def test_the_simulator_answers_cover_the_lifecycle():
    states = {(is_trigger, ours(raw, "C", is_trigger).state) for _, raw, is_trigger in ANSWERS}  # type: ignore[union-attr]
    for s in (
        OrderState.ACKED,
        OrderState.FILLED,
        OrderState.PARTIALLY_FILLED,
        OrderState.CANCELED,
        OrderState.EXPIRED,
    ):
        assert (False, s) in states
    for s in (OrderState.ACKED, OrderState.CANCELED, OrderState.EXPIRED, OrderState.FILLED):
        assert (True, s) in states
    triggered = next(raw for name, raw, _ in ANSWERS if name == "algo triggered")
    assert ours(triggered, "S1", True).actual_order_id  # type: ignore[union-attr]


_FIELDS = [
    "status", "algoStatus", "executedQty", "origQty", "quantity", "avgPrice", "cumQuote", "orderId", "algoId",
    "clientOrderId", "clientAlgoId", "symbol", "side", "type", "orderType", "stopPrice", "triggerPrice",
    "reduceOnly", "closePosition", "actualOrderId", "positionSide",
]  # fmt: skip
_VALUES: list[Any] = [
    None, "", "0", "0.000", 0, 0.0, 1, 2.5, "0.01", "123.45", "7", True, False, "true", "false",
    "NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED", "TRIGGERING", "TRIGGERED", "FINISHED",
    "REJECTED", "PENDING_CANCEL", "S", "WEIRD", "BUY", "sell", "MARKET", "LIMIT", "STOP_MARKET",
    "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET", "TAKE_PROFIT", "ETHUSDT", "BTCUSDT", "abc", [], {},
]  # fmt: skip


async def test_perturbed_answers_are_read_as_ccxt_reads_them_or_left_to_it(client):
    rng = random.Random(14)
    direct = 0
    for n in range(1500):
        _, base, is_trigger = ANSWERS[n % len(ANSWERS)]
        raw = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            field = rng.choice(_FIELDS)
            if rng.random() < 0.2:
                raw.pop(field, None)
            else:
                raw[field] = rng.choice(_VALUES)
        for cid in ("C1", ""):
            got = ours(raw, cid, is_trigger)
            if got is None:
                continue
            direct += 1
            assert got == ccxt_reading(client, raw, cid, is_trigger), raw
    assert direct > 1500  # most perturbations stay in the shapes read directly


@pytest.mark.parametrize(
    "change",
    [
        {"code": -2010, "msg": "Order would immediately trigger."},
        {"fills": [{"price": "50000", "qty": "0.01", "commission": "0.1", "commissionAsset": "USDT"}]},
        {"symbol": "ETHUSDT"},
        {"executedQty": True},
        {"avgPrice": "0", "executedQty": "0.01", "cumQuote": "500"},  # ccxt derives the average from the cost
    ],
    ids=["error code", "fills", "another market", "bool quantity", "fill without average"],
)
async def test_shapes_we_do_not_read_are_left_to_ccxt(client, change):
    raw = {**DOC_ORDER, **change}
    assert ours(raw, "C1", False) is None
    ccxt_reading(client, raw, "C1", False)  # ccxt still reads them (the create's fallback)


async def test_an_answer_nobody_can_read_fails_in_ccxt_as_before(client):
    raw = {**DOC_ORDER, "origQty": "abc"}
    assert ours(raw, "C1", False) is None
    with pytest.raises(ValueError):  # not a venue refusal: it propagates (binance_usdm's edge)
        ccxt_reading(client, raw, "C1", False)
