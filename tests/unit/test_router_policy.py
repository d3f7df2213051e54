from libs.common.ids import Bucket
from libs.common.messages import GuardKnobs
from services.router.policy import entry_policy
from tests.unit.test_messages import intent

NOW = 1_700_000_000_000
DEFAULT_GUARD = GuardKnobs()


def decide(i, guard=DEFAULT_GUARD, **kw):
    args = dict(hard_max_leverage=20, max_age_sec=30, now_ms=NOW)
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
    assert decide(i, GuardKnobs(max_notional_usdt=100)).reason == "notional_cap"
    assert decide(i).allowed
