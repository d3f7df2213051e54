from libs.common.ids import Bucket
from libs.common.messages import GuardKnobs
from services.router.policy import entry_policy
from tests.builders import intent

NOW = 1_700_000_000_000
DEFAULT_GUARD = GuardKnobs()
MARK = 50_000.0


def decide(i, guard=DEFAULT_GUARD, **kw):
    args = dict(hard_max_leverage=20, max_age_sec=30, now_ms=NOW, mark_price=MARK)
    args.update(kw)
    return entry_policy(i, guard, **args)


def test_entry_leverage_capped_by_hard_cap_and_guard():
    d = decide(intent(ts_ms=NOW, leverage=50))
    assert d.allowed and d.leverage == 20 and d.leverage_capped
    d = decide(intent(ts_ms=NOW, leverage=50), GuardKnobs(max_leverage=3))
    assert d.leverage == 3
    d = decide(intent(ts_ms=NOW, leverage=2))
    assert d.leverage == 2 and not d.leverage_capped


def test_exits_are_never_blocked_or_capped():
    sl = intent(
        ts_ms=0, bucket=Bucket.SL, order_type="stop_market", stop_price=1.0, reduce_only=True, leverage=125
    )
    halted = GuardKnobs(allow_entries=False, mode="halted", max_leverage=1, max_notional_usdt=0)
    for guard in (halted, None):
        d = decide(sl, guard)
        assert d.allowed and d.leverage is None


def test_entries_blocked_when_halted_or_guard_unreadable_or_stale_or_too_big():
    i = intent(ts_ms=NOW, notional_usdt=500)
    assert decide(i, GuardKnobs(allow_entries=False, mode="halted")).reason == "entries_blocked:halted"
    assert decide(i, None).reason == "guard_unavailable"
    assert decide(intent(ts_ms=NOW - 31_000)).reason.startswith("stale_intent")
    assert decide(i, GuardKnobs(max_notional_usdt=100)).reason == "notional_cap:500.00>100"
    assert decide(i).allowed


def test_notional_is_computed_from_the_venue_mark_never_lowered_by_the_intent():
    cap = GuardKnobs(max_notional_usdt=10_000)
    # no self-declared notional (the reproduced bug: 1 BTC went through a 10k cap)
    d = decide(intent(ts_ms=NOW, qty=1.0), cap)
    assert not d.allowed and d.reason == "notional_cap:50000.00>10000" and d.notional_usdt == 50_000
    # a self-declared notional lower than qty x mark is ignored
    d = decide(intent(ts_ms=NOW, qty=1.0, notional_usdt=1.0), cap)
    assert not d.allowed and d.reason.startswith("notional_cap:50000.00")
    # a higher one counts (the intent knows something worse)
    d = decide(intent(ts_ms=NOW, qty=0.1, notional_usdt=12_000), cap)
    assert not d.allowed and d.reason == "notional_cap:12000.00>10000"
    d = decide(intent(ts_ms=NOW, qty=0.1), cap)
    assert d.allowed and d.notional_usdt == 5_000


def test_entry_without_a_readable_mark_is_refused_exits_never_need_one():
    assert decide(intent(ts_ms=NOW), mark_price=None).reason == "notional_unknown"
    assert decide(intent(ts_ms=NOW), mark_price=0.0).reason == "notional_unknown"
    sl = intent(ts_ms=NOW, bucket=Bucket.SL, order_type="stop_market", stop_price=1.0, reduce_only=True)
    ex = intent(ts_ms=NOW, bucket=Bucket.EXIT, side="sell", reduce_only=True, qty=5.0)
    for i in (sl, ex):
        assert decide(i, GuardKnobs(max_notional_usdt=0), mark_price=None).allowed


def test_limit_entry_counts_at_the_higher_of_limit_and_mark():
    cap = GuardKnobs(max_notional_usdt=10_000)
    above = intent(ts_ms=NOW, order_type="limit", price=52_000.0, qty=0.197)  # 9,850 at mark, 10,244 at limit
    assert decide(above, cap).reason == "notional_cap:10244.00>10000"
    below = intent(ts_ms=NOW, order_type="limit", price=48_000.0, qty=0.205)  # 9,840 at limit, 10,250 at mark
    assert decide(below, cap).reason == "notional_cap:10250.00>10000"
    ok = intent(ts_ms=NOW, order_type="limit", price=48_000.0, qty=0.197)
    d = decide(ok, cap)
    assert d.allowed and d.notional_usdt == 0.197 * MARK
    # sells alike: a resting sell above the mark fills at its limit, a marketable one at the book
    sell_above = intent(ts_ms=NOW, side="sell", order_type="limit", price=52_000.0, qty=0.197)
    assert decide(sell_above, cap).reason == "notional_cap:10244.00>10000"
    sell_below = intent(ts_ms=NOW, side="sell", order_type="limit", price=48_000.0, qty=0.205)
    assert decide(sell_below, cap).reason == "notional_cap:10250.00>10000"
