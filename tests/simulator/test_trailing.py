"""Trailing stops (TRAILING_STOP_MARKET on the algo endpoint): the engine's rules, and the real ccxt
client placing one with the router's own argument builder."""

from __future__ import annotations

import copy

import ccxt
import pytest

from libs.common.ids import Bucket
from libs.common.protection import trailing_stop
from libs.venue.requests import create_order_args
from services.simulator.engine import Engine, SimError

BTC = "BTC/USDT:USDT"


@pytest.fixture
def e() -> Engine:
    eng = Engine(["BTCUSDT"], start_balance=100_000, clock=lambda: 1_700_000_000.0)
    eng.set_price("BTCUSDT", 50_000)
    eng.set_position("BTCUSDT", 0.1, 50_000)
    return eng


def trail(e: Engine, side: str = "SELL", rate: float | None = 1.0, activate: float | None = None, **kw):
    args = dict(
        symbol="BTCUSDT",
        side=side,
        order_type="TRAILING_STOP_MARKET",
        qty=0.1,
        price=None,
        trigger_price=None,
        client_id="TRAIL1",
        reduce_only=True,
        callback_rate=rate,
        activate_price=activate,
    )
    args.update(kw)
    return e.place_algo(**args)


@pytest.mark.parametrize(
    "kw,code",
    [
        ({"rate": 0.05}, -2007),  # below 0.1 %
        ({"rate": 10.5}, -2007),  # above 10 %
        ({"rate": 1.25}, -2007),  # one decimal only
        ({"rate": None}, -1102),
        ({"close_position": True, "qty": None, "reduce_only": False}, -4136),
        ({"activate": 49_000.0}, -2021),  # a sell trailing stop activating below the market: already there
        ({"activate": 51_000.05}, -4014),
        ({"side": "BUY"}, -2022),  # would not reduce a long
    ],
)
def test_refusals_leave_the_venue_unchanged(e, kw, code):
    before = copy.deepcopy(e.algos)
    with pytest.raises(SimError) as err:
        trail(e, **kw)
    assert err.value.code == code
    assert e.algos == before


def test_without_activation_it_tracks_the_high_and_triggers_on_the_retrace(e):
    a = trail(e, rate=2.0)
    assert a.activated and a.best_price == 50_000
    e.set_price("BTCUSDT", 52_000)
    e.set_price("BTCUSDT", 51_000)  # -1.9 % from the high: not yet
    assert a.open and a.best_price == 52_000
    e.set_price("BTCUSDT", 50_960)  # -2.0 %
    assert a.status == "FINISHED" and e.pos_qty("BTCUSDT") == 0
    assert e.orders[a.actual_order_id].reduce_only


def test_with_activation_it_waits_for_the_price_then_trails(e):
    a = trail(e, rate=1.0, activate=51_000.0)
    e.set_price("BTCUSDT", 49_000)  # a drop before activation does nothing
    assert a.open and not a.activated
    e.set_price("BTCUSDT", 51_500)
    assert a.activated and a.best_price == 51_500
    e.set_price("BTCUSDT", 51_000)  # -0.97 %
    assert a.open
    e.set_price("BTCUSDT", 50_985)  # -1.0 %
    assert a.status == "FINISHED" and e.pos_qty("BTCUSDT") == 0


def test_buy_trailing_stop_protects_a_short_from_the_low(e):
    e.set_position("BTCUSDT", -0.1, 50_000)
    a = trail(e, side="BUY", rate=0.5, activate=49_500.0)
    e.set_price("BTCUSDT", 49_000)
    assert a.activated and a.best_price == 49_000
    e.set_price("BTCUSDT", 49_245)  # +0.5 % from the low
    assert a.status == "FINISHED" and e.pos_qty("BTCUSDT") == 0


def test_a_trailing_stop_is_reduce_only_with_a_size_and_stays_when_the_position_goes_flat(e):
    a = trail(e)
    e.set_position("BTCUSDT", 0.0)  # the venue expires close-position orders only
    assert a.open


@pytest.mark.integration
async def test_placed_through_ccxt_with_the_routers_arguments(sim, ex):
    sim.set_price("BTCUSDT", 50_000)
    sim.set_position("BTCUSDT", 0.01, 50_000)
    intent = trailing_stop(
        symbol=BTC,
        position_side="buy",
        qty=0.01,
        callback_rate=1.5,
        activation_price=51_000.0,
        ref_price=50_000.0,
        source="test",
        id_scope="test",
        key="trail-ccxt",
    )
    assert intent.bucket is Bucket.SL and intent.is_trigger
    typ, side, amount, price, params = create_order_args(intent, intent.qty)
    o = await ex.create_order(BTC, typ, side, amount, price, params)
    assert o["clientOrderId"] == intent.client_order_id
    (sent,) = [r for r in sim.requests_log() if r["path"] == "/fapi/v1/algoOrder" and r["method"] == "POST"]
    assert sent["params"]["type"] == "TRAILING_STOP_MARKET"
    assert (sent["params"]["callbackRate"], sent["params"]["activatePrice"]) == ("1.5", "51000")
    assert sent["params"]["reduceOnly"].lower() == "true"
    (listed,) = await ex.fetch_open_orders(BTC, params={"trigger": True})
    assert listed["info"]["orderType"] == "TRAILING_STOP_MARKET" and listed["info"]["callbackRate"] == "1.5"
    sim.set_price("BTCUSDT", 52_000)
    sim.set_price("BTCUSDT", 51_200)  # -1.54 % from the high
    done = await ex.fetch_order(None, BTC, {"clientOrderId": intent.client_order_id, "trigger": True})
    assert done["info"]["algoStatus"] == "FINISHED" and sim.position("BTCUSDT") == 0


@pytest.mark.integration
async def test_bad_callback_rate_is_refused_as_on_the_venue(sim, ex):
    sim.set_position("BTCUSDT", 0.01, 50_000)
    params = {"trailingPercent": 12, "reduceOnly": True, "clientOrderId": "TRAILBAD"}
    with pytest.raises(ccxt.ExchangeError) as err:
        await ex.create_order(BTC, "market", "sell", 0.01, None, params)
    assert '"code":-2007' in str(err.value).replace(" ", "")
    assert sim.state()["algo_orders"] == []
