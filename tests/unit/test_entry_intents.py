"""Entry's pure steps: signal -> entry intent (services/entry/intents.py) and the stage-1 protection
it asks for after a fill (libs/common/protection.py ``stage1_intents``, as entry calls it)."""

from __future__ import annotations

import pytest

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import Signal, encode
from services.entry.intents import entry_intent_from_signal
from tests.builders import stage1

BTC = "BTC/USDT:USDT"


def entry_signal(**kw) -> Signal:
    return Signal(**{"signal_id": "s1", "symbol": BTC, "side": "buy", "qty": 0.01, "ts_ms": 1_000, **kw})


def test_entry_intent_is_the_signal_byte_for_byte_again():
    s = entry_signal(confidence=0.8, stop_loss_price=49_000.0)
    i = entry_intent_from_signal(s, default_leverage=5)
    iid = make_intent_id("signal", "s1", Bucket.ENTRY)
    assert (i.intent_id, i.correlation_id, i.client_order_id) == (
        iid,
        make_correlation_id(iid),
        make_client_order_id(iid, Bucket.ENTRY),
    )
    assert i.bucket is Bucket.ENTRY and not i.is_exit and i.source == "entry"
    assert (i.symbol, i.side, i.order_type, i.qty) == (BTC, "buy", "market", 0.01)
    assert (i.signal_id, i.confidence) == ("s1", 0.8)
    # the signal's time, so a copy republished after the dedup window is recognisably stale
    assert i.ts_ms == 1_000
    assert encode(entry_intent_from_signal(s, default_leverage=5)) == encode(i)  # a redelivery: same bytes
    other = entry_intent_from_signal(entry_signal(signal_id="s2"), default_leverage=5)
    assert other.intent_id != i.intent_id and other.client_order_id != i.client_order_id


def test_entry_intent_leverage_and_price():
    assert entry_intent_from_signal(entry_signal(), default_leverage=5).leverage == 5
    assert entry_intent_from_signal(entry_signal(leverage=3), default_leverage=5).leverage == 3
    assert entry_intent_from_signal(entry_signal(), default_leverage=5).price is None
    limit = entry_intent_from_signal(
        entry_signal(order_type="limit", price=48_000.0, side="sell"), default_leverage=5
    )
    assert (limit.order_type, limit.price, limit.side) == ("limit", 48_000.0, "sell")


def test_stage1_stop_first_at_the_signals_price_else_the_default_distance():
    (sl,) = stage1(entry_side="sell", fill_price=100.0)
    assert sl.order_type == "stop_market" and sl.side == "buy" and sl.stop_price == pytest.approx(102.0)
    assert sl.close_position and sl.is_exit and sl.bucket is Bucket.SL
    (sl,) = stage1(stop_loss_price=47_500.0)
    assert sl.stop_price == 47_500.0
    intents = stage1(take_profit_price=55_000.0)
    assert [i.order_type for i in intents] == ["stop_market", "take_profit_market"]
    assert all(i.parent_correlation_id == "centry" for i in intents)


def test_stage1_trailing_stop_needs_a_quantity():
    assert len(stage1(trailing_callback_rate=1.0)) == 2
    assert len(stage1(trailing_callback_rate=1.0, qty=None)) == 1  # only the stop: nothing to trail
    assert len(stage1(trailing_callback_rate=1.0, qty=0.0)) == 1


def test_stage1_ids_are_the_same_for_the_same_fill():
    a, b = stage1(take_profit_price=55_000.0), stage1(take_profit_price=55_000.0)
    assert [i.client_order_id for i in a] == [i.client_order_id for i in b]
    assert len({i.client_order_id for i in a}) == 2
    assert stage1(entry_intent_id="other")[0].client_order_id != a[0].client_order_id
