"""The one placement helper for protective orders (libs/common/protection.py), the trailing-stop
intent schema, and the router's ccxt arguments for a trailing stop."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderIntent, Signal
from libs.common.protection import (
    default_stop_price,
    exit_side,
    market_exit,
    position_side,
    stop_loss,
    trailing_activation,
)
from libs.venue.requests import create_order_args
from tests.builders import stage1

BTC = "BTC/USDT:USDT"


def test_sides_and_default_distance():
    assert (exit_side("buy"), exit_side("sell")) == ("sell", "buy")
    assert (position_side(0.5), position_side(-0.5)) == ("buy", "sell")
    assert default_stop_price("buy", 100.0, 0.02) == pytest.approx(98.0)
    assert default_stop_price("sell", 100.0, 0.02) == pytest.approx(102.0)


def test_stage1_keeps_the_ids_it_always_had():
    """A fill redelivered across the upgrade must produce the same stop, which the bus and router dedupe."""
    (sl,) = stage1()
    iid = make_intent_id("stage1", "ientry", Bucket.SL)
    assert (sl.intent_id, sl.correlation_id, sl.client_order_id) == (
        iid,
        make_correlation_id(iid),
        make_client_order_id(iid, Bucket.SL),
    )
    assert sl.source == "entry.stage1" and sl.parent_correlation_id == "centry"
    assert sl.close_position and sl.side == "sell" and sl.stop_price == pytest.approx(49_000.0)
    # deterministic in everything but the time it was built at (ts_ms is the clock's)
    assert [i.model_dump(exclude={"ts_ms"}) for i in stage1()] == [
        i.model_dump(exclude={"ts_ms"}) for i in stage1()
    ]


def test_stage1_with_everything_a_signal_can_ask_for():
    sl, tp, tr = stage1(
        entry_side="sell",
        stop_loss_price=51_000.0,
        take_profit_price=45_000.0,
        trailing_callback_rate=1.5,
        trailing_activation_price=48_000.0,
    )
    assert (sl.order_type, sl.side, sl.stop_price, sl.close_position) == (
        "stop_market",
        "buy",
        51_000.0,
        True,
    )
    assert (tp.order_type, tp.side, tp.stop_price, tp.close_position) == (
        "take_profit_market",
        "buy",
        45_000.0,
        True,
    )
    assert (tr.order_type, tr.side, tr.qty, tr.reduce_only, tr.close_position) == (
        "trailing_stop_market",
        "buy",
        0.02,
        True,
        False,
    )
    assert (tr.callback_rate, tr.activation_price, tr.bucket) == (1.5, 48_000.0, Bucket.SL)
    assert len({sl.client_order_id, tp.client_order_id, tr.client_order_id}) == 3
    assert all(i.is_trigger for i in (sl, tp, tr))


@pytest.mark.parametrize(
    "side,activation,ref,sent",
    [
        ("buy", 52_000.0, 50_000.0, 52_000.0),  # a long's trailing stop activates above the market
        ("buy", 49_000.0, 50_000.0, None),  # already reached: tracks from the start instead of -2021
        ("sell", 48_000.0, 50_000.0, 48_000.0),
        ("sell", 50_000.0, 50_000.0, None),
        ("buy", None, 50_000.0, None),
        ("buy", 49_000.0, 0.0, 49_000.0),  # no reference price: leave it to the venue
    ],
)
def test_trailing_activation_never_already_reached(side, activation, ref, sent):
    assert trailing_activation(side, activation, ref) == sent


def test_reconciler_stop_and_emergency_exit():
    sl = stop_loss(
        symbol=BTC, position_side="sell", stop_price=51_000.0, source="reconciler", id_scope="r", key="k"
    )
    assert (sl.side, sl.close_position, sl.qty, sl.bucket) == ("buy", True, None, Bucket.SL)
    x = market_exit(
        symbol=BTC, position_qty=-0.03, source="reconciler.emergency", id_scope="e", key="k", ts_ms=5
    )
    assert (x.bucket, x.order_type, x.side, x.qty, x.reduce_only, x.ts_ms) == (
        Bucket.EXIT,
        "market",
        "buy",
        0.03,
        True,
        5,
    )
    assert x.is_exit and not x.is_trigger


def trailing_fields(**kw):
    args = dict(
        intent_id="i1",
        correlation_id="c1",
        client_order_id="SL1",
        bucket=Bucket.SL,
        symbol=BTC,
        side="sell",
        order_type="trailing_stop_market",
        qty=0.01,
        callback_rate=1.0,
        reduce_only=True,
    )
    args.update(kw)
    return args


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"callback_rate": None}, "needs callback_rate"),
        ({"callback_rate": 0.05}, "greater than or equal to 0.1"),
        ({"callback_rate": 11}, "less than or equal to 10"),
        ({"close_position": True, "qty": None, "reduce_only": False}, "-4136"),
        ({"order_type": "stop_market", "stop_price": 49_000.0}, "trailing_stop_market orders only"),
    ],
)
def test_trailing_intent_invariants(kw, needle):
    with pytest.raises(ValidationError, match=needle):
        OrderIntent(**trailing_fields(**kw))


def test_signal_trailing_fields():
    s = Signal(signal_id="s", symbol=BTC, side="buy", qty=0.01, trailing_callback_rate=2.0)
    assert s.trailing_activation_price is None
    with pytest.raises(ValidationError, match="needs a trailing callback rate"):
        Signal(signal_id="s", symbol=BTC, side="buy", qty=0.01, trailing_activation_price=52_000.0)


def test_router_ccxt_arguments_for_a_trailing_stop():
    intent = OrderIntent(**trailing_fields(activation_price=52_000.0))
    assert create_order_args(intent, 0.01) == (
        "market",
        "sell",
        0.01,
        None,
        {
            "clientOrderId": "SL1",
            "reduceOnly": True,
            "trailingPercent": 1.0,
            "trailingTriggerPrice": 52_000.0,
        },
    )
    _, _, _, _, params = create_order_args(OrderIntent(**trailing_fields()), 0.01)
    assert "trailingTriggerPrice" not in params
