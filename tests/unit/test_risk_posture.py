"""Risk's decisions (services/risk/posture.py): evidence, API errors, which halt wins, what changed,
what a restart takes over."""

from __future__ import annotations

import math

import pytest

from libs.common.config import RiskSettings
from libs.common.ids import Bucket
from libs.common.messages import (
    GuardKnobs,
    HaltCommand,
    OrderRetry,
    OrderTransition,
    ReconcileSummary,
    Signal,
    VenueBan,
)
from libs.common.state_machine import OrderState
from services.risk.belief_controller import ControllerTrace, DebtInputs
from services.risk.kill_switch import KillInputs, KillState, Trigger
from services.risk.posture import (
    UNREADABLE_KNOBS,
    ApiErrorWindow,
    BeliefTrace,
    Evidence,
    OperatorHalt,
    SummaryUse,
    after_command,
    belief_trace,
    fold_summary,
    is_api_error,
    kill_inputs,
    kill_switch_event,
    knobs_changed,
    previous_posture,
    stricter,
    summary_use,
)
from tests.builders import knobs

NOW = 1_700_000_000.0
SETTINGS = RiskSettings(max_notional_usdt=10_000, max_leverage=10, min_entry_conf=0.5)
BTC = "BTC/USDT:USDT"


def summary(at: float = NOW, **kw) -> ReconcileSummary:
    return ReconcileSummary(ts_ms=int(at * 1000), tick=1, **kw)


def transition(to_state: OrderState, error_class: str | None = None) -> OrderTransition:
    return OrderTransition(
        correlation_id="c1",
        intent_id="i1",
        client_order_id="x1",
        symbol=BTC,
        bucket=Bucket.ENTRY,
        from_state=OrderState.SUBMITTING,
        to_state=to_state,
        error_class=error_class,
    )


def compose(**kw) -> GuardKnobs:
    return knobs(SETTINGS, **kw)


# ---------------------------------------------------------------------- evidence


def test_summary_use_ignores_an_unreadable_venue_and_ages_out_old_summaries():
    assert summary_use(summary(ok=False), NOW, 30) is SummaryUse.IGNORE
    assert summary_use(summary(ok=False, at=NOW - 100), NOW, 30) is SummaryUse.IGNORE
    assert summary_use(summary(at=NOW - 30), NOW, 30) is SummaryUse.FRESH  # at the limit: still fresh
    assert summary_use(summary(at=NOW - 30.001), NOW, 30) is SummaryUse.STALE


def test_folding_a_summary_keeps_the_newest_data_time_and_the_boot_orphans():
    e = fold_summary(
        Evidence(),
        summary(mismatch_streak=2, gap_breaches=1, open_gaps=3, orphans=0, unknown_orders=4, equity=5.0),
        orphans_at_boot=2,
    )
    assert e.data_at == NOW and e.summary is not None and e.summary.equity == 5.0
    assert e.debt_inputs == DebtInputs(
        mismatch_streak=2, gap_breaches=1, open_gaps=3, orphans=2, unknown_orders=4
    )
    older = fold_summary(e, summary(at=NOW - 5, orphans=7), orphans_at_boot=2)
    assert older.data_at == NOW  # a late summary never makes the data look older
    assert older.summary is not None and older.summary.ts_ms == int((NOW - 5) * 1000)
    assert older.debt_inputs.orphans == 7
    assert Evidence().data_age(NOW) is None and e.data_age(NOW + 2) == 2


def test_belief_trace_keeps_the_last_posture_change_as_its_reason():
    def step(changed: bool, reason: str = "") -> ControllerTrace:
        return ControllerTrace(
            debt=4.0,
            inputs=DebtInputs(),
            target="defensive",
            mode="normal",
            tighten_streak=1,
            recover_streak=0,
            changed=changed,
            reason=reason,
        )

    first = belief_trace(step(False), None)
    assert first == BeliefTrace(debt=4.0, target="defensive", reason="")
    tightened = belief_trace(step(True, "tighten: x"), first)
    assert tightened.reason == "tighten: x"
    assert belief_trace(step(False), tightened).reason == "tighten: x"  # does not churn
    assert tightened.as_dict() == {"debt": 4.0, "target": "defensive", "reason": "tighten: x"}


# ---------------------------------------------------------------------- API errors and the kill switch


def test_what_counts_as_an_api_error():
    retry = OrderRetry(
        correlation_id="c1",
        client_order_id="x1",
        symbol=BTC,
        operation="create",
        error_class="NetworkError",
        reason="timeout",
        policy="retry",
        tries=1,
        attempt=2,
        delay_sec=0.1,
        elapsed_sec=0.1,
    )
    ban = VenueBan(banned_until_ms=1, source_service="router")
    assert is_api_error(retry) and is_api_error(ban)
    assert is_api_error(transition(OrderState.REJECTED, "InsufficientFunds"))
    assert is_api_error(transition(OrderState.FAILED, "ExchangeError"))
    assert not is_api_error(transition(OrderState.REJECTED))  # no error class: not a venue error
    assert not is_api_error(transition(OrderState.FILLED, "x"))
    assert not is_api_error(summary())
    assert not is_api_error(Signal(signal_id="s", symbol=BTC, side="buy", qty=1.0))


def test_api_error_window_slides_and_counts_out_of_order_times():
    w = ApiErrorWindow(window_sec=60)
    for t in (NOW - 100, NOW - 10, NOW - 70, NOW - 1):  # NOW - 70 arrived late, behind a newer one
        w.add(t)
    assert w.count(NOW) == 2
    assert list(w.times) == [NOW - 10, NOW - 70, NOW - 1]  # pruned from the front only
    assert w.count(NOW + 55) == 1
    assert w.count(NOW + 1000) == 0 and not w.times


def test_kill_inputs_before_and_after_data():
    assert kill_inputs(NOW, Evidence(), 3) == KillInputs(now=NOW, api_errors_in_window=3)
    e = fold_summary(Evidence(), summary(at=NOW - 2, equity=900.0, mismatch_streak=4), 0)
    assert kill_inputs(NOW, e, 0) == KillInputs(
        now=NOW, api_errors_in_window=0, data_age_sec=2.0, equity=900.0, mismatch_streak=4
    )


def test_kill_switch_event_only_for_trips_and_releases():
    x = KillInputs(now=NOW, api_errors_in_window=7, data_age_sec=1.23456, mismatch_streak=2)
    assert kill_switch_event(KillState(True, ("api_errors",)), x) is None  # still tripped: nothing new
    ev = kill_switch_event(KillState(True, ("api_errors",), newly_tripped=("api_errors",)), x)
    assert ev is not None and ev.tripped and ev.newly_tripped == ["api_errors"] and ev.released == []
    assert (ev.api_errors_in_window, ev.mismatch_streak, ev.data_age_sec) == (7, 2, 1.235)
    ev = kill_switch_event(KillState(False, (), released=("stale_data",)), KillInputs(now=NOW))
    assert ev is not None and not ev.tripped and ev.released == ["stale_data"] and ev.data_age_sec is None


# ---------------------------------------------------------------------- operator halt


def test_commands_and_the_stricter_operator_halt():
    halt = HaltCommand(action="halt", reason="maintenance", source="api")
    assert after_command(halt) == OperatorHalt(True, "api: maintenance")
    assert after_command(HaltCommand(action="resume", reason="done", source="api")) == OperatorHalt()
    mine, theirs = OperatorHalt(True, "api: mine"), OperatorHalt(True, "api: theirs")
    assert stricter(OperatorHalt(), theirs) == theirs
    assert stricter(mine, theirs) == mine  # a halt held here keeps its own reason
    assert stricter(mine, OperatorHalt()) == mine  # nothing found elsewhere lifts it


# ---------------------------------------------------------------------- which halt wins


def test_controller_posture_when_nothing_halts():
    k = compose()
    assert k.allow_entries and k.mode == "normal" and k.reason == "controller: normal"
    assert (k.max_notional_usdt, k.max_leverage, k.min_entry_conf) == (10_000, 10, 0.5)
    assert k.controller_mode == "normal" and k.belief_debt is None and k.kill_reasons == []
    trace = BeliefTrace(debt=3.5, target="defensive", reason="tighten: debt 3.5 >= 3")
    k = compose(controller_mode=2, trace=trace, debt_inputs=DebtInputs(mismatch_streak=2, orphans=1))
    assert k.allow_entries and k.mode == "defensive" and k.reason == "tighten: debt 3.5 >= 3"
    assert (
        k.belief_debt == 3.5 and k.debt_inputs["orphans"] == 1.0 and k.debt_inputs["mismatch_streak"] == 2.0
    )
    k = compose(controller_mode=1, trace=BeliefTrace(debt=1.0, target="cautious", reason=""))
    assert k.reason == "controller: cautious"  # no change yet to name


@pytest.mark.parametrize(
    ("kw", "reason", "kill_reasons"),
    [
        ({"operator": OperatorHalt(True, "api: x")}, "manual: api: x", []),
        ({"kill": KillState(True, ("api_errors", "stale_data"))}, "kill switch: api_errors,stale_data", None),
        (
            {"state_error": "unreadable: Timeout"},
            "state_unavailable: unreadable: Timeout",
            ["state_unavailable"],
        ),
    ],
)
def test_each_halt_alone_halts_and_names_itself(kw, reason, kill_reasons):
    k = compose(controller_mode=0, trace=BeliefTrace(debt=0.0, target="normal", reason="recover: y"), **kw)
    assert not k.allow_entries and k.mode == "halted" and k.reason == reason
    assert k.max_notional_usdt == 0 and k.max_open_orders == 0
    assert k.controller_mode == "normal"  # the controller's own mode is still reported
    expected = kill_reasons if kill_reasons is not None else ["api_errors", "stale_data"]
    assert k.kill_reasons == expected


def test_every_halt_in_force_is_named_state_first():
    k = compose(
        controller_mode=3,
        operator=OperatorHalt(True, "api: x"),
        kill=KillState(True, ("equity_drawdown",)),
        state_error="corrupt risk.state (revision 4)",
    )
    assert k.reason == (
        "state_unavailable: corrupt risk.state (revision 4); manual: api: x; kill switch: equity_drawdown"
    )
    assert k.kill_reasons == ["state_unavailable", "equity_drawdown"]
    assert k.manual_halt and k.manual_reason == "api: x" and k.controller_mode == "halted"


def test_a_knob_change_is_worth_publishing_a_new_timestamp_is_not():
    k = compose()
    assert knobs_changed(None, k)
    assert not knobs_changed(k, k.model_copy(update={"ts_ms": k.ts_ms + 1, "revision": 9}))
    assert not knobs_changed(k, k.model_copy(update={"belief_debt": 0.5}))  # the trace alone does not churn
    for update in ({"reason": "other"}, {"max_leverage": 3}, {"kill_reasons": ["x"]}, {"manual_halt": True}):
        assert knobs_changed(k, k.model_copy(update=update))


# ---------------------------------------------------------------------- restart


def test_previous_knobs_give_back_the_operator_halt_mode_and_named_trips():
    prev = GuardKnobs(
        allow_entries=False,
        mode="halted",
        controller_mode="defensive",
        manual_halt=True,
        manual_reason="api: x",
        kill_reasons=["state_unavailable", "equity_drawdown", "stale_data", "no_such_trigger"],
    )
    p = previous_posture(prev, NOW)
    assert p.operator == OperatorHalt(True, "api: x") and p.controller_mode == 2
    # a latch stays latched; a hold waits for fresh data (its end is not in the knobs)
    assert p.holds == {Trigger.DRAWDOWN: math.inf, Trigger.STALE_DATA: NOW}
    p = previous_posture(GuardKnobs(controller_mode="bogus", manual_reason="stale text"), NOW)
    assert p.operator == OperatorHalt() and p.controller_mode is None and p.holds == {}
    assert UNREADABLE_KNOBS.halted and UNREADABLE_KNOBS.reason == "previous guard knobs unreadable at start"
