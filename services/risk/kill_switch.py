"""Kill switch: API error rate, stale data, equity drawdown, reconcile mismatch storm. Pure.

Each trigger has its own release rule, because each means something different:
- api errors and stale data release as soon as the condition clears (plus a
  short hold so a flapping condition does not flap entries);
- a mismatch storm holds the halt for at least KILL_RECONCILE_MISMATCH_HALT_SEC
  and until the streak is back under the threshold;
- an equity drawdown latches: money was lost, an operator must ``/resume``; equity at or below
  zero is a drawdown whatever the peak (there is nothing left to measure from).

Hold ends are absolute times, so the service can persist ``active`` and ``restore`` it after a
restart without extending or shortening a hold. A restored trip whose release needs fresh evidence
(stale data, mismatch storm) stays until the restarted process has seen fresh reconcile data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from libs.common.config import KillSettings

# an API-error trip holds at least this long, so a flapping error rate does not flap entries
API_ERROR_HOLD_SEC = 30.0


class Trigger(StrEnum):
    API_ERRORS = "api_errors"
    STALE_DATA = "stale_data"
    DRAWDOWN = "equity_drawdown"
    MISMATCH_STORM = "reconcile_mismatch_storm"


@dataclass(frozen=True, slots=True)
class KillInputs:
    now: float
    api_errors_in_window: int = 0
    data_age_sec: float | None = None  # None: no data yet (not stale until the grace period passes)
    equity: float | None = None
    mismatch_streak: int = 0
    stream_down_sec: float | None = None  # how long the venue stream has been down; None: up, or no stream


@dataclass(frozen=True, slots=True)
class KillState:
    tripped: bool
    reasons: tuple[str, ...]
    newly_tripped: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    drawdown_pct: float = 0.0
    peak_equity: float | None = None


@dataclass
class KillSwitch:
    settings: KillSettings  # thresholds and holds (KILL_*)
    started_at: float = 0.0
    api_error_hold_sec: float = API_ERROR_HOLD_SEC
    peak_equity: float | None = None
    # trigger -> earliest time it may release (inf = latched)
    active: dict[Trigger, float] = field(default_factory=dict)
    trips: dict[str, int] = field(default_factory=dict)
    # restored trips of these triggers hold until fresh data shows their condition has cleared
    awaiting_data: bool = False

    def _trip(self, t: Trigger, release_at: float, newly: list[str]) -> None:
        if t not in self.active:
            newly.append(t.value)
            self.trips[t.value] = self.trips.get(t.value, 0) + 1
            self.active[t] = release_at
        else:
            self.active[t] = max(self.active[t], release_at)

    def evaluate(self, x: KillInputs) -> KillState:
        c = self.settings
        newly: list[str] = []
        conditions: dict[Trigger, bool] = {}

        conditions[Trigger.API_ERRORS] = x.api_errors_in_window >= c.api_error_max
        if conditions[Trigger.API_ERRORS]:
            self._trip(Trigger.API_ERRORS, x.now + self.api_error_hold_sec, newly)

        age = x.data_age_sec if x.data_age_sec is not None else x.now - self.started_at
        # a long venue-stream outage is stale data too: pushed fills go unseen until a REST pass
        stream_down = x.stream_down_sec is not None and x.stream_down_sec > c.stream_down_sec
        conditions[Trigger.STALE_DATA] = age > c.stale_data_sec or stream_down
        if conditions[Trigger.STALE_DATA]:
            # releases as soon as data is fresh again: the trip time is all it needs (a fixed value, so
            # a persisted copy does not change on every stale evaluation)
            self._trip(Trigger.STALE_DATA, self.active.get(Trigger.STALE_DATA, x.now), newly)

        drawdown, wiped = self._drawdown(x.equity)
        conditions[Trigger.DRAWDOWN] = wiped or drawdown >= c.max_drawdown_pct
        if conditions[Trigger.DRAWDOWN]:
            self._trip(Trigger.DRAWDOWN, float("inf"), newly)

        conditions[Trigger.MISMATCH_STORM] = x.mismatch_streak >= c.reconcile_mismatch_streak_max
        if conditions[Trigger.MISMATCH_STORM] and Trigger.MISMATCH_STORM not in self.active:
            # the hold runs from the trip; release also needs the streak back under the threshold
            self._trip(Trigger.MISMATCH_STORM, x.now + c.reconcile_mismatch_halt_sec, newly)

        if x.data_age_sec is not None:
            self.awaiting_data = False
        if self.awaiting_data:  # restored trips: no evidence yet that their condition has cleared
            for t in (Trigger.STALE_DATA, Trigger.MISMATCH_STORM):
                if t in self.active:
                    conditions[t] = True

        released = self._release(conditions, x.now)
        reasons = tuple(sorted(t.value for t in self.active))
        return KillState(
            bool(self.active), reasons, tuple(newly), tuple(released), round(drawdown, 4), self.peak_equity
        )

    def _drawdown(self, equity: float | None) -> tuple[float, bool]:
        """Percent below the equity peak (the peak follows equity up), and whether nothing is left."""
        if equity is None or not math.isfinite(equity):
            return 0.0, False
        if equity > 0:
            self.peak_equity = max(self.peak_equity or equity, equity)
            return (self.peak_equity - equity) / self.peak_equity * 100, False
        # nothing left (or less): a drawdown whatever the threshold, even with no peak known
        return ((self.peak_equity - equity) / self.peak_equity * 100 if self.peak_equity else 100.0), True

    def _release(self, conditions: dict[Trigger, bool], now: float) -> list[str]:
        """Triggers whose condition has cleared and whose hold has run out."""
        released = []
        for t, release_at in list(self.active.items()):
            if not conditions.get(t, False) and now >= release_at:
                del self.active[t]
                released.append(t.value)
        return released

    def reset_latched(self, equity: float | None = None) -> list[str]:
        """Operator ``/resume``: clear latched triggers and re-base the equity peak."""
        cleared = [t.value for t, r in self.active.items() if r == float("inf")]
        for t in [t for t, r in self.active.items() if r == float("inf")]:
            del self.active[t]
        self.peak_equity = equity if equity is not None and math.isfinite(equity) and equity > 0 else None
        return cleared

    def restore(
        self, active: dict[Trigger, float], peak_equity: float | None, trips: dict[str, int] | None = None
    ) -> None:
        """Take over persisted state (after a restart), never loosening what is already held here."""
        for t, release_at in active.items():
            self.active[t] = max(self.active.get(t, release_at), release_at)
            if t in (Trigger.STALE_DATA, Trigger.MISMATCH_STORM):
                self.awaiting_data = True
        if peak_equity is not None and math.isfinite(peak_equity) and peak_equity > 0:
            self.peak_equity = max(self.peak_equity or peak_equity, peak_equity)
        for k, n in (trips or {}).items():
            self.trips[k] = max(self.trips.get(k, 0), n)
