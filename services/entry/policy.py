"""Entry gate: guard knobs applied read-only to one signal. Pure.

The notional cap multiplies by the venue's mark price the service read itself
(``mark_price``), a limit at max(limit, mark) (``cap_notional``); a signal's
``ref_price`` never enters it. No mark, no entry: ``mark_price_unavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.guard_check import check_entry
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
    """Refuse unless every knob allows it (``check_entry``); unreadable knobs refuse (fail safe)."""
    # no usable mark (None, zero, NaN): no number to count, refused as unpriced
    notional = signal_notional(signal, mark_price) if mark_price is not None and mark_price > 0 else None
    check = check_entry(
        knobs,
        confidence=signal.confidence,
        since_last_entry_sec=None if last_entry_at is None else now - last_entry_at,
        open_entries=open_entries,
        notional_usdt=notional,
        unpriced="mark_price_unavailable",
    )
    return EntryDecision(check.allowed, check.reason, check.notional_usdt)


def signal_notional(signal: Signal, mark_price: float) -> float:
    """USDT a signal's entry counts against the cap: qty x the venue mark (a limit: max(limit, mark))."""
    return cap_notional(signal.qty, mark_price, signal.price if signal.order_type == "limit" else None)
