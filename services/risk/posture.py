"""Risk posture: what risk's inputs mean for the guard knobs. Pure.

The risk service (``service.py``) folds reconcile summaries, API errors, operator commands and its
persisted state, and asks this module every question about them: which summary is evidence, which
message is an API error and how many fall in the window, what the kill switch is told, which halt
wins and how the knobs say why, whether new knobs differ from the published ones, and what a
restart takes over from the previous knobs. The service writes KV, journals and serves REST.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from libs.common.config import RiskSettings
from libs.common.messages import (
    BusMessage,
    GuardKnobs,
    HaltCommand,
    KillSwitchEvent,
    OrderRetry,
    OrderTransition,
    ReconcileSummary,
    VenueBan,
    VenueStreamStatus,
)
from libs.common.state_machine import OrderState
from services.risk.belief_controller import MODES, ControllerTrace, DebtInputs, knobs_for
from services.risk.kill_switch import KillInputs, KillState, Trigger

HALTED = MODES.index("halted")
_TRIGGERS = frozenset(t.value for t in Trigger)

# fields that make two knob sets different (timestamps and revisions do not)
KNOB_FIELDS = (
    "allow_entries",
    "max_notional_usdt",
    "max_leverage",
    "min_entry_conf",
    "entry_cooldown_sec",
    "max_open_orders",
    "mode",
    "reason",
    "kill_reasons",
    "manual_halt",
    "manual_reason",
    "controller_mode",
    "load_mode",
)


# ---------------------------------------------------------------------- reconcile evidence


class SummaryUse(StrEnum):
    IGNORE = "ignore"  # the venue could not be read: not data (staleness will tell), nothing to evaluate
    STALE = "stale"  # too old to say anything about now: evaluate without it
    FRESH = "fresh"  # evidence: fold it, step the controller, evaluate


def summary_use(summary: ReconcileSummary, now: float, stale_data_sec: float) -> SummaryUse:
    if not summary.ok:
        return SummaryUse.IGNORE
    return SummaryUse.FRESH if now - summary.ts_ms / 1000 <= stale_data_sec else SummaryUse.STALE


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the fresh reconcile summaries have said: the last one, the newest data time, the debt."""

    summary: ReconcileSummary | None = None
    data_at: float | None = None  # unix seconds of the newest fresh summary
    debt_inputs: DebtInputs = field(default_factory=DebtInputs)

    def data_age(self, now: float) -> float | None:
        return now - self.data_at if self.data_at is not None else None


def fold_summary(evidence: Evidence, summary: ReconcileSummary, orphans_at_boot: int) -> Evidence:
    """Take a fresh summary in (``summary_use`` said FRESH)."""
    return Evidence(
        summary=summary,
        data_at=max(evidence.data_at or 0.0, summary.ts_ms / 1000),
        debt_inputs=DebtInputs(
            mismatch_streak=summary.mismatch_streak,
            gap_breaches=summary.gap_breaches,
            open_gaps=summary.open_gaps,
            orphans=max(summary.orphans, orphans_at_boot),  # the boot rebuild's orphans count at least
            unknown_orders=summary.unknown_orders,
        ),
    )


@dataclass(frozen=True, slots=True)
class BeliefTrace:
    """The belief controller's last step as the knobs and ``/guard`` explain it."""

    debt: float
    target: str  # the mode the debt points at
    reason: str  # the last posture change ("" before the first one)

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def belief_trace(step: ControllerTrace, previous: BeliefTrace | None) -> BeliefTrace:
    # the reason names the last posture change; it does not churn every evaluation
    reason = step.reason if step.changed else previous.reason if previous else ""
    return BeliefTrace(debt=step.debt, target=step.target, reason=reason)


# ---------------------------------------------------------------------- API errors and the kill switch


# the transitions that may be API errors: risk's consumer is handed these, not every transition
API_ERROR_STATES = frozenset({OrderState.REJECTED, OrderState.FAILED})


def is_api_error(msg: BusMessage) -> bool:
    """Retries, venue IP bans (an API error in itself) and venue rejections or failures with an error class."""
    if isinstance(msg, OrderRetry | VenueBan):
        return True
    return isinstance(msg, OrderTransition) and msg.to_state in API_ERROR_STATES and bool(msg.error_class)


@dataclass
class ApiErrorWindow:
    """API error times (when they happened, from the messages) counted over a sliding window."""

    window_sec: float
    times: deque[float] = field(default_factory=deque)

    def add(self, at: float) -> None:
        self.times.append(at)

    def count(self, now: float) -> int:
        horizon = now - self.window_sec
        while self.times and self.times[0] < horizon:
            self.times.popleft()
        # arrival order is not time order: an older time may sit behind a newer one
        return sum(1 for t in self.times if t >= horizon)


def kill_inputs(
    now: float, evidence: Evidence, api_errors_in_window: int, stream_down_sec: float | None = None
) -> KillInputs:
    s = evidence.summary
    return KillInputs(
        now=now,
        api_errors_in_window=api_errors_in_window,
        data_age_sec=evidence.data_age(now),
        equity=s.equity if s else None,
        mismatch_streak=s.mismatch_streak if s else 0,
        stream_down_sec=stream_down_sec,
    )


def stream_down_for(status: VenueStreamStatus | None, now: float, silent_after_sec: float) -> float | None:
    """How long the venue stream has been down: since its status said so, or since its last status when
    none came for ``silent_after_sec`` (the stream service itself is gone). None: up, or no stream."""
    if status is None:
        return None
    if status.state == "down":
        return max(now - status.since_ms / 1000, 0.0)
    silent = now - status.ts_ms / 1000
    return silent if silent > silent_after_sec else None


def kill_switch_event(ks: KillState, x: KillInputs) -> KillSwitchEvent | None:
    """The journal entry for a trip or a release (None: the kill switch did not change)."""
    if not (ks.newly_tripped or ks.released):
        return None
    return KillSwitchEvent(
        tripped=ks.tripped,
        reasons=list(ks.reasons),
        newly_tripped=list(ks.newly_tripped),
        released=list(ks.released),
        mismatch_streak=x.mismatch_streak,
        api_errors_in_window=x.api_errors_in_window,
        data_age_sec=round(x.data_age_sec, 3) if x.data_age_sec is not None else None,
        drawdown_pct=ks.drawdown_pct,
    )


# ---------------------------------------------------------------------- operator halt


@dataclass(frozen=True, slots=True)
class OperatorHalt:
    halted: bool = False
    reason: str = ""


# previous knobs that do not parse: start strict and say so
UNREADABLE_KNOBS = OperatorHalt(True, "previous guard knobs unreadable at start")


def after_command(cmd: HaltCommand) -> OperatorHalt:
    """A halt names who and why; a resume lifts it."""
    return OperatorHalt(True, f"{cmd.source}: {cmd.reason}") if cmd.action == "halt" else OperatorHalt()


def stricter(mine: OperatorHalt, theirs: OperatorHalt) -> OperatorHalt:
    """An operator halt found elsewhere (the stored state, the previous knobs) is taken over; nothing
    found elsewhere lifts a halt held here."""
    return theirs if theirs.halted and not mine.halted else mine


# ---------------------------------------------------------------------- the knobs


def compose_knobs(
    settings: RiskSettings,
    *,
    controller_mode: int,
    trace: BeliefTrace | None,
    debt_inputs: DebtInputs,
    kill: KillState,
    operator: OperatorHalt,
    state_error: str | None,
    load_mode: int = 0,
    load_reason: str = "",
    load_level: int = 0,
) -> GuardKnobs:
    """Controller posture (the stricter of the belief controller's and the router-load controller's),
    overridden to halted by the kill switch, an operator or an unknown state.

    Every halt in force is named in the reason (none hides another); ``state_unavailable`` leads
    the kill reasons while the persisted state cannot be trusted.
    """
    mode_name = MODES[controller_mode]
    halted = operator.halted or kill.tripped or state_error is not None
    kill_reasons = list(kill.reasons)
    if state_error is not None:
        kill_reasons.insert(0, "state_unavailable")
    if halted:
        why = []
        if state_error is not None:
            why.append(f"state_unavailable: {state_error}")
        if operator.halted:
            why.append(f"manual: {operator.reason}")
        if kill.tripped:
            why.append("kill switch: " + ",".join(kill.reasons))
        if load_mode > controller_mode:
            why.append(load_reason or f"router load: {MODES[load_mode]}")
        base = knobs_for(HALTED, settings, "; ".join(why))
    elif load_mode > controller_mode:  # the router is behind: entries shed (throttled or blocked)
        base = knobs_for(load_mode, settings, load_reason or f"router load: {MODES[load_mode]}")
    else:
        reason = (trace.reason if trace else "") or f"controller: {mode_name}"
        base = knobs_for(controller_mode, settings, reason)
    inputs = {k: float(v) for k, v in asdict(debt_inputs).items()} | {"router_load": float(load_level)}
    return base.model_copy(
        update={
            "controller_mode": mode_name,
            "load_mode": MODES[load_mode],
            "belief_debt": trace.debt if trace else None,
            "debt_inputs": inputs,
            "kill_reasons": kill_reasons,
            "manual_halt": operator.halted,
            "manual_reason": operator.reason,
        }
    )


def knobs_changed(published: GuardKnobs | None, knobs: GuardKnobs) -> bool:
    """Worth a KV write and a journal entry: a knob or its explanation changed (not a timestamp)."""
    return published is None or any(getattr(published, f) != getattr(knobs, f) for f in KNOB_FIELDS)


@dataclass(frozen=True, slots=True)
class PreviousPosture:
    """What a restart takes over from the last published knobs."""

    operator: OperatorHalt
    controller_mode: int | None  # None: the knobs name no mode this build knows
    load_mode: int  # the router-load controller's (0 when the knobs name none this build knows)
    holds: dict[Trigger, float]  # kill-switch triggers they name -> earliest release


def previous_posture(prev: GuardKnobs, now: float) -> PreviousPosture:
    holds: dict[Trigger, float] = {}
    for r in prev.kill_reasons:
        if r in _TRIGGERS:
            t = Trigger(r)
            # a latch stays latched; a hold's end is not in the knobs: it waits for fresh data
            holds[t] = math.inf if t is Trigger.DRAWDOWN else now
    return PreviousPosture(
        operator=OperatorHalt(True, prev.manual_reason) if prev.manual_halt else OperatorHalt(),
        controller_mode=MODES.index(prev.controller_mode) if prev.controller_mode in MODES else None,
        load_mode=MODES.index(prev.load_mode) if prev.load_mode in MODES else 0,
        holds=holds,
    )
