"""Each phase of the reconcile tick on its own: what it decides, records and leaves alone."""

from __future__ import annotations

import itertools

import pytest

from libs.common.ids import Bucket
from libs.common.messages import CancelIntent, OrderIntent, ReplaceIntent
from libs.common.protection import stop_loss
from libs.common.state_machine import OrderState, PositionBelief, can_transition
from services.reconciler.belief import Belief, KnownOrder
from services.reconciler.gaps import GapUpdate
from services.reconciler.orders import adopt_unknown, settle_vanished, vanished_orders
from services.reconciler.protection import CoverageStatus
from services.reconciler.repairs import (
    cancel_leftovers,
    coverage_mismatch,
    emergency_exit,
    forget_old_leftover_cancels,
    repair_protection,
    replacement_target,
    stop_price_for,
)
from services.reconciler.snapshot import PositionView, Snapshot, VenueOrderView
from services.reconciler.state import SymbolCheck, TickWork
from services.reconciler.tick import (
    adopt_drift,
    belief_path,
    coverage_of,
    gap_events,
    move_belief,
    summarize,
    symbols_to_check,
    target_state,
    track_gap,
)
from tests.builders import BTC, actions, known, long, of, order, ours, refused, state, tick

ETH = "ETH/USDT:USDT"


def kinds(work: TickWork) -> list[str]:
    return [f["mismatch"] for f in work.found]


def answer(cid: str, venue_state: str) -> VenueOrderView:
    """The venue's answer to a lookup of a vanished order."""
    return VenueOrderView(BTC, cid, "", None, False, False, True, "", state=venue_state)


def quiet() -> Belief:
    return Belief(settle_sec=0.5)


# ----------------------------------------------------------------------------- vanished orders


def test_vanished_orders_are_the_believed_open_ones_the_venue_does_not_list():
    b = quiet()
    listed, gone = order(ours(Bucket.SL, "a")), order(ours(Bucket.SL, "b"))
    known(b, listed), known(b, gone)
    b.adopt_order(KnownOrder(ours(Bucket.ENTRY, "c"), BTC, Bucket.ENTRY, "buy", OrderState.SUBMITTING))
    assert [o.client_order_id for o in vanished_orders(b, Snapshot({}, [listed]))] == [gone.client_order_id]


def test_a_vanished_order_that_filled_is_forgotten_and_explains_the_position_change():
    b, st, work = quiet(), state(), TickWork(100.0)
    sl = order(ours(Bucket.SL, "a"))
    known(b, sl)
    settle_vanished(b, Snapshot({}, []), {sl.client_order_id: answer(sl.client_order_id, "filled")}, st, work)
    assert not b.knows(sl.client_order_id)
    assert work.explained == {BTC} and work.found == []
    (r,) = actions(work.out, "forget_order")
    assert (r.client_order_id, r.reason) == (sl.client_order_id, "filled on the venue")


def test_an_unanswered_or_unknown_lookup_changes_nothing():
    b, st, work = quiet(), state(), TickWork(100.0)
    sl = order(ours(Bucket.SL, "a"))
    known(b, sl)
    lookups = {"never_ours": answer("never_ours", "canceled")}  # ours left out: the venue could not answer
    settle_vanished(b, Snapshot({}, []), lookups, st, work)
    assert b.knows(sl.client_order_id)  # still believed
    assert work.out.repairs == [] and work.found == []


@pytest.mark.parametrize("venue_state", ["open", "unknown"])
def test_a_vanished_order_the_lookup_finds_open_or_cannot_place_stays_believed(venue_state):
    # the listing predates the order (or lags the venue); the lookup, made after it, is the newer word
    b, st, work = quiet(), state(), TickWork(100.0)
    sl = order(ours(Bucket.SL, "a"))
    known(b, sl)
    st.not_found_since[sl.client_order_id] = 99.0
    settle_vanished(
        b, Snapshot(long(), []), {sl.client_order_id: answer(sl.client_order_id, venue_state)}, st, work
    )
    assert b.knows(sl.client_order_id)
    assert work.out.repairs == [] and work.found == [] and st.not_found_since == {}


@pytest.mark.parametrize(
    "bucket,venue_state,positions,mismatch",
    [
        (Bucket.SL, "expired", {}, False),  # close-position stop expired with its position: as it should
        (Bucket.TP, "expired", {}, False),
        (Bucket.SL, "expired", long(), True),  # expired under a live position: protection lost
        (Bucket.SL, "expired", long(-0.01), False),  # the long it closed flipped short: expired with it
        (Bucket.ENTRY, "expired", {}, True),
        (Bucket.SL, "canceled", {}, True),  # cancelled behind our back
    ],
)
def test_a_vanished_order_is_a_mismatch_unless_it_was_protection_without_a_position(
    bucket, venue_state, positions, mismatch
):
    b, st, work = quiet(), state(), TickWork(100.0)
    o = order(ours(bucket, "a"))
    known(b, o, bucket)
    settle_vanished(
        b, Snapshot(positions, []), {o.client_order_id: answer(o.client_order_id, venue_state)}, st, work
    )
    assert not b.knows(o.client_order_id)
    assert kinds(work) == (["missing_order"] if mismatch else [])
    (r,) = work.out.repairs
    assert r.action == "forget_order" and venue_state in r.reason
    if mismatch:
        assert work.found[0]["detail"] == f"believed ACKED, venue says {venue_state}"


def test_not_found_is_not_absent_until_the_venue_has_not_known_it_for_the_grace():
    # a venue answers -2013 for an order it took a moment ago (query lag): forgetting it then would leave
    # its later ending unreported; it stays believed and is looked up again every tick
    b, st = quiet(), state()
    o = order(ours(Bucket.SL, "a"))
    known(b, o)
    grace = st.config.not_found_grace_sec
    lookups: dict = {o.client_order_id: None}  # the venue says it has no such order
    for now in (100.0, 100.0 + grace / 2):
        work = TickWork(now)
        settle_vanished(b, Snapshot({}, []), lookups, st, work)
        assert b.knows(o.client_order_id) and work.out.repairs == [] and work.found == []
    # a lookup that could not be asked does not stop the clock; listed again, it starts over
    settle_vanished(b, Snapshot({}, []), {}, st, TickWork(100.0 + grace - 2))
    assert st.not_found_since == {o.client_order_id: 100.0}
    settle_vanished(b, Snapshot({}, [o]), {}, st, TickWork(100.0 + grace - 1))
    assert st.not_found_since == {}
    work = TickWork(100.0 + grace + 1)
    settle_vanished(b, Snapshot({}, []), lookups, st, work)
    assert b.knows(o.client_order_id)
    work = TickWork(100.0 + 2 * grace + 2)
    settle_vanished(b, Snapshot({}, []), lookups, st, work)
    assert not b.knows(o.client_order_id) and st.not_found_since == {}
    assert (
        kinds(work) == ["missing_order"] and work.found[0]["detail"] == "believed ACKED, venue says not found"
    )
    assert work.out.repairs[0].reason == "venue: not found"


def test_a_leftover_we_cancelled_is_forgotten_quietly_even_under_a_position():
    b, st, work = quiet(), state(), TickWork(100.0)
    o = order(ours(Bucket.SL, "a"))
    known(b, o)
    st.leftover_cancels[o.client_order_id] = 90.0
    settle_vanished(
        b, Snapshot(long(), []), {o.client_order_id: answer(o.client_order_id, "canceled")}, st, work
    )
    assert work.found == [] and st.leftover_cancels == {}
    assert work.out.repairs[0].reason == "protection without a position, venue: canceled"


# ----------------------------------------------------------------------------- unknown venue orders


def test_an_order_that_can_open_exposure_is_an_orphan_and_adopted_only_when_ours():
    b, work = quiet(), TickWork(100.0)
    manual = order("manual_entry", side="buy", close=False, qty=0.01, typ="limit", trigger=None)
    mine = order(ours(Bucket.ENTRY, "e"), side="buy", close=False, qty=0.01, typ="limit", trigger=None)
    adopt_unknown(b, Snapshot({}, [manual, mine]), work)
    assert kinds(work) == ["orphan_order", "orphan_order"] and work.orphans == 2
    assert not b.knows("manual_entry")
    adopted = b.orders[mine.client_order_id]
    assert (adopted.bucket, adopted.state, adopted.is_trigger) == (Bucket.ENTRY, OrderState.ACKED, False)
    assert [r.client_order_id for r in actions(work.out, "adopt_order")] == [mine.client_order_id]


def test_our_unknown_protection_is_adopted_and_someone_elses_left_to_coverage():
    b, work = quiet(), TickWork(100.0)
    mine, theirs = order(ours(Bucket.SL, "s"), trigger=48_000.0), order("manual_stop")
    adopt_unknown(b, Snapshot(long(), [mine, theirs]), work)
    assert [(f["mismatch"], f["client_order_id"]) for f in work.found] == [
        ("unknown_own_order", mine.client_order_id)
    ]
    assert work.orphans == 0
    adopted = b.orders[mine.client_order_id]
    assert (adopted.bucket, adopted.is_trigger, adopted.stop_price) == (Bucket.SL, True, 48_000.0)
    assert not b.knows("manual_stop")


def test_known_orders_and_busy_symbols_are_not_judged():
    b, work = quiet(), TickWork(100.0)
    mine = order(ours(Bucket.SL, "s"))
    known(b, mine)
    manual = VenueOrderView(ETH, "manual", "buy", 1.0, False, False, False, "limit")
    b.last_activity[ETH] = 99.9  # its fills may not have reached us yet
    adopt_unknown(b, Snapshot({}, [mine, manual]), work)
    assert work.found == [] and work.out.repairs == [] and work.orphans == 0


# ----------------------------------------------------------------------------- which symbols, drift


def test_symbols_checked_are_every_one_with_something_to_protect_or_clean():
    b, st = quiet(), state()
    b.qty["A"], b.qty["Z"] = 1.0, 0.0  # a believed position; a believed flat one is nothing
    b.last_stop_price["B"] = 1.0  # a stop price from its last position
    st.gaps.assert_gap("C", 0.0, "stage1")
    orders = [
        VenueOrderView("D", "x", "sell", None, False, True, True, "stop_market", 1.0),  # a leftover
        VenueOrderView("Y", "y", "buy", 1.0, False, False, False, "limit"),  # not protection
    ]
    assert symbols_to_check(b, Snapshot({"E": PositionView(1.0)}, orders), st) == ["A", "B", "C", "D", "E"]


def test_a_quiet_drift_is_a_desync_and_the_venue_position_is_adopted():
    b, work = quiet(), TickWork(100.0)
    b.qty[BTC] = 0.01
    assert adopt_drift(b, BTC, 0.02, work)
    assert b.position(BTC) == 0.02
    assert work.found == [
        {
            "symbol": BTC,
            "mismatch": "position_drift",
            "detail": "venue and belief disagree",
            "exchange_qty": 0.02,
            "believed_qty": 0.01,
        }
    ]
    assert actions(work.out, "adopt_position")[0].reason == "drift"


def test_a_drift_a_venue_fill_explains_is_adopted_without_a_mismatch():
    b, work = quiet(), TickWork(100.0)
    b.qty[BTC] = 0.02
    work.explained.add(BTC)  # its stop filled on the venue this tick
    assert not adopt_drift(b, BTC, 0.0, work)
    assert b.position(BTC) == 0.0 and work.found == []
    assert actions(work.out, "adopt_position")[0].reason == "explained by a venue fill"


@pytest.mark.parametrize("venue_qty,busy", [(0.02 + 1e-12, False), (0.03, True)])
def test_no_drift_within_tolerance_or_while_the_symbol_settles(venue_qty, busy):
    b, work = quiet(), TickWork(100.0)
    b.qty[BTC] = 0.02
    if busy:
        b.last_activity[BTC] = 99.9
    assert not adopt_drift(b, BTC, venue_qty, work)
    assert b.position(BTC) == 0.02 and work.found == [] and work.out.repairs == []


# ----------------------------------------------------------------------------- coverage and where a stop belongs


def test_a_stop_belongs_at_the_last_price_asked_while_it_is_on_the_protective_side():
    b, cfg = quiet(), state().config
    pos = PositionView(0.02, 50_000.0, 51_000.0)
    assert stop_price_for(BTC, 0.02, pos, b, cfg) == pytest.approx(51_000.0 * 0.98)  # from the mark
    b.last_stop_price[BTC] = 49_500.0
    assert stop_price_for(BTC, 0.02, pos, b, cfg) == 49_500.0
    assert stop_price_for(BTC, -0.02, pos, b, cfg) == pytest.approx(51_000.0 * 1.02)  # wrong side for a short
    assert stop_price_for(BTC, 0.02, PositionView(0.02, 50_000.0), b, cfg) == 49_500.0  # no mark: the entry


def test_coverage_counts_this_symbols_stops_where_they_belong():
    b, st = quiet(), state()
    b.last_stop_price[BTC] = 49_000.0
    here = order(ours(Bucket.SL, "a"))
    tp = order(ours(Bucket.TP, "b"), trigger=60_000.0, typ="take_profit_market")
    elsewhere = VenueOrderView(ETH, "e", "sell", None, False, True, True, "stop_market", 49_000.0)
    cov, intended = coverage_of(b, BTC, long()[BTC], [here, tp, elsewhere], st)
    assert intended == 49_000.0
    assert cov.status is CoverageStatus.COVERED and [s.client_order_id for s in cov.stops] == [
        here.client_order_id
    ]
    cov, intended = coverage_of(b, BTC, PositionView(0.0), [here], st)
    assert (cov.status, intended) == (CoverageStatus.FLAT, None)


def test_a_stop_outside_the_price_tolerance_is_misplaced():
    b, st = quiet(), state(stop_price_tolerance=0.001)
    b.last_stop_price[BTC] = 49_000.0
    cov, _ = coverage_of(b, BTC, long()[BTC], [order(ours(Bucket.SL, "a"), trigger=48_900.0)], st)
    assert cov.status is CoverageStatus.MISPLACED


# ----------------------------------------------------------------------------- the gap clock


def test_the_gap_clock_opens_breaches_with_pressure_and_closes():
    st = state()  # TTL 3 s
    missing, _ = coverage_of(quiet(), BTC, long()[BTC], [], st)
    covered, _ = coverage_of(quiet(), BTC, long()[BTC], [order(ours())], st)
    work = TickWork(0.0)
    gap, breached = track_gap(st, BTC, missing, 0.02, work)
    assert gap.newly_opened and not breached and [g.state for g in work.out.gap_events] == ["opened"]
    work = TickWork(3.5)
    gap, breached = track_gap(st, BTC, missing, 0.02, work)
    assert breached and [g.state for g in work.out.gap_events] == ["breached"]
    assert kinds(work) == ["gap_ttl_breach"] and work.found[0]["critical"]
    work = TickWork(4.0)
    assert track_gap(st, BTC, missing, 0.02, work)[1] and kinds(work) == [
        "gap_ttl_breach"
    ]  # for as long as it lasts
    assert work.out.gap_events == []  # reported once
    st.emergency[BTC] = (0.0, 1, 3.5)
    work = TickWork(5.0)
    gap, breached = track_gap(st, BTC, covered, 0.02, work)
    assert gap.closed and not breached and work.found == []
    assert [(g.state, g.age_sec) for g in work.out.gap_events] == [("closed", 5.0)]
    assert st.emergency == {}  # the next gap starts its emergency count again


def test_gap_events_carry_the_ttl_and_round_the_age():
    ttl = 15.0
    assert gap_events(GapUpdate(BTC, True, 0.0), ttl) == []
    (opened,) = gap_events(GapUpdate(BTC, True, 0.0, newly_opened=True, reason="missing"), ttl)
    assert (opened.state, opened.ttl_sec, opened.reason, opened.critical) == ("opened", ttl, "missing", False)
    (breached,) = gap_events(GapUpdate(BTC, True, 15.12345, newly_breached=True), ttl)
    assert (breached.state, breached.age_sec, breached.critical) == ("breached", 15.123, True)
    (closed,) = gap_events(GapUpdate(BTC, False, 2.0, closed=True), ttl)
    assert (closed.state, closed.age_sec) == ("closed", 2.0)


# ----------------------------------------------------------------------------- stop repairs


def check(b: Belief, st, orders: list[VenueOrderView], *, qty=0.02, age=0.0, breached=False) -> SymbolCheck:
    cov, intended = coverage_of(b, BTC, long(qty)[BTC], orders, st)
    return SymbolCheck(BTC, qty, cov, intended, GapUpdate(BTC, not cov.protected, age), breached)


def test_a_missing_stop_is_placed_where_it_belongs():
    b, st, work = quiet(), state(), TickWork(100.0)
    repair_protection(b, st, check(b, st, []), work)
    (new,) = of(work.out, OrderIntent)
    assert (new.bucket, new.side, new.stop_price, new.source) == (Bucket.SL, "sell", 49_000.0, "reconciler")
    (r,) = actions(work.out, "place_stop")
    assert (r.reason, r.client_order_id) == ("missing_stop", new.client_order_id)
    assert kinds(work) == ["missing_stop"] and work.found[0]["detail"] == "covered 0 of 0.02"
    assert (st.last_repair_at[BTC], st.repair_actions, b.last_activity[BTC]) == (100.0, 1, 100.0)


def test_a_misplaced_stop_is_moved_and_an_undersized_one_of_ours_refreshed():
    b, st, work = quiet(), state(), TickWork(100.0)
    stale = order("manual_close", trigger=40_000.0)  # someone's close-position stop from an earlier position
    repair_protection(b, st, check(b, st, [stale]), work)
    (replace,) = of(work.out, ReplaceIntent)
    assert replace.old_client_order_id == "manual_close" and replace.new_order.stop_price == 49_000.0
    assert actions(work.out, "move_stop") and kinds(work) == ["misplaced_stop"]
    assert work.found[0]["detail"] == "stop at 40000; this position's stop belongs at 49000"
    b, st, work = quiet(), state(), TickWork(100.0)
    small = order(ours(Bucket.SL, "s"), close=False, reduce_only=True, qty=0.01)
    repair_protection(b, st, check(b, st, [small]), work)
    assert of(work.out, ReplaceIntent)[0].old_client_order_id == small.client_order_id
    assert actions(work.out, "refresh_stop") and kinds(work) == ["undersized_stop"]


def test_a_repair_waits_for_the_cooldown_and_for_a_stop_on_its_way():
    b, st, work = quiet(), state(), TickWork(100.0)
    st.last_repair_at[BTC] = 99.5
    repair_protection(b, st, check(b, st, []), work)
    assert work.out.intents == [] and st.repair_skipped == 1 and kinds(work) == ["missing_stop"]
    b, st, work = quiet(), state(), TickWork(100.0)
    b.adopt_order(KnownOrder(ours(Bucket.SL, "f"), BTC, Bucket.SL, "sell", OrderState.SUBMITTING))
    b.last_activity[BTC] = 90.0
    repair_protection(b, st, check(b, st, [], breached=True, age=4.0), work)
    assert of(work.out, OrderIntent) == [] and st.repair_skipped == 1


def test_a_busy_symbol_is_left_to_its_stage1_stop_until_the_gap_breaches():
    b, st = quiet(), state()
    b.last_activity[BTC] = 99.9  # a fresh fill: its stop is on its way
    work = TickWork(100.0)
    repair_protection(b, st, check(b, st, []), work)
    assert work.found == [] and work.out.intents == [] and st.repair_skipped == 0
    work = TickWork(100.0)
    repair_protection(b, st, check(b, st, [], breached=True, age=3.5), work)
    assert kinds(work) == ["missing_stop"] and len(of(work.out, OrderIntent)) == 1


def test_a_protected_position_needs_no_repair():
    b, st, work = quiet(), state(), TickWork(100.0)
    repair_protection(b, st, check(b, st, [order(ours())]), work)
    assert work.found == [] and work.out.intents == [] and st.repair_skipped == 0


def test_replacement_target_order():
    b, st = quiet(), state()
    theirs_sized = order("manual", close=False, reduce_only=True, qty=0.005, trigger=40_000.0)
    mine = order(ours(Bucket.SL, "m"), close=False, reduce_only=True, qty=0.005, trigger=40_000.0)
    close = order("manual_close", trigger=40_000.0)
    assert (
        replacement_target(check(b, st, [theirs_sized, mine, close]).coverage).client_order_id
        == "manual_close"
    )
    assert (
        replacement_target(check(b, st, [theirs_sized, mine]).coverage).client_order_id
        == mine.client_order_id
    )
    assert replacement_target(check(b, st, [theirs_sized]).coverage) is None  # placed beside it
    a = order(ours(Bucket.SL, "a"), close=False, reduce_only=True, qty=0.004)
    c = order(ours(Bucket.SL, "c"), close=False, reduce_only=True, qty=0.008)
    assert replacement_target(check(b, st, [a, c]).coverage).client_order_id == c.client_order_id


def test_coverage_mismatch_names_the_status():
    b, st = quiet(), state()
    assert coverage_mismatch(check(b, st, [])) == ("missing_stop", "covered 0 of 0.02")
    half = order(ours(Bucket.SL, "h"), close=False, reduce_only=True, qty=0.01)
    assert coverage_mismatch(check(b, st, [half])) == ("undersized_stop", "covered 0.01 of 0.02")


# ----------------------------------------------------------------------------- emergency exit


def test_emergency_exit_needs_a_breached_gap_and_refused_stops():
    b, st = Belief(settle_sec=0.1), state()
    st.gaps.observe(BTC, True, 0.0, "missing")
    for i in range(2):
        refused(b, stop_intent(str(i)), 1.0 + i)
    work = TickWork(4.0)
    emergency_exit(b, st, check(b, st, [], age=4.0, breached=True), work)
    (exit_,) = of(work.out, OrderIntent)
    assert (exit_.bucket, exit_.order_type, exit_.reduce_only, exit_.qty) == (
        Bucket.EXIT,
        "market",
        True,
        0.02,
    )
    assert st.emergency[BTC] == (0.0, 1, 4.0) and st.emergency_exits == 1
    assert actions(work.out, "emergency_exit")[0].reason == "unprotected 4.0s > 3s, 2 stop placements refused"
    work = TickWork(4.5)  # within the cooldown of the last exit (and now settling)
    emergency_exit(b, st, check(b, st, [], age=4.5, breached=True), work)
    assert work.out.intents == []


def test_no_emergency_exit_without_an_open_gap():
    b, st, work = Belief(settle_sec=0.1), state(), TickWork(4.0)
    for i in range(3):
        refused(b, stop_intent(str(i)), 1.0 + i)
    emergency_exit(b, st, check(b, st, [], age=4.0, breached=True), work)
    assert work.out.intents == []


def stop_intent(key: str) -> OrderIntent:
    return stop_loss(
        symbol=BTC,
        position_side="buy",
        stop_price=49_000.0,
        source="test",
        id_scope="test",
        key=key,
        ts_ms=0,
    )


# ----------------------------------------------------------------------------- leftovers


def test_leftover_cancels_cover_this_symbols_protection_only_once_per_cooldown():
    st, work = state(), TickWork(100.0)
    other = VenueOrderView(ETH, "eth_stop", "sell", None, False, True, True, "stop_market", 1.0)
    entry = order("manual_entry", side="buy", close=False, qty=0.01, typ="limit", trigger=None)
    stop = order(ours(Bucket.SL, "s"))
    cancel_leftovers(st, BTC, [other, entry, stop], work)
    (c,) = of(work.out, CancelIntent)
    assert (c.client_order_id, c.symbol, c.is_trigger) == (stop.client_order_id, BTC, True)
    assert st.leftover_cancels == {stop.client_order_id: 100.0} and st.leftovers_cancelled == 1
    assert (
        actions(work.out, "cancel_leftover")[0].reason
        == "close-position sell stop_market rests without a position"
    )
    work = TickWork(100.9)
    cancel_leftovers(st, BTC, [stop], work)
    assert work.out.intents == []


def test_leftover_cancels_are_forgotten_once_long_gone():
    st = state()  # cooldown 1 s: forgotten after 10 s unlisted
    st.leftover_cancels.update({"listed": 0.0, "recent": 95.0, "old": 89.0})
    forget_old_leftover_cancels(st, [order("listed")], 100.0)
    assert st.leftover_cancels == {"listed": 0.0, "recent": 95.0}


# ----------------------------------------------------------------------------- belief states


@pytest.mark.parametrize(
    "qty,protected,in_flight,expected",
    [
        (0.0, False, None, PositionBelief.FLAT),
        (0.0, False, Bucket.ENTRY, PositionBelief.OPENING),
        (0.02, True, Bucket.EXIT, PositionBelief.CLOSING),
        (0.02, True, Bucket.SL, PositionBelief.OPEN_PROTECTED),
        (-0.02, False, None, PositionBelief.OPEN_UNPROTECTED),
    ],
)
def test_target_state(qty, protected, in_flight, expected):
    b = quiet()
    if in_flight is not None:
        b.adopt_order(KnownOrder(ours(in_flight, "f"), BTC, in_flight, "buy", OrderState.SUBMITTING))
    b.adopt_order(KnownOrder(ours(Bucket.EXIT, "eth"), ETH, Bucket.EXIT, "sell", OrderState.SUBMITTING))
    assert target_state(qty, protected, b, BTC) is expected


def test_belief_path_takes_only_valid_steps():
    assert belief_path(PositionBelief.FLAT, PositionBelief.FLAT) == []
    path = belief_path(PositionBelief.FLAT, PositionBelief.CLOSING)
    assert path == [PositionBelief.OPEN_UNPROTECTED, PositionBelief.CLOSING]
    steps = [PositionBelief.FLAT, *path]
    assert all(can_transition(a, b) for a, b in itertools.pairwise(steps))


def test_move_belief_journals_every_step_and_the_first_sighting():
    st, work = state(), TickWork(100.0)
    move_belief(st, work, BTC, PositionBelief.OPEN_PROTECTED, "covered", 0.02)
    move_belief(st, work, BTC, PositionBelief.OPEN_PROTECTED, "covered", 0.02)  # no change: nothing
    move_belief(st, work, BTC, PositionBelief.CLOSING, "covered", 0.02)
    assert [(t.from_state, t.to_state) for t in work.out.belief_transitions] == [
        (PositionBelief.FLAT, PositionBelief.OPEN_PROTECTED),
        (PositionBelief.OPEN_PROTECTED, PositionBelief.CLOSING),
    ]
    assert st.belief_state[BTC] is PositionBelief.CLOSING


# ----------------------------------------------------------------------------- summary


def test_summary_carries_the_streak_into_every_mismatch_event():
    b, st = quiet(), state()
    for expected_streak in (1, 2):
        st.tick += 1
        work = TickWork(100.0)
        work.mismatch(BTC, "missing_stop")
        work.mismatch(BTC, "gap_ttl_breach", critical=True)
        work.orphans = 1
        summarize(b, Snapshot({}, [], equity=10.0), st, work, symbols=3, started=None)
        assert [m.streak for m in work.out.mismatches] == [expected_streak] * 2
    s = work.out.summary
    assert (s.tick, s.symbols, s.mismatches, s.mismatch_events, s.mismatch_streak) == (2, 3, 2, 4, 2)
    assert (s.orphans, s.equity, s.duration_ms) == (1, 10.0, 0.0)
    work = TickWork(101.0)
    summarize(b, Snapshot({}, []), st, work, symbols=0, started=None)
    assert work.out.mismatches == [] and st.streak == 0 and work.out.summary.mismatch_events == 4


# ----------------------------------------------------------------------------- a long-running service


def test_state_stays_bounded_over_10000_ticks():
    """Someone keeps leaving protection on a flat symbol and taking it away before our cancel lands, and
    a position keeps opening unprotected and closing: nothing the reconciler keeps grows with time."""
    b, st = quiet(), state()  # cooldown 1 s: an unlisted leftover is forgotten after 10 s
    for i in range(10_000):
        now = float(i)
        stop = VenueOrderView(ETH, f"manual_{i}", "sell", None, False, True, True, "stop_market", 1.0)
        positions = long() if i % 4 < 2 else {}
        tick(b, st, positions, [stop], now)
    assert len(st.leftover_cancels) <= 12
    assert len(st.gaps.gaps) <= 1 and len(st.emergency) <= 1
    assert set(st.belief_state) == {BTC, ETH} and set(st.last_repair_at) <= {BTC}
    assert len(b.orders) <= 2 and len(b.intents) <= 2
