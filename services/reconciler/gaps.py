"""Per-symbol protection-gap tracker with a TTL. Pure.

A gap opens the first tick a position is seen without adequate stop coverage
(or when the entry service asserts that stage-1 protection failed) and closes
when coverage is restored or the position is gone. A gap older than the TTL is
a breach: reported once as critical, and counted as mismatch pressure for as
long as it lasts. Only open gaps are kept: a closed one lives on as its "closed"
event (the unprotected-time metric is observed from those), so a long-running
service holds one entry per unprotected symbol, never a history.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Gap:
    symbol: str
    opened_at: float
    reason: str
    breached: bool = False


@dataclass(frozen=True, slots=True)
class GapUpdate:
    symbol: str
    open: bool
    age_sec: float
    newly_opened: bool = False
    newly_breached: bool = False
    closed: bool = False
    reason: str = ""


@dataclass
class GapTracker:
    ttl_sec: float
    gaps: dict[str, Gap] = field(default_factory=dict)

    def observe(self, symbol: str, unprotected: bool, now: float, reason: str = "") -> GapUpdate:
        gap = self.gaps.get(symbol)
        if not unprotected:
            if gap is None:
                return GapUpdate(symbol, False, 0.0)
            del self.gaps[symbol]
            age = now - gap.opened_at
            return GapUpdate(symbol, False, age, closed=True, reason=gap.reason)
        newly_opened = gap is None
        if gap is None:
            gap = self.gaps[symbol] = Gap(symbol, now, reason)
        age = now - gap.opened_at
        newly_breached = not gap.breached and age > self.ttl_sec
        if newly_breached:
            gap.breached = True
        return GapUpdate(symbol, True, age, newly_opened, newly_breached, reason=gap.reason)

    def assert_gap(self, symbol: str, now: float, reason: str) -> None:
        """An external report (entry stage-1 failure) opens a gap before the next tick sees it."""
        self.gaps.setdefault(symbol, Gap(symbol, now, reason))

    def breached(self) -> list[str]:
        return sorted(s for s, g in self.gaps.items() if g.breached)

    def oldest_age(self, now: float) -> float:
        return max((now - g.opened_at for g in self.gaps.values()), default=0.0)
