"""The venue rules a forgiving simulator would hide, on the engine itself (no HTTP).

Each rule is one Binance USD-M enforces; every refusal must leave the engine unchanged.
"""

from __future__ import annotations

import copy

import pytest

from services.simulator.engine import Engine, SimError

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def e(clock: Clock) -> Engine:
    return Engine(["BTCUSDT", "ETHUSDT", "S001USDT"], start_balance=100_000, clock=clock)


def state(e: Engine) -> tuple:
    return (
        copy.deepcopy(e.orders),
        copy.deepcopy(e.algos),
        copy.deepcopy(e.positions),
        e.wallet,
        e._next_id,
    )


def refused(e: Engine, fn, **kw) -> int:
    """The code of a refusal, checking that the refusal changed nothing."""
    before = state(e)
    with pytest.raises(SimError) as err:
        fn(e, **kw)
    assert state(e) == before, "a refused request changed venue state"
    return err.value.code


def order(e: Engine, **kw):
    args = dict(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.01, price=None, client_id=None)
    args.update(kw)
    return e.place_order(**args)


def stop(e: Engine, **kw):
    args = dict(
        symbol="BTCUSDT",
        side="SELL",
        order_type="STOP_MARKET",
        qty=None,
        price=None,
        trigger_price=45_000,
        client_id=None,
        close_position=True,
    )
    args.update(kw)
    return e.place_algo(**args)


# ----------------------------------------------------------------------------- prices


def test_marketable_limit_fills_at_the_book_not_at_its_limit(e):
    o = order(e, type="LIMIT", price=52_000)  # inside the 5% band, far above the ask
    assert o.status == "FILLED" and o.avg_price == 50_010  # the ask, not 52,000
    s = order(e, side="SELL", type="LIMIT", price=48_000, reduce_only=True)
    assert s.status == "FILLED" and s.avg_price == 49_990  # the bid


def test_resting_limit_fills_at_its_own_price_when_the_market_comes(e):
    o = order(e, type="LIMIT", price=49_000)
    assert o.status == "NEW"
    e.set_price("BTCUSDT", 49_005)  # ask 49,014.8: still above the limit
    assert o.status == "NEW"
    e.set_price("BTCUSDT", 48_980)
    assert o.status == "FILLED" and o.avg_price == 49_000


def test_percent_price_band(e):
    assert refused(e, order, type="LIMIT", price=52_600) == -4016  # above mark * 1.05
    assert refused(e, order, type="LIMIT", price=47_400) == -4024  # below mark * 0.95
    order(e, type="LIMIT", price=47_600)  # inside: rests


def test_tick_step_and_min_notional(e):
    assert refused(e, order, type="LIMIT", price=49_000.05) == -4014
    assert refused(e, order, qty=0.0105) == -1111
    assert refused(e, stop, trigger_price=45_000.05) == -4014
    # S001USDT: 11 USDT a contract, step 0.1 -> 0.1 is 1.1 USDT, under the 5 USDT minimum
    assert refused(e, order, symbol="S001USDT", qty=0.1) == -4164


@pytest.mark.parametrize("cid", ["x" * 37, "has space", "emoji\u2713", "semi;colon"])
def test_client_id_character_set(e, cid):
    assert refused(e, order, client_id=cid) == -1100
    e.set_position("BTCUSDT", 0.01)
    assert refused(e, stop, client_id=cid) == -1100


def test_client_id_charset_accepts_the_venue_range(e):
    order(e, client_id="A.b:c/d_e-f0" + "z" * 24)  # 36 chars, every allowed symbol


# ----------------------------------------------------------------------------- reduce-only / closePosition


def test_close_position_rules(e):
    assert refused(e, stop) == -4509  # no position
    e.set_position("BTCUSDT", 0.01)
    assert refused(e, stop, reduce_only=True) == -1106
    assert refused(e, stop, qty=0.01) == -4137
    a = stop(e)
    assert a.status == "NEW" and a.time_in_force == "GTE_GTC"


def test_close_position_orders_expire_when_the_position_goes_flat(e):
    order(e, qty=0.02)
    sl = stop(e, client_id="SL")
    tp = stop(e, order_type="TAKE_PROFIT_MARKET", trigger_price=55_000, client_id="TP")
    sized = stop(e, close_position=False, reduce_only=True, qty=0.02, client_id="SIZED")
    order(e, side="SELL", qty=0.02, reduce_only=True)
    assert (sl.status, tp.status) == ("EXPIRED", "EXPIRED")
    assert sized.status == "NEW"  # a reduce-only order with a size gets no such help


def test_close_position_orders_expire_when_the_position_flips(e):
    order(e, qty=0.02)
    sl = stop(e, client_id="SL")
    order(e, side="SELL", qty=0.05)  # long 0.02 -> short 0.03
    assert sl.status == "EXPIRED"


def test_position_changed_behind_the_back_expires_them_too(e):
    e.set_position("BTCUSDT", 0.02)
    sl = stop(e)
    e.set_position("BTCUSDT", 0)
    assert sl.status == "EXPIRED"


def test_keep_protection_fault_leaves_them_resting(e):
    e.keep_protection = lambda symbol: symbol == "BTCUSDT"
    e.set_position("BTCUSDT", 0.02)
    sl = stop(e)
    e.set_position("BTCUSDT", 0)
    assert sl.status == "NEW"


def test_the_triggering_stop_expires_its_sibling_take_profit(e):
    order(e, qty=0.02)
    sl = stop(e, client_id="SL")
    tp = stop(e, order_type="TAKE_PROFIT_MARKET", trigger_price=55_000, client_id="TP")
    e.set_price("BTCUSDT", 44_990)
    assert sl.status == "FINISHED" and tp.status == "EXPIRED"
    assert e.position("BTCUSDT").qty == 0


def test_resting_reduce_only_limit_expires_when_its_position_is_gone(e):
    order(e, qty=0.02)
    tp = order(e, side="SELL", type="LIMIT", qty=0.02, price=51_000, reduce_only=True)
    order(e, side="SELL", qty=0.02, reduce_only=True)  # closed by hand
    e.set_price("BTCUSDT", 51_500)  # the market reaches the old take-profit
    assert tp.status == "EXPIRED" and tp.executed == 0
    assert e.position("BTCUSDT").qty == 0  # never opened a short


def test_reduce_only_never_flips(e):
    order(e, qty=0.02)
    tp = order(e, side="SELL", type="LIMIT", qty=0.05, price=51_000, reduce_only=True)
    e.set_price("BTCUSDT", 51_500)
    assert tp.executed == pytest.approx(0.02) and e.position("BTCUSDT").qty == 0


def test_sized_stop_left_behind_triggers_into_nothing(e):
    e.set_position("BTCUSDT", 0.02)
    sized = stop(e, close_position=False, reduce_only=True, qty=0.02, client_id="OLD")
    e.set_position("BTCUSDT", 0)
    e.set_price("BTCUSDT", 44_000)
    assert sized.status == "EXPIRED" and e.position("BTCUSDT").qty == 0


# ----------------------------------------------------------------------------- triggers and query lag


def test_triggered_stop_becomes_a_visible_market_order(e):
    order(e, qty=0.02)
    sl = stop(e, client_id="SL")
    e.set_price("BTCUSDT", 44_990)
    assert sl.status == "FINISHED" and sl.actual_order_id is not None
    made = e.get_order("BTCUSDT", sl.actual_order_id, None)
    assert (made.status, made.type, made.orig_type) == ("FILLED", "MARKET", "STOP_MARKET")
    assert made.avg_price == e.book("BTCUSDT", "SELL")  # a market order: the bid, not the trigger


def test_query_lag_hides_an_accepted_order(e, clock):
    e.query_lag_ms = 2_000
    o = order(e, type="LIMIT", price=49_000, client_id="LAG")
    assert o.status == "NEW"
    with pytest.raises(SimError) as err:
        e.get_order("BTCUSDT", None, "LAG")
    assert err.value.code == -2013
    assert e.open_orders("BTCUSDT") == []
    with pytest.raises(SimError) as err:
        e.cancel_order("BTCUSDT", None, "LAG")
    assert err.value.code == -2011 and o.status == "NEW"  # still live: "unknown" is not "absent"
    # the matching engine knows it: a resend of the same id while it is open is a duplicate
    with pytest.raises(SimError) as err:
        order(e, type="LIMIT", price=49_000, client_id="LAG")
    assert err.value.code == -4116
    clock.t += 2.0
    assert e.get_order("BTCUSDT", None, "LAG") is o and e.open_orders("BTCUSDT") == [o]


def test_hide_one_order(e, clock):
    o = order(e, client_id="F")
    e.hide(o.order_id, 500)
    with pytest.raises(SimError):
        e.get_order("BTCUSDT", o.order_id, None)
    clock.t += 0.5
    assert e.get_order("BTCUSDT", None, "F").status == "FILLED"
