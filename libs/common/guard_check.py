"""The one check of an entry against the guard knobs, shared by the entry service and the router. Pure.

Each caller passes what it knows about the entry; a check runs only on what is given (entry knows
the signal's confidence, the symbol's last entry and the open entries; the router knows the intent's
age and its own leverage cap). The checks run in one fixed order, so the same facts always give the
same first refusal. Unreadable knobs refuse (fail safe). The notional is what the caller counted at
the venue's mark (``libs.common.marks.cap_notional``); without one there is no number and the entry
is refused with the caller's ``unpriced`` reason. Exits never come here.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.messages import GuardKnobs


@dataclass(frozen=True, slots=True)
class GuardCheck:
    allowed: bool
    reason: str = ""
    notional_usdt: float | None = None  # what the entry counted against the cap
    leverage: int | None = None  # allowed, with a hard cap given: the leverage to enforce
    leverage_capped: bool = False


def check_entry(
    knobs: GuardKnobs | None,
    *,
    notional_usdt: float | None,
    unpriced: str,
    confidence: float | None = None,
    since_last_entry_sec: float | None = None,
    open_entries: int | None = None,
    age_sec: float | None = None,
    max_age_sec: float | None = None,
    requested_leverage: int | None = None,
    hard_max_leverage: int | None = None,
) -> GuardCheck:
    """Refuse unless every knob allows it, first refusal wins (order: readable knobs, entries allowed,
    confidence floor, cooldown, open-order cap, intent age, priced, notional cap); then the leverage."""
    if knobs is None:
        return GuardCheck(False, "guard_unavailable")
    if not knobs.allow_entries:
        return GuardCheck(False, f"entries_blocked:{knobs.mode}")
    if confidence is not None and confidence < knobs.min_entry_conf:
        return GuardCheck(False, f"confidence_below_floor:{confidence:g}<{knobs.min_entry_conf:g}")
    if since_last_entry_sec is not None and since_last_entry_sec < knobs.entry_cooldown_sec:
        return GuardCheck(False, f"cooldown:{knobs.entry_cooldown_sec - since_last_entry_sec:.1f}s")
    if open_entries is not None and open_entries >= knobs.max_open_orders:
        return GuardCheck(False, f"open_order_cap:{open_entries}>={knobs.max_open_orders}")
    if age_sec is not None and max_age_sec is not None and age_sec > max_age_sec:
        # the age from the intent's own timestamp, and the limit it passed (ROUTER_INTENT_MAX_AGE_SEC)
        return GuardCheck(False, f"stale_intent:{age_sec:.2f}s>{max_age_sec:g}s")
    if notional_usdt is None:
        return GuardCheck(False, unpriced)
    if notional_usdt > knobs.max_notional_usdt:
        return GuardCheck(
            False, f"notional_cap:{notional_usdt:.2f}>{knobs.max_notional_usdt:g}", notional_usdt
        )
    if hard_max_leverage is None:
        return GuardCheck(True, "", notional_usdt)
    cap = min(hard_max_leverage, knobs.max_leverage)
    requested = requested_leverage if requested_leverage is not None else cap
    leverage = min(requested, cap)
    return GuardCheck(True, "", notional_usdt, leverage=leverage, leverage_capped=leverage < requested)
