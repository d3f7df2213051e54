"""The journal's view of the venue (``Belief``), pure: positions from fills, open orders, busy symbols,
refused stops."""

from __future__ import annotations

from libs.common.ids import Bucket
from libs.common.state_machine import OrderState
from services.reconciler.belief import MAX_INTENTS_WITHOUT_ORDER, Belief, KnownOrder
from tests.builders import BTC, journal_intent, refused, transition

ETH = "ETH/USDT:USDT"
S = OrderState


def test_an_intent_is_activity_and_a_stop_intent_sets_the_stop_price_asked_for():
    b = Belief()
    entry, stop = journal_intent(), journal_intent(Bucket.SL, stop_price=49_500.0)
    b.apply_intent(entry, 10.0)
    assert b.last_activity[BTC] == 10.0 and b.last_stop_price == {}
    b.apply_intent(stop, 11.0)
    assert b.last_stop_price[BTC] == 49_500.0
    assert set(b.intents) == {entry.client_order_id, stop.client_order_id}


def test_fills_move_the_position_by_their_increments_with_the_sign_of_the_side():
    b = Belief()
    buy = journal_intent(qty=0.03)
    b.apply_intent(buy, 0.0)
    b.apply_transition(transition(buy, S.SUBMITTING, S.ACKED), 1.0)
    b.apply_transition(transition(buy, S.ACKED, S.PARTIALLY_FILLED, filled_qty=0.01), 2.0)
    b.apply_transition(transition(buy, S.ACKED, S.PARTIALLY_FILLED, filled_qty=0.01), 2.5)  # redelivered
    assert b.position(BTC) == 0.01
    b.apply_transition(transition(buy, S.PARTIALLY_FILLED, S.FILLED, filled_qty=0.03), 3.0)
    assert b.position(BTC) == 0.03
    sell = journal_intent(key="2", side="sell", qty=0.01)
    b.apply_intent(sell, 4.0)
    b.apply_transition(transition(sell, S.SUBMITTING, S.FILLED, filled_qty=0.01), 4.0)
    assert b.position(BTC) == 0.02


def test_a_transition_without_its_intent_takes_the_side_from_the_transition():
    b = Belief()
    i = journal_intent()
    b.apply_transition(transition(i, S.SUBMITTING, S.PARTIALLY_FILLED, filled_qty=0.004), 1.0)
    o = b.orders[i.client_order_id]
    assert (o.side, o.bucket, o.is_trigger, o.stop_price) == ("buy", Bucket.ENTRY, False, None)
    assert b.position(BTC) == 0.004
    # no side anywhere: the fill cannot be signed, so it is not counted (drift will adopt the venue's)
    unsided = journal_intent(key="u")
    b.apply_transition(transition(unsided, S.SUBMITTING, S.FILLED, side=None, filled_qty=1.0), 2.0)
    assert b.position(BTC) == 0.004


def test_settled_orders_are_forgotten_with_their_intents_open_and_in_flight_ones_kept():
    b = Belief()
    stop = journal_intent(Bucket.SL)
    b.apply_intent(stop, 0.0)
    for dst in (S.SUBMITTING, S.UNKNOWN, S.ACKED, S.CANCEL_PENDING):
        b.apply_transition(transition(stop, S.CREATED, dst), 1.0)
        assert b.knows(stop.client_order_id), dst
    assert b.orders[stop.client_order_id].is_trigger
    assert b.orders[stop.client_order_id].stop_price == 49_000.0
    b.apply_transition(transition(stop, S.CANCEL_PENDING, S.CANCELED), 2.0)
    assert not b.knows(stop.client_order_id) and stop.client_order_id not in b.intents


def test_busy_while_settling_or_with_an_order_in_flight():
    b = Belief(settle_sec=2.0)
    assert not b.busy(BTC, 100.0)
    b.last_activity[BTC] = 98.5
    assert b.busy(BTC, 100.0) and not b.busy(BTC, 100.5)
    b.adopt_order(KnownOrder("x", BTC, Bucket.ENTRY, "buy", S.RETRY_WAIT))
    assert b.busy(BTC, 1_000.0) and not b.busy(ETH, 1_000.0)


def test_a_stop_that_ended_without_a_fill_does_not_make_its_symbol_settle():
    b = Belief(settle_sec=2.0)
    stop = journal_intent(Bucket.SL)
    b.apply_transition(transition(stop, S.ACKED, S.CANCELED), 100.0)
    assert not b.busy(stop.symbol, 100.5)  # repaired at once, not after a settle
    entry = journal_intent(Bucket.ENTRY)
    b.apply_transition(transition(entry, S.SUBMITTING, S.FILLED), 100.0)
    assert b.busy(entry.symbol, 100.5)  # a fill: its stage-1 stop is on its way


def test_open_orders_and_unknown_orders():
    b = Belief()
    b.adopt_order(KnownOrder("a", BTC, Bucket.SL, "sell", S.ACKED))
    b.adopt_order(KnownOrder("b", ETH, Bucket.SL, "sell", S.PARTIALLY_FILLED))
    b.adopt_order(KnownOrder("c", BTC, Bucket.ENTRY, "buy", S.UNKNOWN))
    b.adopt_order(KnownOrder("d", BTC, Bucket.ENTRY, "buy", S.SUBMITTING))
    assert [o.client_order_id for o in b.open_orders()] == ["a", "b"]
    assert [o.client_order_id for o in b.open_orders(BTC)] == ["a"]
    assert b.unknown_orders() == 1
    b.forget_order("c")
    assert b.unknown_orders() == 0 and not b.knows("c")
    b.forget_order("never_known")  # forgetting twice (a redelivered repair) is harmless


def test_refused_stops_are_counted_per_symbol_since_a_time_and_entries_never():
    b = Belief()
    refused(b, journal_intent(Bucket.SL, key="a"), 1.0)
    refused(b, journal_intent(Bucket.SL, key="b"), 5.0)
    refused(b, journal_intent(Bucket.ENTRY, key="e"), 6.0)  # an entry refused is no protection refused
    assert b.refusals_since(BTC, 0.0) == 2 and b.refusals_since(BTC, 2.0) == 1
    assert b.refusals_since(ETH, 0.0) == 0
    stop = journal_intent(Bucket.SL, key="f")
    b.apply_intent(stop, 7.0)
    b.apply_transition(transition(stop, S.SUBMITTING, S.FAILED), 7.0)  # the router gave up: refused too
    assert b.refusals_since(BTC, 6.5) == 1


def test_refusal_history_is_bounded():
    b = Belief()
    for i in range(1_000):
        refused(b, journal_intent(Bucket.SL, key=str(i)), float(i))
    assert len(b.stop_refusals[BTC]) == 32
    assert b.refusals_since(BTC, 0.0) == 32  # the newest: an emergency exit needs only a few


def test_adopting_the_venue_position_replaces_the_belief():
    b = Belief()
    b.qty[BTC] = 0.5
    b.adopt_position(BTC, -0.1)
    assert b.position(BTC) == -0.1 and b.position(ETH) == 0.0


def test_intents_that_never_get_an_order_are_capped_oldest_first():
    b = Belief()
    placed = journal_intent(key="placed")
    b.apply_intent(placed, 0.0)
    b.apply_transition(transition(placed, S.SUBMITTING, S.ACKED), 0.0)
    n = 10_000
    for i in range(n):  # e.g. replaces given up before their new order was sent
        b.apply_intent(journal_intent(key=f"given-up-{i}"), float(i))
    assert len(b.intents) == MAX_INTENTS_WITHOUT_ORDER + 1
    assert placed.client_order_id in b.intents  # an open order keeps its intent
    assert journal_intent(key=f"given-up-{n - 1}").client_order_id in b.intents
    assert journal_intent(key="given-up-0").client_order_id not in b.intents
