"""Entry-only policy at the router: the last gate before an order reaches the venue. Pure.

Exits and protective orders (TP/SL/EXIT buckets) are never policy-blocked and
never leverage-capped: a halt that also blocks the stop is the classic trap.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.messages import GuardKnobs, OrderIntent


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: bool
    reason: str = ""
    leverage: int | None = None  # leverage to enforce on the venue before an entry
    leverage_capped: bool = False


ALLOW_EXIT = PolicyDecision(True, "exit_exempt")


def entry_policy(
    intent: OrderIntent,
    guard: GuardKnobs | None,
    *,
    hard_max_leverage: int,
    max_age_sec: float,
    now_ms: int,
) -> PolicyDecision:
    """Decide whether an intent may go to the venue and at what leverage."""
    if intent.is_exit:
        return ALLOW_EXIT
    if guard is None:
        # cannot read the guard knobs: fail safe for entries only
        return PolicyDecision(False, "guard_unavailable")
    if not guard.allow_entries:
        return PolicyDecision(False, f"entries_blocked:{guard.mode}")
    age_sec = (now_ms - intent.ts_ms) / 1000.0
    if age_sec > max_age_sec:
        return PolicyDecision(False, f"stale_intent:{age_sec:.1f}s")
    if intent.notional_usdt is not None and intent.notional_usdt > guard.max_notional_usdt:
        return PolicyDecision(False, "notional_cap")
    cap = min(hard_max_leverage, guard.max_leverage)
    requested = intent.leverage if intent.leverage is not None else cap
    leverage = min(requested, cap)
    return PolicyDecision(True, "", leverage=leverage, leverage_capped=leverage < requested)
