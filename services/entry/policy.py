"""Entry gate: guard knobs applied read-only to one signal. Pure.

The notional cap multiplies by the venue's mark price the service read itself
(``mark_price``), a limit at max(limit, mark) (``cap_notional``); a signal's
``ref_price`` never enters it. No mark, no entry: ``mark_price_unavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.marks import cap_notional
from libs.common.messages import GuardKnobs, Signal


@dataclass(frozen=True, slots=True)
class EntryDecision:
    accepted: bool
    reason: str = ""
    notional_usdt: float | None = None  # what the signal counted against the cap


def entry_decision(
    signal: Signal,
    knobs: GuardKnobs | None,
    *,
    now: float,
    last_entry_at: float | None,
    open_entries: int,
    mark_price: float | None,
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
    if mark_price is None or not mark_price > 0:
        return EntryDecision(False, "mark_price_unavailable")
    notional = signal_notional(signal, mark_price)
    if notional > knobs.max_notional_usdt:
        return EntryDecision(False, f"notional_cap:{notional:.2f}>{knobs.max_notional_usdt:g}", notional)
    return EntryDecision(True, "", notional)


def signal_notional(signal: Signal, mark_price: float) -> float:
    """USDT a signal's entry counts against the cap: qty x the venue mark (a limit: max(limit, mark))."""
    return cap_notional(signal.qty, mark_price, signal.price if signal.order_type == "limit" else None)
