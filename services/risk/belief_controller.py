"""Belief controller: belief debt -> one guard-knob surface, with persistence and hysteresis. Pure.

Belief debt measures how far our picture of the venue may be from the truth:
mismatch streak, protection gaps past their TTL, orphan orders, orders whose
outcome is unknown; and how far behind the router is with entries (the router
load level, fed to a controller of its own: ``services/risk/router_load.py``). The controller maps debt to a mode (normal < cautious <
defensive < halted) but only *tightens* after the target has been stricter for
``tighten_after`` consecutive evaluations, and only *relaxes* one step at a
time after debt has stayed under ``recover_ratio`` x the current mode's entry
threshold for ``recover_after`` evaluations. Knobs only ever constrain
entries; exits and stop repairs never read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from libs.common.config import RiskSettings
from libs.common.messages import GuardKnobs, GuardMode

MODES: tuple[str, ...] = get_args(GuardMode)  # loosest to strictest


@dataclass(frozen=True, slots=True)
class DebtInputs:
    mismatch_streak: int = 0
    gap_breaches: int = 0
    open_gaps: int = 0
    orphans: int = 0
    unknown_orders: int = 0
    # the router load level: the mode it asks for (0 ok, 1 unknown, 2 throttle, 3 block), worth that
    # mode's threshold in debt (services/risk/router_load.py)
    router_load: int = 0


@dataclass(frozen=True, slots=True)
class ControllerTuning:
    """The debt model's fixed tuning. The base knobs and the persistence counts are settings
    (``RiskSettings``: RISK_MAX_NOTIONAL_USDT, RISK_TIGHTEN_AFTER, ...) and are read from there."""

    w_mismatch_streak: float = 1.0
    w_gap_breach: float = 3.0
    w_open_gap: float = 0.5
    w_orphan: float = 2.0
    w_unknown_order: float = 1.0
    # debt at which each mode (cautious, defensive, halted) becomes the target
    thresholds: tuple[float, float, float] = (1.0, 3.0, 6.0)
    recover_ratio: float = 0.5


def belief_debt(x: DebtInputs, c: ControllerTuning) -> float:
    return (
        c.w_mismatch_streak * x.mismatch_streak
        + c.w_gap_breach * x.gap_breaches
        + c.w_open_gap * x.open_gaps
        + c.w_orphan * x.orphans
        + c.w_unknown_order * x.unknown_orders
        + (c.thresholds[x.router_load - 1] if x.router_load else 0.0)
    )


def target_mode(debt: float, c: ControllerTuning) -> int:
    level = 0
    for i, threshold in enumerate(c.thresholds, start=1):
        if debt >= threshold:
            level = i
    return level


def knobs_for(mode: int, c: RiskSettings, reason: str = "") -> GuardKnobs:
    """The one table from mode to knobs, from the normal-mode settings. Tighter modes only ever lower
    caps and raise floors."""
    name = MODES[mode]
    if name == "normal":
        return GuardKnobs(
            allow_entries=True,
            max_notional_usdt=c.max_notional_usdt,
            max_leverage=c.max_leverage,
            min_entry_conf=c.min_entry_conf,
            entry_cooldown_sec=c.entry_cooldown_sec,
            max_open_orders=c.max_open_orders,
            mode="normal",
            reason=reason,
        )
    if name == "cautious":
        return GuardKnobs(
            allow_entries=True,
            max_notional_usdt=c.max_notional_usdt * 0.5,
            max_leverage=max(1, min(c.max_leverage, 5)),
            min_entry_conf=min(1.0, max(c.min_entry_conf, 0.7)),
            entry_cooldown_sec=c.entry_cooldown_sec * 2,
            max_open_orders=max(1, c.max_open_orders // 2),
            mode="cautious",
            reason=reason,
        )
    if name == "defensive":
        return GuardKnobs(
            allow_entries=True,
            max_notional_usdt=c.max_notional_usdt * 0.25,
            max_leverage=max(1, min(c.max_leverage, 2)),
            min_entry_conf=min(1.0, max(c.min_entry_conf, 0.85)),
            entry_cooldown_sec=c.entry_cooldown_sec * 4,
            max_open_orders=1,
            mode="defensive",
            reason=reason,
        )
    return GuardKnobs(
        allow_entries=False,
        max_notional_usdt=0.0,
        max_leverage=1,
        min_entry_conf=1.0,
        entry_cooldown_sec=c.entry_cooldown_sec * 4,
        max_open_orders=0,
        mode="halted",
        reason=reason,
    )


@dataclass(frozen=True, slots=True)
class ControllerTrace:
    """Everything needed to explain a posture change in a post-mortem replay."""

    debt: float
    inputs: DebtInputs
    target: str
    mode: str
    tighten_streak: int
    recover_streak: int
    changed: bool
    reason: str


@dataclass
class BeliefController:
    settings: RiskSettings
    tuning: ControllerTuning = field(default_factory=ControllerTuning)
    mode: int = 0
    tighten_streak: int = 0
    recover_streak: int = 0

    def step(self, x: DebtInputs) -> ControllerTrace:
        c, s = self.tuning, self.settings
        debt = belief_debt(x, c)
        target = target_mode(debt, c)
        before = self.mode
        reason = ""
        if target > self.mode:
            self.recover_streak = 0
            self.tighten_streak += 1
            if self.tighten_streak >= s.tighten_after:
                self.mode = target
                self.tighten_streak = 0
                reason = f"tighten: debt {debt:g} >= {c.thresholds[target - 1]:g} for {s.tighten_after} evaluations"
        else:
            self.tighten_streak = 0
            relax_below = c.thresholds[self.mode - 1] * c.recover_ratio if self.mode > 0 else 0.0
            if self.mode > 0 and debt < relax_below:
                self.recover_streak += 1
                if self.recover_streak >= s.recover_after:
                    self.mode -= 1
                    self.recover_streak = 0
                    reason = f"recover: debt {debt:g} < {relax_below:g} for {s.recover_after} evaluations"
            else:
                self.recover_streak = 0
        return ControllerTrace(
            debt=debt,
            inputs=x,
            target=MODES[target],
            mode=MODES[self.mode],
            tighten_streak=self.tighten_streak,
            recover_streak=self.recover_streak,
            changed=self.mode != before,
            reason=reason,
        )

    def knobs(self, reason: str = "") -> GuardKnobs:
        return knobs_for(self.mode, self.settings, reason)
