"""The reconcile tick's protection decisions, pure: leftovers on a flat symbol, a stop that belongs to an
earlier position, and the emergency exit when repairs keep failing."""

from __future__ import annotations

import itertools

import pytest

from libs.common.ids import Bucket
from libs.common.messages import CancelIntent, OrderIntent, ReplaceIntent
from libs.common.state_machine import OrderState
from services.reconciler.belief import Belief, KnownOrder
from services.reconciler.tick import EMERGENCY_EXITS_PER_GAP, VenueOrderView
from tests.builders import BTC, actions, known, long, of, order, ours, refused, state, tick

# ----------------------------------------------------------------------------- leftovers on a flat symbol


def leftovers() -> list[VenueOrderView]:
    return [
        order(ours(Bucket.SL, "sl")),  # close-position stop the venue did not expire
        order(ours(Bucket.TP, "tp"), typ="limit", close=False, reduce_only=True, qty=0.02, trigger=None),
        order(
            "manual_trail", close=False, reduce_only=True, qty=0.02, trigger=None, typ="trailing_stop_market"
        ),
    ]


def test_protection_resting_on_a_flat_symbol_is_cancelled_through_the_router():
    b, st = Belief(settle_sec=0.5), state()
    orphan = order("manual_entry", side="buy", close=False, qty=0.01, typ="limit", trigger=None)
    out = tick(b, st, {}, [*leftovers(), orphan], now=100.0)
    cancels = of(out, CancelIntent)
    assert [(c.client_order_id, c.is_trigger) for c in cancels] == [
        (ours(Bucket.SL, "sl"), True),
        (ours(Bucket.TP, "tp"), False),
        ("manual_trail", True),
    ]  # every protective order, whoever placed it; never the order that could open exposure
    assert all(c.source == "reconciler" and c.symbol == BTC for c in cancels)
    assert [r.client_order_id for r in actions(out, "cancel_leftover")] == [
        c.client_order_id for c in cancels
    ]
    assert st.leftovers_cancelled == 3
    # asked again only after the cooldown
    assert of(tick(b, st, {}, leftovers(), now=100.5), CancelIntent) == []
    assert len(of(tick(b, st, {}, leftovers(), now=101.1), CancelIntent)) == 3


def test_never_while_the_position_is_open_or_the_symbol_is_busy():
    b, st = Belief(settle_sec=0.5), state()
    b.qty[BTC] = 0.02
    assert of(tick(b, st, long(), leftovers(), now=100.0), CancelIntent) == []
    b, st = Belief(settle_sec=0.5), state()
    b.last_activity[BTC] = 99.8  # our own order activity is still settling
    assert of(tick(b, st, {}, leftovers(), now=100.0), CancelIntent) == []
    b, st = Belief(settle_sec=0.5), state()
    b.adopt_order(KnownOrder(ours(Bucket.ENTRY, "e"), BTC, Bucket.ENTRY, "buy", OrderState.SUBMITTING))
    assert of(tick(b, st, {}, leftovers(), now=100.0), CancelIntent) == []  # an entry on its way


def test_what_we_cancelled_or_the_venue_expired_vanishes_without_a_mismatch():
    b, st = Belief(settle_sec=0.5), state()
    sl, tp = (
        order(ours(Bucket.SL, "a")),
        order(ours(Bucket.TP, "b"), trigger=60_000.0, typ="take_profit_market"),
    )
    known(b, sl), known(b, tp, Bucket.TP)
    tick(b, st, {}, [sl], now=100.0)  # the TP already expired on the venue; the stop is cancelled
    gone = {
        sl.client_order_id: VenueOrderView(
            BTC, sl.client_order_id, "", None, False, False, True, "", state="canceled"
        ),
        tp.client_order_id: VenueOrderView(
            BTC, tp.client_order_id, "", None, False, False, True, "", state="expired"
        ),
    }
    out = tick(b, st, {}, [], now=100.4, lookups=gone)
    assert out.mismatches == [] and b.open_orders() == []
    assert {r.client_order_id for r in actions(out, "forget_order")} == set(gone)
    assert sl.client_order_id not in st.leftover_cancels


def test_a_flat_symbol_forgets_the_stop_price_of_its_last_position():
    b, st = Belief(settle_sec=0.5), state()
    b.last_stop_price[BTC] = 24_500.0
    b.last_activity[BTC] = 99.8
    tick(b, st, {}, [], now=100.0)
    assert b.last_stop_price[BTC] == 24_500.0  # still settling: the next position's stop may be on its way
    tick(b, st, {}, [], now=101.0)
    assert BTC not in b.last_stop_price


# ----------------------------------------------------------------------------- protection of the current position


def test_a_stop_from_an_earlier_position_is_replaced_where_this_ones_belongs():
    b, st = Belief(settle_sec=0.5), state()
    b.qty[BTC] = 0.02
    b.last_stop_price[BTC] = 48_500.0  # the user's stop for this position (its stage-1 stop went MOOT)
    old = order(ours(Bucket.SL, "old"), trigger=24_500.0)  # 51 % below: the last position's
    known(b, old)
    out = tick(b, st, long(), [old], now=100.0)
    (replace,) = of(out, ReplaceIntent)
    assert replace.old_client_order_id == old.client_order_id and replace.old_is_trigger
    new = replace.new_order
    assert (new.stop_price, new.side, new.close_position, new.source) == (
        48_500.0,
        "sell",
        True,
        "reconciler",
    )
    assert [r.action for r in out.repairs] == ["move_stop"]
    assert [m.mismatch for m in out.mismatches] == ["misplaced_stop"]
    assert "24500" in out.mismatches[0].detail and "48500" in out.mismatches[0].detail
    assert [g.state for g in out.gap_events] == ["opened"]


@pytest.mark.parametrize(
    "stale,replaced",
    [
        # a close-position stop blocks ours (-4130): replaced whoever placed it
        (order("manual_close_stop", trigger=24_500.0), True),
        (order("manual_sized_stop", close=False, reduce_only=True, qty=0.02, trigger=24_500.0), False),
    ],
)
def test_someone_elses_misplaced_stop(stale, replaced):
    b, st = Belief(settle_sec=0.5), state()
    b.qty[BTC] = 0.02
    b.last_stop_price[BTC] = 48_500.0
    b.adopt_order(
        KnownOrder(stale.client_order_id, BTC, Bucket.EXIT, "sell", OrderState.ACKED, is_trigger=True)
    )
    out = tick(b, st, long(), [stale], now=100.0)
    if replaced:
        (r,) = of(out, ReplaceIntent)
        assert r.old_client_order_id == stale.client_order_id and actions(out, "move_stop")
    else:
        assert of(out, ReplaceIntent) == [] and len(of(out, OrderIntent)) == 1 and actions(out, "place_stop")


def test_the_stop_we_asked_for_counts_wherever_the_market_went():
    b, st = Belief(settle_sec=0.5), state()
    b.qty[BTC] = 0.02
    b.last_stop_price[BTC] = 45_000.0
    stop = order(ours(), trigger=45_000.0)
    known(b, stop)
    out = tick(b, st, long(mark=60_000.0), [stop], now=100.0)
    assert out.intents == [] and out.mismatches == [] and out.gap_events == []


# ----------------------------------------------------------------------------- emergency exit


def run_gap(st, b, until: float, step=0.25, qty=0.02, refuse=True, start=0.0):
    """Tick a position the venue will not protect from t=0 to ``until``: every stop repair is refused
    (``refuse``) or never heard of again (the router is down)."""
    outs, t = [], start
    b.qty[BTC] = qty
    while t <= until:
        out = tick(b, st, long(qty), [], now=t)
        outs.append((t, out))
        for i in of(out, OrderIntent):
            if refuse and i.bucket is Bucket.SL:
                refused(b, i, t + 0.01)
        t = round(t + step, 6)
    return outs


def exits_of(outs):
    return [(t, i) for t, out in outs for i in of(out, OrderIntent) if i.bucket is Bucket.EXIT]


def test_exit_at_market_once_the_gap_outlives_the_ttl_and_repairs_keep_failing():
    b, st = Belief(settle_sec=0.1), state()
    outs = run_gap(st, b, until=3.5)
    ((t, exit_),) = exits_of(outs)
    assert t > 3.0  # not before the TTL
    assert b.refusals_since(BTC, 0.0) >= 2
    assert (exit_.order_type, exit_.side, exit_.qty, exit_.reduce_only) == ("market", "sell", 0.02, True)
    assert exit_.source == "reconciler.emergency" and exit_.is_exit  # the router never policy-blocks it
    (journaled,) = [r for _, out in outs for r in actions(out, "emergency_exit")]
    assert (
        journaled.client_order_id == exit_.client_order_id and "stop placements refused" in journaled.reason
    )
    assert st.emergency_exits == 1


def test_a_refused_exit_is_tried_again_but_bounded_and_never_while_one_is_in_flight():
    b, st = Belief(settle_sec=0.1), state()
    outs = run_gap(st, b, until=30.0)
    times = [t for t, _ in exits_of(outs)]
    assert len(times) == EMERGENCY_EXITS_PER_GAP
    assert all(b2 - a >= st.config.repair_cooldown_sec for a, b2 in itertools.pairwise(times))
    b, st = Belief(settle_sec=0.1), state()
    b.adopt_order(KnownOrder(ours(Bucket.EXIT, "x"), BTC, Bucket.EXIT, "sell", OrderState.SUBMITTING))
    assert exits_of(run_gap(st, b, until=6.0)) == []


@pytest.mark.parametrize(
    "cfg,refuse",
    [
        ({"emergency_exit": False}, True),
        ({"repair_cooldown_sec": 100.0}, True),  # one refusal so far: the repairs have not "kept" failing
        ({"emergency_exit_after_refusals": 50}, True),
        ({}, False),  # repairs sent, no outcome (router or bus down): no evidence, and an exit would wait too
    ],
)
def test_no_exit_when_off_or_before_repairs_have_failed(cfg, refuse):
    b, st = Belief(settle_sec=0.1), state(**cfg)
    outs = run_gap(st, b, until=6.0, refuse=refuse)
    assert exits_of(outs) == []
    assert any(g.state == "breached" for _, out in outs for g in out.gap_events)


def test_a_closed_gap_starts_the_count_again():
    b, st = Belief(settle_sec=0.1), state()
    run_gap(st, b, until=3.5)
    assert st.emergency
    tick(b, st, {}, [], now=10.0)  # the exit filled: flat
    assert st.emergency == {}
    b.stop_refusals[BTC].extend([(9.0, "a"), (9.5, "b")])  # refused before the next gap: not its evidence
    outs = run_gap(st, b, start=20.0, until=23.5, refuse=False)
    assert exits_of(outs) == []


def test_refusals_counted_once_per_stop_and_never_for_trailing_stops():
    b = Belief()
    sl = OrderIntent(
        intent_id="i1",
        correlation_id="c1",
        client_order_id=ours(Bucket.SL, "r"),
        bucket=Bucket.SL,
        symbol=BTC,
        side="sell",
        order_type="stop_market",
        stop_price=49_000.0,
        close_position=True,
    )
    refused(b, sl, 1.0)
    refused(b, sl, 2.0)  # redelivered
    trailing = sl.model_copy(
        update={
            "client_order_id": ours(Bucket.SL, "t"),
            "order_type": "trailing_stop_market",
            "stop_price": None,
            "close_position": False,
            "reduce_only": True,
            "qty": 0.01,
            "callback_rate": 1.0,
        }
    )
    refused(b, trailing, 3.0)
    assert b.refusals_since(BTC, 0.0) == 1 and b.refusals_since(BTC, 2.5) == 0


def test_rebuild_believes_journal_open_orders_the_venue_no_longer_lists():
    """They ended while nobody watched: believed open, the first tick looks them up and reports them."""
    from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
    from libs.common.messages import OrderIntent
    from libs.common.replay import IntentTimeline
    from libs.common.state_machine import OrderState
    from services.reconciler.belief import Belief
    from services.reconciler.rebuild import rebuild
    from services.reconciler.tick import Snapshot, vanished_orders

    iid = make_intent_id("t", "k", Bucket.ENTRY)
    intent = OrderIntent(
        intent_id=iid,
        correlation_id=make_correlation_id(iid),
        client_order_id=make_client_order_id(iid, Bucket.ENTRY),
        bucket=Bucket.ENTRY,
        symbol="BTC/USDT:USDT",
        side="buy",
        order_type="limit",
        qty=0.01,
        price=48_000.0,
    )
    t = IntentTimeline(intent.correlation_id, intent=intent, state=OrderState.ACKED)
    belief = Belief()
    plan = rebuild(belief, Snapshot({}, []), {t.correlation_id: t})
    assert plan.ended_unseen == 1
    assert [o.client_order_id for o in vanished_orders(belief, Snapshot({}, []))] == [intent.client_order_id]
