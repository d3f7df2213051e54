"""The venue stream's pure parts: a pushed order update in our types, the router's decision on a fact,
the reconnect backoff and the dedupe id."""

from __future__ import annotations

import ccxt
import pytest

from libs.common.messages import VenueOrderFact, decode, encode
from libs.common.state_machine import OrderState
from libs.venue.parsing import position_updates_from_account_event, stream_update_from_ccxt
from libs.venue.user_stream import SessionEnded, StreamTiming, end_reason, key_gone
from services.router.facts import FactAction, Known, fact_action
from services.venue_stream.service import fact_msg_id, fact_of

BTC = "BTC/USDT:USDT"


def _order(status: str, raw: str, filled: float = 0.0, **info: object) -> dict:
    """The shape ccxt.pro's parse_ws_order gives an ORDER_TRADE_UPDATE (ALGO_UPDATE: ``aid`` in info)."""
    return {
        "id": info.get("aid") or info.get("i") or "11",
        "clientOrderId": "C1",
        "symbol": BTC,
        "status": status,
        "filled": filled,
        "average": 49_000.0 if filled else None,
        "amount": 0.02,
        "side": "buy",
        "type": "limit",
        "info": {"X": raw, "T": 1_000, **info},
    }


def test_a_resting_fill_is_a_full_update():
    u = stream_update_from_ccxt(_order("closed", "FILLED", 0.02, i="11"))
    assert (u.order.state, u.order.filled, u.order.average, u.order.venue_status) == (
        OrderState.FILLED,
        0.02,
        49_000.0,
        "FILLED",
    )
    assert u.complete and u.event_ms == 1_000 and not u.order.is_trigger


@pytest.mark.parametrize("raw", ["TRIGGERING", "TRIGGERED"])
def test_a_working_trigger_stays_open_until_its_order_fills(raw):
    u = stream_update_from_ccxt(
        _order("closed", raw, aid="77", caid="C1", ai="12" if raw == "TRIGGERED" else "")
    )
    assert u.order.state is OrderState.ACKED and u.order.is_trigger and u.complete


def test_a_finished_trigger_carries_its_fill_or_asks_for_a_lookup():
    done = stream_update_from_ccxt(
        _order("closed", "FINISHED", aid="77", caid="C1", ai="12", aq="0.02", ap="44000")
    )
    assert (done.order.state, done.order.filled, done.order.average, done.order.actual_order_id) == (
        OrderState.FILLED,
        0.02,
        44_000.0,
        "12",
    )
    assert done.complete
    bare = stream_update_from_ccxt(_order("closed", "FINISHED", aid="77", caid="C1"))
    assert bare.order.state is OrderState.FILLED and not bare.complete  # filled, but how much: look it up


def test_an_unknown_status_is_partial_and_a_nameless_update_is_malformed():
    assert not stream_update_from_ccxt(_order("weird", "NEW_INSURANCE")).complete
    with pytest.raises(ValueError):
        stream_update_from_ccxt({**_order("open", "NEW"), "clientOrderId": None})
    with pytest.raises(ValueError):
        stream_update_from_ccxt({**_order("open", "NEW"), "info": {}})


def _fact(state: OrderState | None, filled: float = 0.0, event_ms: int | None = 2_000) -> VenueOrderFact:
    return VenueOrderFact(
        client_order_id="C1", symbol=BTC, state=state, filled_qty=filled, event_ms=event_ms, status="x"
    )


@pytest.mark.parametrize(
    "known,fact,action",
    [
        (Known(OrderState.ACKED), _fact(OrderState.FILLED, 0.02), FactAction.SETTLE),
        (Known(OrderState.ACKED), _fact(OrderState.PARTIALLY_FILLED, 0.01), FactAction.SETTLE),
        (
            Known(OrderState.PARTIALLY_FILLED, 0.01),
            _fact(OrderState.PARTIALLY_FILLED, 0.015),
            FactAction.SETTLE,
        ),
        (Known(OrderState.CANCELED), _fact(OrderState.FILLED, 0.02), FactAction.SETTLE),  # late fill
        (Known(OrderState.UNKNOWN), _fact(OrderState.ACKED), FactAction.SETTLE),
        (Known(OrderState.ACKED), _fact(OrderState.ACKED), FactAction.SAME),
        (Known(OrderState.FILLED, 0.02), _fact(OrderState.FILLED, 0.02), FactAction.SAME),  # replayed
        (Known(OrderState.PARTIALLY_FILLED, 0.01), _fact(OrderState.PARTIALLY_FILLED, 0.01), FactAction.SAME),
        # never backwards: an older state, a smaller fill, an older event
        (Known(OrderState.FILLED, 0.02), _fact(OrderState.ACKED), FactAction.STALE),
        (
            Known(OrderState.PARTIALLY_FILLED, 0.015),
            _fact(OrderState.PARTIALLY_FILLED, 0.01),
            FactAction.STALE,
        ),
        (Known(OrderState.ACKED, 0.0, 3_000), _fact(OrderState.FILLED, 0.02, 2_000), FactAction.STALE),
        # partial facts (the reconciler's): a lookup while the order may still change
        (Known(OrderState.ACKED), _fact(None), FactAction.LOOKUP),
        (Known(OrderState.CANCELED), _fact(None), FactAction.LOOKUP),
        (Known(OrderState.FILLED, 0.02), _fact(None), FactAction.IGNORED),
    ],
)
def test_fact_action(known, fact, action):
    assert fact_action(known, fact) is action


def test_an_old_fact_without_the_new_fields_still_decodes():
    old = b'{"kind":"venue.order","v":1,"ts_ms":1,"client_order_id":"C1","symbol":"BTC/USDT:USDT","status":"filled"}'
    fact = decode("erl", "erl.venue.order.C1", old)
    assert isinstance(fact, VenueOrderFact) and fact.state is None and fact.filled_qty is None


def test_the_same_update_has_the_same_msg_id_and_a_new_one_another():
    u = stream_update_from_ccxt(_order("closed", "FILLED", 0.02, i="11"))
    fact = fact_of(u, "venue_stream")
    assert decode("erl", "erl.venue.order.C1", encode(fact)) == fact
    again = fact_of(stream_update_from_ccxt(_order("closed", "FILLED", 0.02, i="11")), "venue_stream")
    partial = fact_of(
        stream_update_from_ccxt(_order("open", "PARTIALLY_FILLED", 0.01, i="11")), "venue_stream"
    )
    assert fact_msg_id(fact) == fact_msg_id(again) != fact_msg_id(partial)


def test_backoff_is_bounded_and_reasons_are_named():
    t = StreamTiming(backoff_base_sec=0.5, backoff_max_sec=4)
    assert [t.backoff(n) for n in range(6)] == [0, 0.5, 1, 2, 4, 4]
    gone = ccxt.AuthenticationError('binanceusdm {"code":-1125,"msg":"This listenKey does not exist."}')
    assert key_gone(gone) and end_reason(gone) == "listen_key_gone"
    assert end_reason(ccxt.AuthenticationError("binanceusdm -2015")) == "authentication_failed"
    assert end_reason(ccxt.NetworkError("closed")) == "connection_lost"
    assert end_reason(SessionEnded("silent")) == "silent"
    assert end_reason(RuntimeError("bug")) == "internal_error:RuntimeError"


def test_a_long_stream_outage_is_stale_data_and_no_stream_is_not():
    from libs.common.config import KillSettings
    from libs.common.messages import VenueStreamStatus
    from services.risk.kill_switch import KillInputs, KillSwitch
    from services.risk.posture import stream_down_for

    def status(state: str, since: float, at: float) -> VenueStreamStatus:
        return VenueStreamStatus(
            state=state, since_ms=int(since * 1000), ts_ms=int(at * 1000), source_service="venue_stream"
        )

    assert stream_down_for(None, 1_000.0, 30) is None  # no stream service: nothing to judge
    assert stream_down_for(status("up", 900, 990), 1_000.0, 30) is None
    assert stream_down_for(status("up", 900, 950), 1_000.0, 30) == 50  # its heartbeat stopped
    assert stream_down_for(status("down", 940, 999), 1_000.0, 30) == 60

    ks = KillSwitch(KillSettings(stream_down_sec=60), started_at=0)
    fresh = dict(now=1_000.0, data_age_sec=1.0)
    assert not ks.evaluate(KillInputs(**fresh, stream_down_sec=59)).tripped
    tripped = ks.evaluate(KillInputs(**fresh, stream_down_sec=61))
    assert tripped.tripped and "stale_data" in tripped.reasons
    assert not ks.evaluate(KillInputs(**fresh, stream_down_sec=None)).tripped  # up again: released


def _account(positions, **extra):
    return {"e": "ACCOUNT_UPDATE", "E": 2, "T": 1, "a": {"m": "ORDER", "B": [], "P": positions}, **extra}


def test_positions_of_an_account_update():
    symbols = {"BTCUSDT": "BTC/USDT:USDT"}
    msg = _account(
        [
            {"s": "BTCUSDT", "pa": "-0.020", "ps": "BOTH"},
            {"s": "BTCUSDT", "pa": "1", "ps": "LONG"},  # hedge mode: not ours
            {"s": "NEWUSDT", "pa": "3", "ps": "BOTH"},  # a market we do not know
        ]
    )
    [u] = position_updates_from_account_event(msg, symbols.get)
    assert (u.symbol, u.qty, u.event_ms, u.reason) == ("BTC/USDT:USDT", -0.02, 1, "ORDER")
    assert position_updates_from_account_event(_account([]), symbols.get) == []  # a balance-only update


@pytest.mark.parametrize(
    "bad",
    [
        {"e": "ACCOUNT_UPDATE"},
        _account([{"s": "BTCUSDT"}]),
        _account([{"s": "BTCUSDT", "pa": "lots"}]),
        _account("nope"),
    ],
)
def test_an_unreadable_account_update_is_refused_not_guessed(bad):
    with pytest.raises(ValueError):
        position_updates_from_account_event(bad, {"BTCUSDT": "BTC/USDT:USDT"}.get)
