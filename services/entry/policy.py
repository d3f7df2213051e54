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
class Waiting:
    """Orders sent and not yet answered by the router (or their limits)."""

    entries: int  # how many entries
    stop_sec: float  # how long the oldest stage-1 order of a filled entry has waited (0: none waits)

    def reaches(self, limits: Waiting) -> bool:
        return self.stop_sec >= limits.stop_sec or self.entries >= limits.entries


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
    waiting: Waiting | None = None,
    max_waiting: Waiting | None = None,
) -> EntryDecision:
    """Refuse unless every knob allows it (``check_entry``); unreadable knobs refuse (fail safe). Then
    refuse while orders wait for the router's first answer past ``max_waiting``: the stack is behind,
    and an entry sent now would only queue on the CPUs the stops need. For stage-1 stops (positions
    waiting for their protection) one late stop is enough: protection first."""
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
    if check.allowed and waiting is not None and max_waiting is not None and waiting.reaches(max_waiting):
        if waiting.stop_sec >= max_waiting.stop_sec:
            late = f"{waiting.stop_sec * 1000:.0f}>={max_waiting.stop_sec * 1000:.0f}ms"
            return EntryDecision(False, f"stop_waiting:{late}", notional)
        return EntryDecision(False, f"router_behind:{waiting.entries}>={max_waiting.entries}", notional)
    return EntryDecision(check.allowed, check.reason, check.notional_usdt)


def signal_notional(signal: Signal, mark_price: float) -> float:
    """USDT a signal's entry counts against the cap: qty x the venue mark (a limit: max(limit, mark))."""
    return cap_notional(signal.qty, mark_price, signal.price if signal.order_type == "limit" else None)
