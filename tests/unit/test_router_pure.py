import pytest

from libs.common.ids import Bucket
from libs.common.state_machine import OrderState
from libs.venue.parsing import order_state_from_ccxt, venue_order_from_ccxt
from libs.venue.requests import create_order_args
from services.router.submit import as_market_exit, reducible_qty
from tests.builders import intent


@pytest.mark.parametrize(
    "side,pos,qty,expect",
    [
        ("sell", 1.0, 0.4, 0.4),
        ("sell", 0.3, 0.4, 0.3),  # capped to the position
        ("sell", 0.0, 0.4, None),  # flat: nothing to reduce
        ("sell", -1.0, 0.4, None),  # a sell would increase a short
        ("buy", -0.5, 1.0, 0.5),
        ("buy", 0.5, 1.0, None),
        ("sell", 2.0, None, 2.0),  # close-position: the whole thing
    ],
)
def test_reducible_qty(side, pos, qty, expect):
    assert reducible_qty(side, pos, qty) == expect


def test_trigger_crossed_becomes_reduce_only_market_with_same_client_id():
    sl = intent(bucket=Bucket.SL, order_type="stop_market", stop_price=100.0, close_position=True, qty=None)
    m = as_market_exit(sl)
    assert (m.order_type, m.stop_price, m.reduce_only, m.close_position) == ("market", None, True, False)
    assert m.client_order_id == sl.client_order_id and not m.is_trigger


def test_create_order_args():
    typ, side, amount, price, params = create_order_args(intent(order_type="limit", price=10.0), 0.5)
    assert (typ, side, amount, price) == ("limit", "buy", 0.5, 10.0)
    assert params == {"clientOrderId": intent().client_order_id}
    sl = intent(bucket=Bucket.SL, side="sell", order_type="stop_market", stop_price=90.0, reduce_only=True)
    typ, _, _, price, params = create_order_args(sl, 0.01)
    assert typ == "market" and price is None
    assert params == {"clientOrderId": sl.client_order_id, "reduceOnly": True, "stopLossPrice": 90.0}
    tp = intent(
        bucket=Bucket.TP,
        side="sell",
        order_type="take_profit_market",
        stop_price=110.0,
        close_position=True,
        qty=None,
    )
    _, _, amount, _, params = create_order_args(tp, None)
    assert (
        params["closePosition"] is True and params["takeProfitPrice"] == 110.0 and "reduceOnly" not in params
    )


@pytest.mark.parametrize(
    "status,filled,state",
    [
        ("open", 0, OrderState.ACKED),
        ("open", 0.5, OrderState.PARTIALLY_FILLED),
        ("closed", 1, OrderState.FILLED),
        ("canceled", 0, OrderState.CANCELED),
        ("expired", 0, OrderState.EXPIRED),
        ("rejected", 0, OrderState.REJECTED),
        ("weird", 0, OrderState.UNKNOWN),  # never guess that an order is gone
        (None, 0, OrderState.UNKNOWN),
    ],
)
def test_ccxt_status_mapping(status, filled, state):
    assert order_state_from_ccxt({"status": status, "filled": filled}) is state


def test_venue_order_from_ccxt_reads_raw_status_and_ids():
    o = venue_order_from_ccxt(
        {
            "id": 42,
            "clientOrderId": "X",
            "status": "closed",
            "filled": 1.0,
            "amount": 1.0,
            "average": 10.5,
            "info": {"algoStatus": "FINISHED"},
        },
        "fallback",
    )
    assert (o.exchange_order_id, o.client_order_id, o.venue_status, o.average) == (
        "42",
        "X",
        "FINISHED",
        10.5,
    )
