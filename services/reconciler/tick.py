"""One reconcile tick: venue truth vs belief -> mismatches, repairs, gaps, belief states. Pure.

The shell (``service.py``) reads the venue, looks up orders that vanished,
calls ``reconcile_tick`` and publishes what it returns. Everything that
decides anything is here and in the phases it composes (``orders``,
``repairs``), testable without a bus or a venue.
"""

from __future__ import annotations

import time
from collections import deque

from libs.common.ids import Bucket
from libs.common.messages import (
    MismatchEvent,
    PositionBeliefTransition,
    ProtectionGap,
    ReconcileSummary,
    RepairAction,
)
from libs.common.state_machine import PositionBelief, can_transition
from services.reconciler.belief import IN_FLIGHT_STATES, Belief
from services.reconciler.gaps import GapUpdate
from services.reconciler.orders import adopt_unknown, settle_vanished, vanished_orders
from services.reconciler.protection import QTY_TOLERANCE, Coverage, StopView, evaluate_coverage
from services.reconciler.repairs import (
    EMERGENCY_EXITS_PER_GAP,
    cancel_leftovers,
    forget_old_leftover_cancels,
    repair_protection,
    stop_price_for,
)
from services.reconciler.snapshot import PositionView, Snapshot, VenueOrderView
from services.reconciler.state import ReconcileState, SymbolCheck, TickResult, TickWork

__all__ = [  # the tick's surface: the shell, the venue reader and the tests import it from here
    "EMERGENCY_EXITS_PER_GAP",
    "PositionView",
    "ReconcileState",
    "Snapshot",
    "TickResult",
    "VenueOrderView",
    "reconcile_tick",
    "vanished_orders",
]


def reconcile_tick(
    belief: Belief,
    snap: Snapshot,
    lookups: dict[str, VenueOrderView | None],
    st: ReconcileState,
    *,
    now: float | None = None,
    started: float | None = None,
) -> TickResult:
    """``lookups``: client id -> the venue's answer for each order from ``vanished_orders`` (None: the
    venue says it has no such order; left out: it could not be asked)."""
    work = TickWork(time.time() if now is None else now)
    st.tick += 1
    settle_vanished(
        belief, snap, lookups, st, work
    )  # 1) orders we believed open that the venue no longer lists
    adopt_unknown(belief, snap, work)  # 2) venue orders we do not know
    symbols = symbols_to_check(belief, snap, st)  # 3) positions, protection, belief states
    for symbol in symbols:
        reconcile_symbol(belief, snap, st, symbol, work)
    forget_old_leftover_cancels(st, snap.orders, work.now)
    summarize(belief, snap, st, work, symbols=len(symbols), started=started)
    return work.out


def symbols_to_check(belief: Belief, snap: Snapshot, st: ReconcileState) -> list[str]:
    symbols = set(snap.positions) | set(st.gaps.gaps) | {s for s, q in belief.qty.items() if q}
    # a flat symbol may hold leftovers, or a stop price that belonged to its last position
    symbols |= {o.symbol for o in snap.orders if o.is_protective} | set(belief.last_stop_price)
    return sorted(symbols)


def reconcile_symbol(belief: Belief, snap: Snapshot, st: ReconcileState, symbol: str, work: TickWork) -> None:
    pos = snap.position(symbol)
    desync = adopt_drift(belief, symbol, pos.qty, work)
    coverage, intended = coverage_of(belief, symbol, pos, snap.orders, st)
    gap, breached = track_gap(st, symbol, coverage, pos.qty, work)
    repair_protection(belief, st, SymbolCheck(symbol, pos.qty, coverage, intended, gap, breached), work)
    flat = abs(pos.qty) <= QTY_TOLERANCE
    if flat and not belief.busy(symbol, work.now):
        # protection belongs to a position: with none, what rests would protect the next one at this
        # one's prices (and a close-position stop would block the next one's own, -4130)
        belief.last_stop_price.pop(symbol, None)
        cancel_leftovers(st, symbol, snap.orders, work)
    target = target_state(pos.qty, coverage.protected, belief, symbol)
    if desync:
        move_belief(st, work, symbol, PositionBelief.DESYNC, "venue and belief disagree", pos.qty)
    move_belief(st, work, symbol, target, coverage.status.value, pos.qty)


def adopt_drift(belief: Belief, symbol: str, venue_qty: float, work: TickWork) -> bool:
    """A quiet symbol whose believed position differs from the venue's adopts the venue's. Returns whether
    that was a desync (a drift no venue fill of this tick explains)."""
    believed = belief.position(symbol)
    if abs(venue_qty - believed) <= QTY_TOLERANCE or belief.busy(symbol, work.now):
        return False
    explained = symbol in work.explained
    if not explained:
        work.mismatch(
            symbol,
            "position_drift",
            "venue and belief disagree",
            exchange_qty=venue_qty,
            believed_qty=believed,
        )
    work.out.repairs.append(
        RepairAction(
            symbol=symbol,
            action="adopt_position",
            reason="explained by a venue fill" if explained else "drift",
        )
    )
    belief.adopt_position(symbol, venue_qty)
    return not explained


def coverage_of(
    belief: Belief, symbol: str, pos: PositionView, orders: list[VenueOrderView], st: ReconcileState
) -> tuple[Coverage, float | None]:
    """How the resting stops cover the venue's position, and where its stop belongs (None: flat)."""
    cfg = st.config
    stops = [
        StopView(
            o.client_order_id,
            o.side,
            o.qty,
            o.trigger_price,
            o.reduce_only,
            o.close_position,
            o.is_stop_loss,
        )
        for o in orders
        if o.symbol == symbol and o.is_trigger
    ]
    flat = abs(pos.qty) <= QTY_TOLERANCE
    # where this position's stop belongs: a stop anywhere else protects some other position
    intended = None if flat else stop_price_for(symbol, pos.qty, pos, belief, cfg)
    cov = evaluate_coverage(
        pos.qty,
        stops,
        intended_stop=intended,
        asked_stop=belief.last_stop_price.get(symbol),
        price_tolerance=cfg.stop_price_tolerance,
    )
    return cov, intended


def track_gap(
    st: ReconcileState, symbol: str, cov: Coverage, venue_qty: float, work: TickWork
) -> tuple[GapUpdate, bool]:
    """Run the symbol's protection-gap clock: its events, and mismatch pressure for as long as a breach
    lasts. Returns the gap and whether it is breached."""
    ttl = st.config.protection_gap_ttl_sec
    gap = st.gaps.observe(symbol, not cov.protected, work.now, reason=cov.status.value)
    if not gap.open:
        st.emergency.pop(symbol, None)
    work.out.gap_events.extend(gap_events(gap, ttl))
    breached = gap.open and symbol in st.gaps.breached()
    if breached:
        work.mismatch(
            symbol,
            "gap_ttl_breach",
            f"unprotected for {gap.age_sec:.1f}s > {ttl:g}s",
            exchange_qty=venue_qty,
            critical=True,
        )
    return gap, breached


def gap_events(gap: GapUpdate, ttl_sec: float) -> list[ProtectionGap]:
    """The journal's view of a gap change: opened, breached (critical), closed."""
    events = []
    if gap.newly_opened:
        events.append(
            ProtectionGap(symbol=gap.symbol, state="opened", age_sec=0.0, ttl_sec=ttl_sec, reason=gap.reason)
        )
    if gap.newly_breached:
        events.append(
            ProtectionGap(
                symbol=gap.symbol,
                state="breached",
                age_sec=round(gap.age_sec, 3),
                ttl_sec=ttl_sec,
                reason=gap.reason,
                critical=True,
            )
        )
    if gap.closed:
        events.append(
            ProtectionGap(
                symbol=gap.symbol,
                state="closed",
                age_sec=round(gap.age_sec, 3),
                ttl_sec=ttl_sec,
                reason=gap.reason,
            )
        )
    return events


def target_state(qty: float, protected: bool, belief: Belief, symbol: str) -> PositionBelief:
    in_flight = [o for o in belief.orders.values() if o.symbol == symbol and o.state in IN_FLIGHT_STATES]
    if abs(qty) <= QTY_TOLERANCE:
        return (
            PositionBelief.OPENING
            if any(o.bucket is Bucket.ENTRY for o in in_flight)
            else PositionBelief.FLAT
        )
    if any(o.bucket is Bucket.EXIT for o in in_flight):
        return PositionBelief.CLOSING
    return PositionBelief.OPEN_PROTECTED if protected else PositionBelief.OPEN_UNPROTECTED


def move_belief(
    st: ReconcileState, work: TickWork, symbol: str, dst: PositionBelief, reason: str, qty: float
) -> None:
    # a symbol we never looked at was believed flat: the first sighting is journaled like any change,
    # which is what makes a restart rebuild traceable
    src = st.belief_state.get(symbol, PositionBelief.FLAT)
    for step in belief_path(src, dst):
        work.out.belief_transitions.append(
            PositionBeliefTransition(
                symbol=symbol, from_state=src, to_state=step, reason=reason, exchange_qty=qty
            )
        )
        src = step
    st.belief_state[symbol] = dst


def belief_path(src: PositionBelief, dst: PositionBelief) -> list[PositionBelief]:
    """Shortest valid path src -> dst through the position-belief machine (BFS over its table)."""
    if src is dst:
        return []
    frontier: deque[list[PositionBelief]] = deque([[src]])
    seen = {src}
    while frontier:
        path = frontier.popleft()
        for nxt in PositionBelief:
            if nxt not in seen and can_transition(path[-1], nxt):
                if nxt is dst:
                    return [*path[1:], nxt]
                seen.add(nxt)
                frontier.append([*path, nxt])
    return [dst]


def summarize(
    belief: Belief,
    snap: Snapshot,
    st: ReconcileState,
    work: TickWork,
    *,
    symbols: int,
    started: float | None,
) -> None:
    """Close the tick: the mismatch streak, the mismatch events that carry it, the summary."""
    found = work.found
    st.mismatch_events += len(found)
    st.streak = st.streak + 1 if found else 0
    work.out.mismatches = [MismatchEvent(streak=st.streak, **f) for f in found]
    work.out.summary = ReconcileSummary(
        tick=st.tick,
        symbols=symbols,
        mismatches=len(found),
        mismatch_events=st.mismatch_events,
        repair_actions=st.repair_actions,
        repair_skipped=st.repair_skipped,
        mismatch_streak=st.streak,
        open_gaps=len(st.gaps.gaps),
        gap_breaches=len(st.gaps.breached()),
        oldest_gap_sec=round(st.gaps.oldest_age(work.now), 3),
        orphans=work.orphans,
        unknown_orders=belief.unknown_orders(),
        equity=snap.equity,
        duration_ms=round((time.time() - started) * 1000, 3) if started else 0.0,
    )
