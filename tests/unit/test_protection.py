from dataclasses import fields

import pytest

from services.reconciler.gaps import GapTracker
from services.reconciler.protection import CoverageStatus, StopView, evaluate_coverage, should_refresh


def stop(side="sell", qty=1.0, close=False, reduce_only=True, sl=True, cid="SL1"):
    return StopView(cid, side, None if close else qty, 90.0, reduce_only, close, sl)


@pytest.mark.parametrize(
    "pos,orders,status,covered",
    [
        (0.0, [stop()], CoverageStatus.FLAT, 0.0),
        (1.0, [], CoverageStatus.MISSING, 0.0),
        (1.0, [stop(qty=1.0)], CoverageStatus.COVERED, 1.0),
        (1.0, [stop(qty=0.4)], CoverageStatus.UNDER_COVERED, 0.4),
        (1.0, [stop(qty=0.4), stop(qty=0.6, cid="SL2")], CoverageStatus.COVERED, 1.0),
        (5.0, [stop(close=True)], CoverageStatus.COVERED, 5.0),  # close-position covers any size
        (1.0, [stop(side="buy")], CoverageStatus.MISSING, 0.0),  # wrong side adds to the position
        (1.0, [stop(reduce_only=False)], CoverageStatus.MISSING, 0.0),  # could open exposure: not protection
        (1.0, [stop(sl=False)], CoverageStatus.MISSING, 0.0),  # a take-profit is not a stop
        (-2.0, [stop(side="buy", qty=2.0)], CoverageStatus.COVERED, 2.0),
    ],
)
def test_coverage(pos, orders, status, covered):
    c = evaluate_coverage(pos, orders)
    assert c.status is status and c.covered_qty == pytest.approx(covered)


def test_excess_stops_flagged():
    c = evaluate_coverage(1.0, [stop(qty=1.0), stop(qty=1.0, cid="SL2")])
    assert c.protected and c.excess


def decide(cov, last=None, now=100.0, cooldown=10.0, age=0.0):
    return should_refresh(
        cov,
        now=now,
        last_refresh_at=last,
        gap_age_sec=age,
        min_delta_ratio=0.1,
        max_refresh_interval_sec=60,
        cooldown_sec=cooldown,
    )


def test_refresh_gating():
    missing = evaluate_coverage(1.0, [])
    assert decide(missing).refresh and decide(missing).reason == "missing_stop"
    assert decide(missing, last=95.0).reason == "cooldown"  # RECONCILE_REPAIR_COOLDOWN_SEC
    big_gap = evaluate_coverage(1.0, [stop(qty=0.5)])
    assert decide(big_gap, last=50.0).refresh
    small_gap = evaluate_coverage(1.0, [stop(qty=0.95)])
    assert not decide(small_gap).refresh  # anti-churn: 5% < 10%, first sighting
    assert not decide(small_gap, last=30.0, age=59.0).refresh
    assert decide(small_gap, last=30.0, age=60.0).refresh  # but converge once it has lasted
    assert not decide(evaluate_coverage(1.0, [stop()])).refresh


def test_gap_tracker_ttl():
    g = GapTracker(ttl_sec=10)
    u = g.observe("BTC", True, 0.0, "missing_stop")
    assert u.newly_opened and not u.newly_breached
    assert not g.observe("BTC", True, 10.0).newly_breached
    u = g.observe("BTC", True, 10.5)
    assert u.newly_breached and g.breached() == ["BTC"]
    assert not g.observe("BTC", True, 20.0).newly_breached  # reported once
    u = g.observe("BTC", False, 21.0)
    assert u.closed and u.age_sec == 21.0 and g.breached() == [] and g.gaps == {}
    assert not g.observe("ETH", False, 21.0).closed


def test_gap_tracker_keeps_only_open_gaps_however_long_it_runs():
    g = GapTracker(ttl_sec=10)
    for i in range(10_000):
        symbol = f"S{i % 50}"
        g.observe(symbol, True, float(i), "missing_stop")
        g.observe(symbol, False, i + 0.5)
    g.observe("BTC", True, 10_000.0)
    assert list(g.gaps) == ["BTC"]
    assert [f.name for f in fields(g)] == ["ttl_sec", "gaps"]  # no other state that could grow


def test_asserted_gap_starts_the_clock_early():
    g = GapTracker(ttl_sec=5)
    g.assert_gap("BTC", 0.0, "stage1_failed")
    u = g.observe("BTC", True, 6.0)
    assert u.newly_breached and u.reason == "stage1_failed"


def at(trigger, **kw):
    s = stop(**kw)
    return StopView(
        s.client_order_id, s.side, s.qty, trigger, s.reduce_only, s.close_position, s.is_stop_loss
    )


@pytest.mark.parametrize(
    "trigger,intended,asked,counted",
    [
        (49_000.0, 49_000.0, None, True),
        (49_200.0, 49_000.0, None, True),  # 0.41 % off: inside 0.5 %
        (49_300.0, 49_000.0, None, False),  # 0.61 % off
        (24_500.0, 49_000.0, None, False),  # a stop from an earlier position, 50 % away
        (24_500.0, 49_000.0, 24_500.0, True),  # ... unless it is the stop we last asked for
        (24_500.0, None, None, True),  # nothing to judge against
        (None, 49_000.0, None, True),  # unknown trigger: not judged
    ],
)
def test_a_stop_counts_only_where_this_positions_stop_belongs(trigger, intended, asked, counted):
    c = evaluate_coverage(
        1.0, [at(trigger, close=True)], intended_stop=intended, asked_stop=asked, price_tolerance=0.005
    )
    assert c.protected is counted
    assert c.status is (CoverageStatus.COVERED if counted else CoverageStatus.MISPLACED)
    assert len(c.misplaced) == (0 if counted else 1)


def test_misplaced_beside_a_good_stop_and_wrong_side_is_not_misplaced():
    good, stale = at(49_000.0, qty=1.0), at(30_000.0, close=True, cid="OLD")
    c = evaluate_coverage(1.0, [good, stale], intended_stop=49_000.0)
    assert c.status is CoverageStatus.COVERED and c.stops == (good,) and c.misplaced == (stale,)
    # a buy stop cannot protect a long whatever its price: neither counted nor misplaced
    c = evaluate_coverage(1.0, [at(30_000.0, side="buy", close=True)], intended_stop=49_000.0)
    assert c.status is CoverageStatus.MISSING and c.misplaced == ()
    # an undersized stop in the right place with a misplaced one beside it
    c = evaluate_coverage(1.0, [at(49_000.0, qty=0.3), stale], intended_stop=49_000.0)
    assert c.status is CoverageStatus.UNDER_COVERED and c.covered_qty == pytest.approx(0.3)


def test_misplaced_is_repaired_like_a_missing_stop():
    c = evaluate_coverage(1.0, [at(30_000.0, close=True)], intended_stop=49_000.0)
    assert decide(c).refresh and decide(c).reason == "misplaced_stop"
    assert decide(c, last=95.0).reason == "cooldown"
