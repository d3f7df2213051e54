"""Stop-coverage evaluation and anti-churn refresh gating. Pure.

A position is protected when reduce-only (or close-position) stop orders on
the closing side cover its size. Close-position stops cover any size. We never
call a position protected on the strength of orders that could *add* to it.

Protection belongs to the current position: a stop counts only when its trigger
is where this position's stop belongs (within a tolerance of the intended stop
price, or of the last stop price we asked for). A stop left over from an earlier
position (Binance keeps one close-position stop per direction, -4130, so a stale
one also blocks the right one) is ``misplaced``: it is replaced, not trusted.
Trailing stops are not counted: before activation they protect nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from libs.common.config import ReconcilerSettings

QTY_TOLERANCE = 1e-9  # below this a position is flat and a stop covers its size


@dataclass(frozen=True, slots=True)
class StopView:
    """A resting protective order as the venue reports it."""

    client_order_id: str
    side: str  # "buy" | "sell"
    qty: float | None  # None with close_position
    trigger_price: float | None
    reduce_only: bool
    close_position: bool
    is_stop_loss: bool = True  # take-profits (and trailing stops) are not protection against loss


class CoverageStatus(StrEnum):
    FLAT = "flat"  # no position: nothing to protect
    COVERED = "covered"
    UNDER_COVERED = "under_covered"
    MISSING = "missing"
    MISPLACED = "misplaced"  # the only stops there are belong somewhere else (an earlier position)


@dataclass(frozen=True, slots=True)
class Coverage:
    status: CoverageStatus
    position_qty: float
    covered_qty: float
    close_position: bool
    stops: tuple[StopView, ...]
    excess: bool = False  # more than one covering stop: not dangerous (reduce-only) but churn to clean
    misplaced: tuple[StopView, ...] = ()  # right side, wrong trigger: not counted

    @property
    def protected(self) -> bool:
        return self.status in (CoverageStatus.FLAT, CoverageStatus.COVERED)

    @property
    def shortfall(self) -> float:
        return max(abs(self.position_qty) - self.covered_qty, 0.0)


def closing_side(position_qty: float) -> str:
    return "sell" if position_qty > 0 else "buy"


def trigger_belongs(
    trigger: float | None, intended: float | None, asked: float | None, tolerance: float
) -> bool:
    """Whether a stop triggering at ``trigger`` protects the position whose stop belongs at ``intended``
    (or at ``asked``, the last stop price we asked for): within ``tolerance`` (a fraction) of either.
    Without an intended price there is nothing to judge against, and an unknown trigger is not judged."""
    if trigger is None or intended is None:
        return True
    return any(p is not None and abs(trigger - p) <= tolerance * p for p in (intended, asked))


def evaluate_coverage(
    position_qty: float,
    orders: list[StopView],
    *,
    qty_tolerance: float = QTY_TOLERANCE,
    intended_stop: float | None = None,
    asked_stop: float | None = None,
    price_tolerance: float = ReconcilerSettings.model_fields["stop_price_tolerance"].default,
) -> Coverage:
    """How well ``orders`` protect a position of signed size ``position_qty`` whose stop belongs at
    ``intended_stop`` (None: any trigger counts)."""
    if abs(position_qty) <= qty_tolerance:
        return Coverage(CoverageStatus.FLAT, 0.0, 0.0, False, ())
    side = closing_side(position_qty)
    candidates = [
        o for o in orders if o.is_stop_loss and o.side == side and (o.reduce_only or o.close_position)
    ]
    stops = tuple(
        o for o in candidates if trigger_belongs(o.trigger_price, intended_stop, asked_stop, price_tolerance)
    )
    misplaced = tuple(o for o in candidates if o not in stops)
    close_pos = any(o.close_position for o in stops)
    covered = abs(position_qty) if close_pos else sum(o.qty or 0.0 for o in stops)
    need = abs(position_qty)
    if not stops:
        status = CoverageStatus.MISPLACED if misplaced else CoverageStatus.MISSING
    elif close_pos or covered + qty_tolerance >= need:
        status = CoverageStatus.COVERED
    else:
        status = CoverageStatus.UNDER_COVERED
    return Coverage(
        status, position_qty, min(covered, need), close_pos, stops, excess=len(stops) > 1, misplaced=misplaced
    )


@dataclass(frozen=True, slots=True)
class RefreshDecision:
    refresh: bool
    reason: str


def should_refresh(
    coverage: Coverage,
    *,
    now: float,
    last_refresh_at: float | None,
    gap_age_sec: float,
    min_delta_ratio: float,
    max_refresh_interval_sec: float,
    cooldown_sec: float,
) -> RefreshDecision:
    """Gate a stop repair so we fix real gaps fast without churning on noise.

    - a missing (or misplaced) stop is repaired as soon as the cooldown allows;
    - an undersized stop is refreshed when the shortfall is at least
      ``min_delta_ratio`` of the position, or when a smaller shortfall has
      lasted ``max_refresh_interval_sec`` (we do converge eventually);
    - never twice inside ``cooldown_sec`` (RECONCILE_REPAIR_COOLDOWN_SEC).
    """
    if coverage.protected:
        return RefreshDecision(False, "protected")
    if last_refresh_at is not None and now - last_refresh_at < cooldown_sec:
        return RefreshDecision(False, "cooldown")
    if coverage.status is CoverageStatus.MISSING:
        return RefreshDecision(True, "missing_stop")
    if coverage.status is CoverageStatus.MISPLACED:
        return RefreshDecision(True, "misplaced_stop")
    ratio = coverage.shortfall / abs(coverage.position_qty)
    if ratio >= min_delta_ratio:
        return RefreshDecision(True, f"under_covered:{ratio:.3f}")
    if gap_age_sec >= max_refresh_interval_sec:
        return RefreshDecision(True, f"under_covered_small_but_lasting:{ratio:.3f}")
    return RefreshDecision(False, f"anti_churn:{ratio:.3f}<{min_delta_ratio}")
