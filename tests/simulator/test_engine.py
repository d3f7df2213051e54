"""Matching-engine rules, without HTTP."""

import pytest

from services.simulator.engine import Engine, SimError


@pytest.fixture
def e():
    return Engine(["BTCUSDT", "ETHUSDT"], start_balance=100_000, clock=lambda: 1_700_000_000.0)


def code_of(fn, *a, **kw):
    with pytest.raises(SimError) as err:
        fn(*a, **kw)
    return err.value.code


def mkt(e, side, qty, **kw):
    return e.place_order(
        symbol="BTCUSDT", side=side, type="MARKET", qty=qty, price=None, client_id=kw.pop("cid", None), **kw
    )


def test_market_fill_opens_and_closes_position_with_pnl(e):
    o = mkt(e, "BUY", 0.1)  # takes the ask: mark + 2 bp
    assert (o.status, o.executed, o.avg_price) == ("FILLED", 0.1, 50_010)
    assert e.position("BTCUSDT").qty == 0.1
    e.set_price("BTCUSDT", 51_000)
    assert e.unrealized("BTCUSDT") == pytest.approx(99)
    mkt(e, "SELL", 0.1, reduce_only=True)  # hits the bid: 51,000 - 10.2
    assert e.position("BTCUSDT").qty == 0 and e.wallet == pytest.approx(100_000 + 0.1 * (50_989.8 - 50_010))


def test_reduce_only_rules(e):
    assert code_of(mkt, e, "SELL", 0.1, reduce_only=True) == -2022  # flat
    mkt(e, "BUY", 0.1)
    assert code_of(mkt, e, "BUY", 0.1, reduce_only=True) == -2022  # would increase
    o = mkt(e, "SELL", 0.5, reduce_only=True)  # larger than the position: capped
    assert o.executed == pytest.approx(0.1) and e.position("BTCUSDT").qty == 0


def test_client_id_unique_among_open_orders_only(e):
    e.place_order(symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.1, price=48_000, client_id="A")
    assert (
        code_of(
            e.place_order, symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.1, price=48_000, client_id="A"
        )
        == -4116
    )
    e.cancel_order("BTCUSDT", None, "A")
    again = e.place_order(symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.1, price=48_000, client_id="A")
    assert e.get_order("BTCUSDT", None, "A") is again  # the newest order owns the id


def test_unknown_cancel_and_lookup_codes(e):
    assert code_of(e.cancel_order, "BTCUSDT", None, "nope") == -2011
    assert code_of(e.get_order, "BTCUSDT", None, "nope") == -2013
    o = mkt(e, "BUY", 0.1, cid="F")
    assert code_of(e.cancel_order, "BTCUSDT", o.order_id, None) == -2011  # filled: nothing to cancel


def test_margin_and_notional(e):
    assert code_of(mkt, e, "BUY", 100.0) == -2019  # 5M notional at 20x > 100k
    assert code_of(mkt, e, "BUY", 0.00001) == -1111  # off the step
    assert code_of(mkt, e, "BUY", 0.0) == -4003


def test_limit_rests_then_fills_on_price_cross(e):
    o = e.place_order(symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.1, price=49_000, client_id="L")
    assert o.status == "NEW"
    e.set_price("BTCUSDT", 48_900)
    assert o.status == "FILLED" and o.avg_price == 49_000


def test_stop_triggers_and_close_position(e):
    mkt(e, "BUY", 0.2)
    a = e.place_algo(
        symbol="BTCUSDT",
        side="SELL",
        order_type="STOP_MARKET",
        qty=None,
        price=None,
        trigger_price=45_000,
        client_id="SL",
        close_position=True,
    )
    assert a.status == "NEW"
    e.set_price("BTCUSDT", 46_000)
    assert a.status == "NEW"
    e.set_price("BTCUSDT", 44_990)
    assert a.status == "FINISHED" and e.position("BTCUSDT").qty == 0
    triggered = e.orders[a.actual_order_id]
    assert triggered.client_id == "SL" and triggered.status == "FILLED"


def test_stop_placement_rules(e):
    kw = dict(
        symbol="BTCUSDT", side="SELL", order_type="STOP_MARKET", price=None, client_id="S", reduce_only=True
    )
    assert code_of(e.place_algo, qty=0.1, trigger_price=45_000, **kw) == -2022  # nothing to reduce
    mkt(e, "BUY", 0.1)
    assert code_of(e.place_algo, qty=0.1, trigger_price=55_000, **kw) == -2021  # already through
    e.place_algo(qty=0.1, trigger_price=45_000, **kw)
    assert code_of(e.place_algo, qty=0.1, trigger_price=44_000, **kw) == -4116


def test_one_close_position_stop_and_take_profit_per_direction(e):
    mkt(e, "BUY", 0.1)
    kw = dict(symbol="BTCUSDT", side="SELL", qty=None, price=None, close_position=True)
    sl = e.place_algo(order_type="STOP_MARKET", trigger_price=45_000, client_id="SL1", **kw)
    e.place_algo(order_type="TAKE_PROFIT_MARKET", trigger_price=55_000, client_id="TP1", **kw)  # other kind
    e.place_algo(  # a sized reduce-only stop is not a close-position one
        symbol="BTCUSDT",
        side="SELL",
        order_type="STOP_MARKET",
        qty=0.05,
        price=None,
        trigger_price=44_000,
        client_id="SL-sized",
        reduce_only=True,
    )
    assert (
        code_of(e.place_algo, order_type="STOP_MARKET", trigger_price=46_000, client_id="SL2", **kw) == -4130
    )
    e.cancel_algo("BTCUSDT", sl.algo_id, None)
    e.place_algo(order_type="STOP_MARKET", trigger_price=46_000, client_id="SL2", **kw)  # free again


def test_operator_hooks(e):
    e.place_order(symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.1, price=48_000, client_id="X")
    assert e.operator_cancel("BTCUSDT", "X") == "order"
    assert code_of(e.operator_cancel, "BTCUSDT", "X") == -2011
    e.set_position("ETHUSDT", -2.0, 3000)
    assert e.position("ETHUSDT").qty == -2.0


def test_reset_and_unknown_symbol(e):
    mkt(e, "BUY", 0.1)
    e.reset()
    assert e.position("BTCUSDT").qty == 0 and e.wallet == 100_000
    assert code_of(e.market, "DOGEUSDT") == -1121


def test_random_walk_is_seeded():
    a, b = Engine(["BTCUSDT"], seed=7), Engine(["BTCUSDT"], seed=7)
    for _ in range(10):
        a.random_walk()
        b.random_walk()
    assert a.prices == b.prices and a.prices["BTCUSDT"] != 50_000
