"""The entry service's gate (services/entry/policy.py): caps count at the venue's mark, never a caller's price."""

from __future__ import annotations

from libs.common.messages import GuardKnobs, Signal
from services.entry.intents import entry_intent_from_signal
from services.entry.policy import Waiting, entry_decision
from services.entry.waiting import Unanswered

MARK = 50_000.0
CAP = GuardKnobs(max_notional_usdt=10_000)


def sig(**kw) -> Signal:
    return Signal(**{"signal_id": "s1", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": 0.01, **kw})


def decide(signal: Signal, knobs: GuardKnobs | None = CAP, mark: float | None = MARK, **kw):
    args = dict(now=1_000.0, last_entry_at=None, open_entries=0, mark_price=mark)
    args.update(kw)
    return entry_decision(signal, knobs, **args)


def test_ref_price_never_lowers_the_count():
    # the reproduced bug: --ref-price 1 let a 14.6k entry through a 10k cap
    d = decide(sig(qty=0.292, ref_price=1.0))
    assert not d.accepted and d.reason == "notional_cap:14600.00>10000"
    d = decide(sig(qty=0.1, ref_price=1_000_000.0))  # nor raises it: informational only
    assert d.accepted and d.notional_usdt == 5_000


def test_no_mark_no_entry():
    assert decide(sig(ref_price=50_000.0), mark=None).reason == "mark_price_unavailable"
    assert decide(sig(), mark=0.0).reason == "mark_price_unavailable"
    # the knob checks that need no price still come first
    assert decide(sig(), knobs=None, mark=None).reason == "guard_unavailable"
    assert decide(sig(), mark=None, open_entries=5, knobs=GuardKnobs(max_open_orders=5)).reason.startswith(
        "open_order_cap"
    )


def test_limit_signal_counts_at_the_higher_of_limit_and_mark():
    above = sig(order_type="limit", price=52_000.0, qty=0.197)  # 9,850 at the mark
    assert decide(above).reason == "notional_cap:10244.00>10000"
    below = sig(order_type="limit", price=48_000.0, qty=0.205)  # 9,840 at the limit
    assert decide(below).reason == "notional_cap:10250.00>10000"
    ok = sig(order_type="limit", price=48_000.0, qty=0.197)
    d = decide(ok)
    assert d.accepted and d.notional_usdt == 0.197 * MARK


def test_intent_carries_the_counted_notional_not_the_signals_price():
    s = sig(qty=0.2, ref_price=1.0)
    assert entry_intent_from_signal(s, default_leverage=5).notional_usdt is None
    assert entry_intent_from_signal(s, default_leverage=5, notional_usdt=10_000.0).notional_usdt == 10_000.0


def test_each_knob_refuses_in_order_and_an_accepted_signal_says_what_it_counted():
    knobs = GuardKnobs(max_notional_usdt=10_000, min_entry_conf=0.6, entry_cooldown_sec=10, max_open_orders=2)
    assert decide(sig(), knobs=GuardKnobs(allow_entries=False, mode="halted")).reason == (
        "entries_blocked:halted"
    )
    assert decide(sig(confidence=0.5), knobs).reason == "confidence_below_floor:0.5<0.6"
    # cooldown runs from the symbol's last entry: 4 s ago of 10
    assert decide(sig(), knobs, last_entry_at=996.0).reason == "cooldown:6.0s"
    assert decide(sig(), knobs, last_entry_at=990.0).accepted  # exactly over
    assert decide(sig(), knobs, open_entries=2).reason == "open_order_cap:2>=2"
    # the first refusal wins: confidence before cooldown before the open-order cap before the price
    d = decide(sig(confidence=0.1), knobs, mark=None, last_entry_at=999.0, open_entries=5)
    assert d.reason.startswith("confidence_below_floor") and d.notional_usdt is None
    assert decide(sig(), knobs, mark=None, last_entry_at=999.0, open_entries=5).reason.startswith("cooldown")
    d = decide(sig(qty=0.1, confidence=0.6), knobs, open_entries=1)
    assert d.accepted and d.reason == "" and d.notional_usdt == 5_000


def test_a_nan_mark_is_no_mark():
    assert decide(sig(), mark=float("nan")).reason == "mark_price_unavailable"


def test_orders_waiting_for_the_router_hold_new_entries_back_stops_first():
    limits = Waiting(entries=10, stop_sec=0.25)
    assert decide(sig(), waiting=Waiting(9, 0.2), max_waiting=limits).accepted
    d = decide(sig(), waiting=Waiting(0, 0.3), max_waiting=limits)  # a position waits for its stop
    assert not d.accepted and d.reason == "stop_waiting:300>=250ms"
    d = decide(sig(), waiting=Waiting(10, 0.3), max_waiting=limits)  # protection is named first
    assert d.reason == "stop_waiting:300>=250ms"
    assert decide(sig(), waiting=Waiting(10, 0.0), max_waiting=limits).reason == "router_behind:10>=10"
    # a knob's refusal comes first: it says why the operator's own rules refused
    assert (
        decide(sig(), knobs=None, waiting=Waiting(10, 1.0), max_waiting=limits).reason == "guard_unavailable"
    )


def test_unanswered_orders_are_counted_until_answered_or_expired():
    u = Unanswered(expire_sec=60.0)
    u.sent("a", now=0.0)
    u.sent("b", now=10.0)
    u.sent("a", now=20.0)  # sent again (a redelivered signal): its clock starts again, once counted
    assert u.count(now=30.0) == 2
    u.answered("b")
    u.answered("never-sent")
    assert u.count(now=30.0) == 1
    assert u.oldest_sec(now=30.0) == 10.0  # "a", sent again at 20
    assert u.count(now=79.0) == 1 and u.count(now=81.0) == 0  # a stuck one stops holding entries back
    assert u.oldest_sec(now=81.0) == 0.0
