import itertools

import pytest

from libs.common.config import KillSettings, RiskSettings
from services.risk.belief_controller import (
    BeliefController,
    ControllerTuning,
    DebtInputs,
    belief_debt,
    knobs_for,
)
from services.risk.kill_switch import KillInputs, KillSwitch, Trigger
from services.risk.state import (
    MAX_REMEMBERED_COMMANDS,
    RiskState,
    active_from_holds,
    holds_from_active,
    merge,
    remember,
)

CFG = KillSettings(
    api_error_max=5,
    stale_data_sec=30,
    max_drawdown_pct=10,
    reconcile_mismatch_streak_max=3,
    reconcile_mismatch_halt_sec=60,
)


def kill_switch(settings: KillSettings = CFG, started_at: float = 0.0) -> KillSwitch:
    return KillSwitch(settings, started_at=started_at, api_error_hold_sec=10)


def test_mismatch_storm_trips_and_holds():
    k = kill_switch()
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
    k = kill_switch()
    assert k.evaluate(KillInputs(now=0, data_age_sec=0, api_errors_in_window=5)).tripped
    assert k.evaluate(KillInputs(now=5, data_age_sec=0, api_errors_in_window=0)).tripped
    assert not k.evaluate(KillInputs(now=11, data_age_sec=0, api_errors_in_window=0)).tripped


def test_stale_data_including_never_seen():
    k = kill_switch(started_at=0)
    assert not k.evaluate(KillInputs(now=10)).tripped  # grace period after start
    assert k.evaluate(KillInputs(now=31)).reasons == ("stale_data",)
    assert not k.evaluate(KillInputs(now=32, data_age_sec=1)).tripped


def test_drawdown_latches_until_reset():
    k = kill_switch()
    k.evaluate(KillInputs(now=0, data_age_sec=0, equity=1000))
    s = k.evaluate(KillInputs(now=1, data_age_sec=0, equity=890))
    assert s.tripped and s.drawdown_pct == pytest.approx(11.0)
    assert k.evaluate(
        KillInputs(now=2, data_age_sec=0, equity=1000)
    ).tripped  # recovered equity: still latched
    assert k.reset_latched(equity=1000) == ["equity_drawdown"]
    assert not k.evaluate(KillInputs(now=3, data_age_sec=0, equity=1000)).tripped


@pytest.mark.parametrize(
    ("peak", "equity", "drawdown"),
    [(1000, 0.0, 100.0), (1000, -50.0, 105.0), (None, 0.0, 100.0), (None, -1.0, 100.0)],
)
def test_drawdown_trips_at_or_below_zero_equity(peak, equity, drawdown):
    k = kill_switch(KillSettings(max_drawdown_pct=200))  # even with a threshold equity <= 0 never reaches
    if peak is not None:
        assert not k.evaluate(KillInputs(now=0, data_age_sec=0, equity=peak)).tripped
    s = k.evaluate(KillInputs(now=1, data_age_sec=0, equity=equity))
    assert s.tripped and s.reasons == ("equity_drawdown",) and s.drawdown_pct == pytest.approx(drawdown)
    assert k.peak_equity == peak  # a wiped account is never a peak
    assert k.evaluate(KillInputs(now=2, data_age_sec=0, equity=peak or 1000)).tripped  # latched
    k.reset_latched(equity=equity)  # resume while still wiped: no peak to measure from ...
    assert k.peak_equity is None
    assert k.evaluate(KillInputs(now=3, data_age_sec=0, equity=equity)).tripped  # ... and it trips again


def test_unreadable_equity_is_no_reading():
    k = kill_switch()
    k.evaluate(KillInputs(now=0, data_age_sec=0, equity=1000))
    assert not k.evaluate(KillInputs(now=1, data_age_sec=0, equity=float("nan"))).tripped
    assert k.peak_equity == 1000


def _restarted(before: KillSwitch, now: float) -> KillSwitch:
    """What the service does across a restart: persist, then restore into a fresh kill switch."""
    state = RiskState(
        holds=holds_from_active(before.active), peak_equity=before.peak_equity, trips=before.trips
    )
    state = RiskState.model_validate_json(state.model_dump_json())  # through the bytes in KV
    after = kill_switch(started_at=now)
    after.restore(active_from_holds(state.holds), state.peak_equity, state.trips)
    return after


def test_restored_holds_keep_their_absolute_ends():
    k = kill_switch()
    k.evaluate(KillInputs(now=100, data_age_sec=0, mismatch_streak=3, api_errors_in_window=5))
    assert k.active == {Trigger.MISMATCH_STORM: 160, Trigger.API_ERRORS: 110}
    r = _restarted(k, now=105)
    s = r.evaluate(KillInputs(now=105))  # no data yet since the restart
    assert s.tripped and s.reasons == ("api_errors", "reconcile_mismatch_storm") and not s.newly_tripped
    assert r.evaluate(KillInputs(now=109, data_age_sec=0)).reasons == (
        "api_errors",
        "reconcile_mismatch_storm",
    )
    s = r.evaluate(KillInputs(now=110, data_age_sec=0))  # neither extended nor shortened by the restart
    assert s.released == ("api_errors",) and s.reasons == ("reconcile_mismatch_storm",)
    assert r.evaluate(KillInputs(now=159.9, data_age_sec=0)).tripped
    s = r.evaluate(KillInputs(now=160, data_age_sec=0))
    assert not s.tripped and s.released == ("reconcile_mismatch_storm",)
    assert r.trips == {"reconcile_mismatch_storm": 1, "api_errors": 1}


def test_restored_latched_drawdown_and_peak():
    k = kill_switch()
    k.evaluate(KillInputs(now=0, data_age_sec=0, equity=1000))
    k.evaluate(KillInputs(now=1, data_age_sec=0, equity=850))
    r = _restarted(k, now=500)
    assert r.peak_equity == 1000
    s = r.evaluate(KillInputs(now=500, data_age_sec=0, equity=1000))  # recovered: still latched
    assert s.reasons == ("equity_drawdown",)
    assert r.reset_latched(equity=1000) == ["equity_drawdown"]
    assert r.evaluate(KillInputs(now=501, data_age_sec=0, equity=950)).drawdown_pct == pytest.approx(5.0)


def test_restored_trips_that_need_fresh_evidence_wait_for_it():
    # stale data: no fresh grace period after the restart
    k = kill_switch(started_at=0)
    assert k.evaluate(KillInputs(now=31)).reasons == ("stale_data",)
    r = _restarted(k, now=40)
    assert r.evaluate(KillInputs(now=40)).reasons == ("stale_data",)
    assert r.evaluate(KillInputs(now=45)).reasons == ("stale_data",)
    assert not r.evaluate(KillInputs(now=46, data_age_sec=0.5)).tripped
    # a mismatch hold that ended while risk was down: released only once fresh data shows a calm streak
    k = kill_switch()
    k.evaluate(KillInputs(now=0, data_age_sec=0, mismatch_streak=3))
    r = _restarted(k, now=1000)
    assert r.evaluate(KillInputs(now=1000)).reasons == ("reconcile_mismatch_storm",)
    assert r.evaluate(KillInputs(now=1001, data_age_sec=0, mismatch_streak=4)).tripped  # still storming
    assert not r.evaluate(KillInputs(now=1002, data_age_sec=0, mismatch_streak=0)).tripped


def test_stale_trip_has_a_fixed_hold_value():
    k = kill_switch(started_at=0)
    k.evaluate(KillInputs(now=31))
    k.evaluate(KillInputs(now=40))
    assert k.active == {Trigger.STALE_DATA: 31}  # nothing to persist on every stale evaluation


def test_persisted_state_is_strict_about_what_it_reads():
    ok = RiskState(holds={Trigger.DRAWDOWN: None, Trigger.API_ERRORS: 12.5}, peak_equity=10.0)
    assert RiskState.model_validate_json(ok.model_dump_json()) == ok
    assert active_from_holds(ok.holds)[Trigger.DRAWDOWN] == float("inf")
    bad = [
        b"",
        b"{not json",
        b'{"holds": {"no_such_trigger": null}}',
        b'{"holds": {"api_errors": "Infinity"}}',
        b'{"peak_equity": 0}',
        b'{"v": 2}',
        b'{"surprise": 1}',
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            RiskState.model_validate_json(raw)


def test_state_merge_is_the_stricter_of_both():
    a = RiskState(
        holds={Trigger.API_ERRORS: 10.0, Trigger.DRAWDOWN: None},
        peak_equity=900.0,
        trips={"api_errors": 2},
        commands=["a", "b"],
    )
    b = RiskState(
        holds={Trigger.API_ERRORS: 20.0, Trigger.MISMATCH_STORM: 5.0},
        peak_equity=1000.0,
        trips={"api_errors": 1, "reconcile_mismatch_storm": 1},
        manual_halt=True,
        manual_reason="api: x",
        commands=["b", "c"],
    )
    for m in (merge(a, b), merge(b, a)):
        assert m.holds == {Trigger.API_ERRORS: 20.0, Trigger.DRAWDOWN: None, Trigger.MISMATCH_STORM: 5.0}
        assert m.peak_equity == 1000.0 and m.trips == {"api_errors": 2, "reconcile_mismatch_storm": 1}
        assert m.manual_halt and m.manual_reason == "api: x"
        assert sorted(m.commands) == ["a", "b", "c"]


def test_remembered_commands_are_bounded_and_unique():
    ids = [str(i) for i in range(MAX_REMEMBERED_COMMANDS + 10)]
    kept = remember([], *ids)
    assert kept == ids[-MAX_REMEMBERED_COMMANDS:]
    assert remember(["x", "y"], "x") == ["y", "x"]


S = RiskSettings(tighten_after=2, recover_after=3)
C = ControllerTuning(thresholds=(1, 3, 6), recover_ratio=0.5)


def test_controller_tightens_only_after_persistence():
    b = BeliefController(S, C)
    assert b.step(DebtInputs(mismatch_streak=4)).mode == "normal"  # one bad evaluation is not enough
    t = b.step(DebtInputs(mismatch_streak=4))
    assert t.mode == "defensive" and t.changed and "tighten" in t.reason
    assert b.step(DebtInputs()).mode == "defensive"


def test_controller_recovers_one_step_at_a_time_with_hysteresis():
    b = BeliefController(S, C, mode=3)
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
    b = BeliefController(S, C)
    modes = {b.step(DebtInputs(mismatch_streak=5 if i % 2 else 0)).mode for i in range(20)}
    assert modes == {"normal"}


def test_debt_weights_and_knob_table_monotone():
    assert belief_debt(DebtInputs(mismatch_streak=1, gap_breaches=1, orphans=1, unknown_orders=1), C) == 7.0
    ks = [knobs_for(m, S) for m in range(4)]
    assert [k.allow_entries for k in ks] == [True, True, True, False]
    for a, b in itertools.pairwise(ks):
        assert b.max_notional_usdt <= a.max_notional_usdt and b.max_leverage <= a.max_leverage
        assert b.min_entry_conf >= a.min_entry_conf and b.max_open_orders <= a.max_open_orders
