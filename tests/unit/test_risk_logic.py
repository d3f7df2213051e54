import itertools

import pytest

from services.risk.belief_controller import (
    BeliefController,
    ControllerConfig,
    DebtInputs,
    belief_debt,
    knobs_for,
)
from services.risk.kill_switch import KillInputs, KillSwitch, KillSwitchConfig

CFG = KillSwitchConfig(
    api_error_max=5,
    api_error_hold_sec=10,
    stale_data_sec=30,
    max_drawdown_pct=10,
    mismatch_streak_max=3,
    mismatch_halt_sec=60,
)


def test_mismatch_storm_trips_and_holds():
    k = KillSwitch(CFG)
    assert not k.evaluate(KillInputs(now=0, data_age_sec=0, mismatch_streak=2)).tripped
    s = k.evaluate(KillInputs(now=1, data_age_sec=0, mismatch_streak=3))
    assert s.tripped and s.newly_tripped == ("reconcile_mismatch_storm",)
    # streak cleared but the hold (KILL_RECONCILE_MISMATCH_HALT_SEC) is not over
    assert k.evaluate(KillInputs(now=30, data_age_sec=0, mismatch_streak=0)).tripped
    # hold over but the storm is still raging
    assert k.evaluate(KillInputs(now=62, data_age_sec=0, mismatch_streak=4)).tripped
    s = k.evaluate(KillInputs(now=63, data_age_sec=0, mismatch_streak=0))
    assert not s.tripped and s.released == ("reconcile_mismatch_storm",)
    assert k.trips == {"reconcile_mismatch_storm": 1}


def test_api_errors_with_hold():
    k = KillSwitch(CFG)
    assert k.evaluate(KillInputs(now=0, data_age_sec=0, api_errors_in_window=5)).tripped
    assert k.evaluate(KillInputs(now=5, data_age_sec=0, api_errors_in_window=0)).tripped
    assert not k.evaluate(KillInputs(now=11, data_age_sec=0, api_errors_in_window=0)).tripped


def test_stale_data_including_never_seen():
    k = KillSwitch(CFG, started_at=0)
    assert not k.evaluate(KillInputs(now=10)).tripped  # grace period after start
    assert k.evaluate(KillInputs(now=31)).reasons == ("stale_data",)
    assert not k.evaluate(KillInputs(now=32, data_age_sec=1)).tripped


def test_drawdown_latches_until_reset():
    k = KillSwitch(CFG)
    k.evaluate(KillInputs(now=0, data_age_sec=0, equity=1000))
    s = k.evaluate(KillInputs(now=1, data_age_sec=0, equity=890))
    assert s.tripped and s.drawdown_pct == pytest.approx(11.0)
    assert k.evaluate(
        KillInputs(now=2, data_age_sec=0, equity=1000)
    ).tripped  # recovered equity: still latched
    assert k.reset_latched(equity=1000) == ["equity_drawdown"]
    assert not k.evaluate(KillInputs(now=3, data_age_sec=0, equity=1000)).tripped


C = ControllerConfig(thresholds=(1, 3, 6), tighten_after=2, recover_after=3, recover_ratio=0.5)


def test_controller_tightens_only_after_persistence():
    b = BeliefController(C)
    assert b.step(DebtInputs(mismatch_streak=4)).mode == "normal"  # one bad evaluation is not enough
    t = b.step(DebtInputs(mismatch_streak=4))
    assert t.mode == "defensive" and t.changed and "tighten" in t.reason
    assert b.step(DebtInputs()).mode == "defensive"


def test_controller_recovers_one_step_at_a_time_with_hysteresis():
    b = BeliefController(C, mode=3)
    # debt below halted's threshold but not below half of it: no recovery
    for _ in range(5):
        assert b.step(DebtInputs(mismatch_streak=4)).mode == "halted"
    for _ in range(2):
        assert b.step(DebtInputs()).mode == "halted"
    assert b.step(DebtInputs()).mode == "defensive"  # third clean evaluation: one step
    for _ in range(3):
        t = b.step(DebtInputs())
    assert t.mode == "cautious"
    # a relapse resets the recovery counter
    b.step(DebtInputs())
    b.step(DebtInputs(mismatch_streak=1))
    assert b.recover_streak == 0


def test_flapping_debt_does_not_flap_the_mode():
    b = BeliefController(C)
    modes = {b.step(DebtInputs(mismatch_streak=5 if i % 2 else 0)).mode for i in range(20)}
    assert modes == {"normal"}


def test_debt_weights_and_knob_table_monotone():
    assert belief_debt(DebtInputs(mismatch_streak=1, gap_breaches=1, orphans=1, unknown_orders=1), C) == 7.0
    ks = [knobs_for(m, C) for m in range(4)]
    assert [k.allow_entries for k in ks] == [True, True, True, False]
    for a, b in itertools.pairwise(ks):
        assert b.max_notional_usdt <= a.max_notional_usdt and b.max_leverage <= a.max_leverage
        assert b.min_entry_conf >= a.min_entry_conf and b.max_open_orders <= a.max_open_orders
