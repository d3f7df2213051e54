"""Entry-only policy at the router: the last gate before an order reaches the venue. Pure.

Exits and protective orders (TP/SL/EXIT buckets) are never policy-blocked and
never leverage-capped: a halt that also blocks the stop is the classic trap.

The notional cap is applied to a number the router computes itself: qty x the
venue's mark (a limit at max(limit, mark), ``cap_notional``). An intent's own
``notional_usdt`` can only raise that number, never lower it; without a mark
there is no number, and the entry is refused (``notional_unknown``).
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.guard_check import check_entry
from libs.common.marks import cap_notional
from libs.common.messages import GuardKnobs, OrderIntent


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: bool
    reason: str = ""
    leverage: int | None = None  # leverage to enforce on the venue before an entry
    leverage_capped: bool = False
    notional_usdt: float | None = None  # what the entry counted against the cap (computed here)


ALLOW_EXIT = PolicyDecision(True, "exit_exempt")


def entry_policy(
    intent: OrderIntent,
    guard: GuardKnobs | None,
    *,
    hard_max_leverage: int,
    max_age_sec: float,
    now_ms: int,
    mark_price: float | None,
) -> PolicyDecision:
    """Decide whether an intent may go to the venue and at what leverage.

    ``mark_price`` is the venue's mark as the router read it (None: could not be read).
    """
    if intent.is_exit:
        return ALLOW_EXIT
    check = check_entry(
        guard,
        age_sec=(now_ms - intent.ts_ms) / 1000.0,
        max_age_sec=max_age_sec,
        notional_usdt=entry_notional(intent, mark_price),
        unpriced="notional_unknown",
        requested_leverage=intent.leverage,
        hard_max_leverage=hard_max_leverage,
    )
    return PolicyDecision(
        check.allowed, check.reason, check.leverage, check.leverage_capped, check.notional_usdt
    )


def entry_notional(intent: OrderIntent, mark_price: float | None) -> float | None:
    """USDT an entry counts against the cap: computed from the venue mark, raised (never lowered) by the
    intent's own ``notional_usdt``; None without a usable mark or quantity."""
    if mark_price is None or not mark_price > 0 or intent.qty is None:
        return None
    limit = intent.price if intent.order_type == "limit" else None
    computed = cap_notional(intent.qty, mark_price, limit)
    return max(computed, intent.notional_usdt or 0.0)
