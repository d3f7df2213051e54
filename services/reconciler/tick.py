"""One reconcile tick: venue truth vs belief -> mismatches, repairs, gaps, belief states. Pure.

The shell (``service.py``) reads the venue, looks up orders that vanished,
calls ``reconcile_tick`` and publishes what it returns. Everything that
decides anything is here, testable without a bus or a venue.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from libs.common.ids import (
    Bucket,
    bucket_of_client_order_id,
    make_client_order_id,
    make_correlation_id,
    make_intent_id,
)
from libs.common.messages import (
    BusMessage,
    MismatchEvent,
    OrderIntent,
    PositionBeliefTransition,
    ProtectionGap,
    ReconcileSummary,
    RepairAction,
    ReplaceIntent,
)
from libs.common.state_machine import OrderState, PositionBelief, can_transition
from services.reconciler.belief import IN_FLIGHT_STATES, Belief, KnownOrder
from services.reconciler.gaps import GapTracker
from services.reconciler.protection import (
    CoverageStatus,
    StopView,
    closing_side,
    evaluate_coverage,
    should_refresh,
)


@dataclass(frozen=True, slots=True)
class VenueOrderView:
    symbol: str
    client_order_id: str
    side: str
    qty: float | None
    reduce_only: bool
    close_position: bool
    is_trigger: bool
    order_type: str  # unified ccxt type: market / limit / stop_market / take_profit_market ...
    trigger_price: float | None = None
    state: str = "open"

    @property
    def is_stop_loss(self) -> bool:
        return self.is_trigger and "take_profit" not in self.order_type


@dataclass(frozen=True, slots=True)
class PositionView:
    qty: float
    entry_price: float = 0.0
    mark_price: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    positions: dict[str, PositionView]
    orders: list[VenueOrderView]
    equity: float | None = None


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    repair_cooldown_sec: float = 10.0
    min_delta_ratio: float = 0.1
    max_refresh_interval_sec: float = 60.0
    gap_ttl_sec: float = 15.0
    default_stop_pct: float = 0.02
    qty_tolerance: float = 1e-9


@dataclass
class ReconcileState:
    config: ReconcileConfig
    gaps: GapTracker = field(init=False)
    tick: int = 0
    streak: int = 0
    mismatch_events: int = 0
    repair_actions: int = 0
    repair_skipped: int = 0
    last_repair_at: dict[str, float] = field(default_factory=dict)
    belief_state: dict[str, PositionBelief] = field(default_factory=dict)
    unprotected_seconds: deque = field(default_factory=lambda: deque(maxlen=1000))

    def __post_init__(self) -> None:
        self.gaps = GapTracker(self.config.gap_ttl_sec)


@dataclass
class TickResult:
    mismatches: list[MismatchEvent] = field(default_factory=list)
    repairs: list[RepairAction] = field(default_factory=list)
    intents: list[OrderIntent | ReplaceIntent] = field(default_factory=list)
    gap_events: list[ProtectionGap] = field(default_factory=list)
    belief_transitions: list[PositionBeliefTransition] = field(default_factory=list)
    summary: ReconcileSummary | None = None

    def events(self) -> list[BusMessage]:
        out: list[BusMessage] = [*self.belief_transitions, *self.mismatches, *self.gap_events, *self.repairs]
        if self.summary is not None:
            out.append(self.summary)
        return out


def vanished_orders(belief: Belief, snapshot: Snapshot) -> list[KnownOrder]:
    """Orders we believe open that the venue no longer lists: the shell looks each one up."""
    listed = {o.client_order_id for o in snapshot.orders}
    return [o for o in belief.open_orders() if o.client_order_id not in listed]


def stop_price_for(symbol: str, qty: float, pos: PositionView, belief: Belief, cfg: ReconcileConfig) -> float:
    """The last stop price we asked for if it is still on the protective side of the market, else a
    default distance from the mark (a repair protects from now on; it does not chase the entry)."""
    mark = pos.mark_price or pos.entry_price
    last = belief.last_stop_price.get(symbol)
    if last and mark and ((qty > 0 and last < mark) or (qty < 0 and last > mark)):
        return last
    return mark * (1 - cfg.default_stop_pct) if qty > 0 else mark * (1 + cfg.default_stop_pct)


def _stop_intent(symbol: str, qty: float, stop_price: float, now: float, reason: str) -> OrderIntent:
    # a fresh id per repair: an old closed order with the same id would fool a lookup
    intent_id = make_intent_id("reconcile", f"{symbol}:{int(now * 1000)}", Bucket.SL)
    return OrderIntent(
        ts_ms=int(now * 1000),
        intent_id=intent_id,
        correlation_id=make_correlation_id(intent_id),
        client_order_id=make_client_order_id(intent_id, Bucket.SL),
        bucket=Bucket.SL,
        symbol=symbol,
        side=closing_side(qty),
        order_type="stop_market",
        stop_price=stop_price,
        close_position=True,
        source="reconciler",
    )


def _belief_path(src: PositionBelief, dst: PositionBelief) -> list[PositionBelief]:
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


def reconcile_tick(
    belief: Belief,
    snap: Snapshot,
    lookups: dict[str, VenueOrderView | None],
    st: ReconcileState,
    *,
    now: float | None = None,
    started: float | None = None,
) -> TickResult:
    """``lookups``: client id -> the venue's answer for each order from ``vanished_orders``
    (state "not found" when it has no such order; None when it could not be asked)."""
    now = time.time() if now is None else now
    cfg = st.config
    st.tick += 1
    out = TickResult()
    found: list[dict] = []  # every one counts toward the streak; events are built once it is known

    def mismatch(symbol: str, kind: str, detail: str = "", **kw: object) -> None:
        st.mismatch_events += 1
        found.append({"symbol": symbol, "mismatch": kind, "detail": detail, **kw})

    explained: set[str] = set()
    # 1) orders we believed open that the venue no longer lists
    for cid, seen in lookups.items():
        known = belief.orders.get(cid)
        if known is None or seen is None:
            continue  # the venue could not answer: keep believing until it can
        if seen.state == "filled":
            explained.add(known.symbol)  # e.g. a stop triggered on the venue: the position change is expected
            out.repairs.append(
                RepairAction(
                    symbol=known.symbol,
                    action="forget_order",
                    client_order_id=cid,
                    reason="filled on the venue",
                )
            )
        else:
            state = seen.state if seen is not None else "not found"
            mismatch(
                known.symbol,
                "missing_order",
                f"believed {known.state.value}, venue says {state}",
                client_order_id=cid,
            )
            out.repairs.append(
                RepairAction(
                    symbol=known.symbol, action="forget_order", client_order_id=cid, reason=f"venue: {state}"
                )
            )
        belief.forget_order(cid)

    # 2) venue orders we do not know
    orphans = 0
    for o in snap.orders:
        if belief.knows(o.client_order_id) or belief.busy(o.symbol, now):
            continue
        ours = bucket_of_client_order_id(o.client_order_id) is not None
        if not (o.reduce_only or o.close_position):
            orphans += 1
            mismatch(
                o.symbol,
                "orphan_order",
                f"{o.side} {o.qty} {o.order_type} can open exposure",
                client_order_id=o.client_order_id,
            )
        elif ours:
            mismatch(
                o.symbol,
                "unknown_own_order",
                "ours but not in the journal view",
                client_order_id=o.client_order_id,
            )
        if ours:
            bucket = bucket_of_client_order_id(o.client_order_id) or Bucket.EXIT
            belief.adopt_order(
                KnownOrder(
                    o.client_order_id,
                    o.symbol,
                    bucket,
                    o.side,
                    OrderState.ACKED,
                    is_trigger=o.is_trigger,
                    stop_price=o.trigger_price,
                )
            )
            out.repairs.append(
                RepairAction(symbol=o.symbol, action="adopt_order", client_order_id=o.client_order_id)
            )

    # 3) positions, protection, belief states
    symbols = set(snap.positions) | set(st.gaps.gaps) | {s for s, q in belief.qty.items() if q}
    for symbol in sorted(symbols):
        pos = snap.positions.get(symbol, PositionView(0.0))
        venue_qty = pos.qty
        desync = False
        if abs(venue_qty - belief.position(symbol)) > cfg.qty_tolerance and not belief.busy(symbol, now):
            if symbol not in explained:
                desync = True
                mismatch(
                    symbol,
                    "position_drift",
                    "venue and belief disagree",
                    exchange_qty=venue_qty,
                    believed_qty=belief.position(symbol),
                )
            out.repairs.append(
                RepairAction(
                    symbol=symbol,
                    action="adopt_position",
                    reason="explained by a venue fill" if symbol in explained else "drift",
                )
            )
            belief.adopt_position(symbol, venue_qty)

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
            for o in snap.orders
            if o.symbol == symbol and o.is_trigger
        ]
        cov = evaluate_coverage(venue_qty, stops, qty_tolerance=cfg.qty_tolerance)
        gap = st.gaps.observe(symbol, not cov.protected, now, reason=cov.status.value)
        if gap.newly_opened:
            out.gap_events.append(
                ProtectionGap(
                    symbol=symbol, state="opened", age_sec=0.0, ttl_sec=cfg.gap_ttl_sec, reason=gap.reason
                )
            )
        if gap.newly_breached:
            out.gap_events.append(
                ProtectionGap(
                    symbol=symbol,
                    state="breached",
                    age_sec=round(gap.age_sec, 3),
                    ttl_sec=cfg.gap_ttl_sec,
                    reason=gap.reason,
                    critical=True,
                )
            )
        if gap.closed:
            st.unprotected_seconds.append(gap.age_sec)
            out.gap_events.append(
                ProtectionGap(
                    symbol=symbol,
                    state="closed",
                    age_sec=round(gap.age_sec, 3),
                    ttl_sec=cfg.gap_ttl_sec,
                    reason=gap.reason,
                )
            )
        breached = gap.open and symbol in st.gaps.breached()
        if breached:  # pressure for as long as the breach lasts
            mismatch(
                symbol,
                "gap_ttl_breach",
                f"unprotected for {gap.age_sec:.1f}s > {cfg.gap_ttl_sec:g}s",
                exchange_qty=venue_qty,
                critical=True,
            )

        # a fresh fill whose stage-1 stop is still on its way is not a mismatch yet: the gap clock runs,
        # and once it breaches the TTL we repair whatever the reason
        if not cov.protected and (breached or not belief.busy(symbol, now)):
            kind = "missing_stop" if cov.status is CoverageStatus.MISSING else "undersized_stop"
            mismatch(
                symbol, kind, f"covered {cov.covered_qty:g} of {abs(venue_qty):g}", exchange_qty=venue_qty
            )
            decision = should_refresh(
                cov,
                now=now,
                last_refresh_at=st.last_repair_at.get(symbol),
                gap_age_sec=gap.age_sec,
                min_delta_ratio=cfg.min_delta_ratio,
                max_refresh_interval_sec=cfg.max_refresh_interval_sec,
                cooldown_sec=cfg.repair_cooldown_sec,
            )
            if decision.refresh and not _stop_in_flight(belief, symbol):
                new = _stop_intent(
                    symbol,
                    venue_qty,
                    stop_price_for(symbol, venue_qty, pos, belief, cfg),
                    now,
                    decision.reason,
                )
                ours = [s for s in cov.stops if bucket_of_client_order_id(s.client_order_id) is not None]
                if ours:
                    old = max(ours, key=lambda s: s.qty or 0.0)
                    out.intents.append(
                        ReplaceIntent(
                            correlation_id=new.correlation_id,
                            old_client_order_id=old.client_order_id,
                            old_is_trigger=True,
                            new_order=new,
                            reason=decision.reason,
                            source="reconciler",
                        )
                    )
                    action = "refresh_stop"
                else:
                    out.intents.append(new)
                    action = "place_stop"
                st.last_repair_at[symbol] = now
                st.repair_actions += 1
                belief.last_activity[symbol] = now
                out.repairs.append(
                    RepairAction(
                        symbol=symbol,
                        action=action,
                        reason=decision.reason,
                        correlation_id=new.correlation_id,
                        client_order_id=new.client_order_id,
                    )
                )
            else:
                st.repair_skipped += 1

        target = _target_state(venue_qty, cov.protected, belief, symbol, cfg)
        if desync:
            _move(st, out, symbol, PositionBelief.DESYNC, "venue and belief disagree", venue_qty)
        _move(st, out, symbol, target, cov.status.value, venue_qty)

    st.streak = st.streak + 1 if found else 0
    out.mismatches = [MismatchEvent(streak=st.streak, **f) for f in found]
    out.summary = ReconcileSummary(
        tick=st.tick,
        symbols=len(symbols),
        mismatches=len(found),
        mismatch_events=st.mismatch_events,
        repair_actions=st.repair_actions,
        repair_skipped=st.repair_skipped,
        mismatch_streak=st.streak,
        open_gaps=len(st.gaps.gaps),
        gap_breaches=len(st.gaps.breached()),
        oldest_gap_sec=round(st.gaps.oldest_age(now), 3),
        orphans=orphans,
        unknown_orders=belief.unknown_orders(),
        equity=snap.equity,
        duration_ms=round((time.time() - started) * 1000, 3) if started else 0.0,
    )
    return out


def _stop_in_flight(belief: Belief, symbol: str) -> bool:
    return any(
        o.symbol == symbol and o.bucket is Bucket.SL and o.state in IN_FLIGHT_STATES
        for o in belief.orders.values()
    )


def _target_state(
    qty: float, protected: bool, belief: Belief, symbol: str, cfg: ReconcileConfig
) -> PositionBelief:
    in_flight = [o for o in belief.orders.values() if o.symbol == symbol and o.state in IN_FLIGHT_STATES]
    if abs(qty) <= cfg.qty_tolerance:
        return (
            PositionBelief.OPENING
            if any(o.bucket is Bucket.ENTRY for o in in_flight)
            else PositionBelief.FLAT
        )
    if any(o.bucket is Bucket.EXIT for o in in_flight):
        return PositionBelief.CLOSING
    return PositionBelief.OPEN_PROTECTED if protected else PositionBelief.OPEN_UNPROTECTED


def _move(
    st: ReconcileState, out: TickResult, symbol: str, dst: PositionBelief, reason: str, qty: float
) -> None:
    # a symbol we never looked at was believed flat: the first sighting is journaled like any change,
    # which is what makes a restart rebuild traceable
    src = st.belief_state.get(symbol, PositionBelief.FLAT)
    for step in _belief_path(src, dst):
        out.belief_transitions.append(
            PositionBeliefTransition(
                symbol=symbol, from_state=src, to_state=step, reason=reason, exchange_qty=qty
            )
        )
        src = step
    st.belief_state[symbol] = dst
