"""Entry gate: guard knobs applied read-only to one signal. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.messages import GuardKnobs, Signal


@dataclass(frozen=True, slots=True)
class EntryDecision:
    accepted: bool
    reason: str = ""


def entry_decision(
    signal: Signal,
    knobs: GuardKnobs | None,
    *,
    now: float,
    last_entry_at: float | None,
    open_entries: int,
    ref_price: float | None,
) -> EntryDecision:
    """Refuse unless every knob allows it; unreadable knobs refuse (fail safe)."""
    if knobs is None:
        return EntryDecision(False, "guard_unavailable")
    if not knobs.allow_entries:
        return EntryDecision(False, f"entries_blocked:{knobs.mode}")
    if signal.confidence < knobs.min_entry_conf:
        return EntryDecision(False, f"confidence_below_floor:{signal.confidence:g}<{knobs.min_entry_conf:g}")
    if last_entry_at is not None and now - last_entry_at < knobs.entry_cooldown_sec:
        return EntryDecision(False, f"cooldown:{knobs.entry_cooldown_sec - (now - last_entry_at):.1f}s")
    if open_entries >= knobs.max_open_orders:
        return EntryDecision(False, f"open_order_cap:{open_entries}>={knobs.max_open_orders}")
    if ref_price is None:
        return EntryDecision(False, "no_reference_price")
    notional = signal.qty * ref_price
    if notional > knobs.max_notional_usdt:
        return EntryDecision(False, f"notional_cap:{notional:.2f}>{knobs.max_notional_usdt:g}")
    return EntryDecision(True)
