"""One reconcile tick: venue truth vs belief -> mismatches, repairs, gaps, belief states. Pure.

The shell (``service.py``) reads the venue, looks up orders that vanished,
calls ``reconcile_tick`` and publishes what it returns. Everything that
decides anything is here, testable without a bus or a venue.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from libs.common.ids import Bucket, bucket_of_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import (
    BusMessage,
    CancelIntent,
    MismatchEvent,
    OrderIntent,
    PositionBeliefTransition,
    ProtectionGap,
    ReconcileSummary,
    RepairAction,
    ReplaceIntent,
)
from libs.common.protection import market_exit, position_side, stop_loss
from libs.common.state_machine import OrderState, PositionBelief, can_transition
from services.reconciler.belief import IN_FLIGHT_STATES, Belief, KnownOrder
from services.reconciler.gaps import GapTracker
from services.reconciler.protection import (
    Coverage,
    CoverageStatus,
    StopView,
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
    def is_trailing(self) -> bool:
        return "trailing" in self.order_type

    @property
    def is_stop_loss(self) -> bool:
        # a trailing stop protects nothing before it activates: never counted as the stop-loss
        return self.is_trigger and "take_profit" not in self.order_type and not self.is_trailing

    @property
    def is_protective(self) -> bool:
        """Closes (part of) a position and never opens one: it belongs to a position."""
        return self.reduce_only or self.close_position


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
    # a stop counts for a position only within this fraction of where its stop belongs
    stop_price_tolerance: float = 0.005
    # close at market (reduce-only) when a breached gap's stop placements keep being refused
    emergency_exit: bool = True
    emergency_exit_after_refusals: int = 2


EMERGENCY_EXITS_PER_GAP = 3  # a refused exit is tried again (after the cooldown), but not forever


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
    leftover_cancels: dict[str, float] = field(default_factory=dict)  # client id -> when we asked
    emergency: dict[str, tuple[float, int, float]] = field(default_factory=dict)  # gap opened, exits, last
    leftovers_cancelled: int = 0
    emergency_exits: int = 0

    def __post_init__(self) -> None:
        self.gaps = GapTracker(self.config.gap_ttl_sec)


@dataclass
class TickResult:
    mismatches: list[MismatchEvent] = field(default_factory=list)
    repairs: list[RepairAction] = field(default_factory=list)
    intents: list[OrderIntent | ReplaceIntent | CancelIntent] = field(default_factory=list)
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


def _stop_intent(symbol: str, qty: float, stop_price: float, now: float) -> OrderIntent:
    # a fresh id per repair: an old closed order with the same id would fool a lookup
    return stop_loss(
        symbol=symbol,
        position_side=position_side(qty),
        stop_price=stop_price,
        source="reconciler",
        id_scope="reconcile",
        key=f"{symbol}:{int(now * 1000)}",
        ts_ms=int(now * 1000),
    )


def _exit_intent(symbol: str, qty: float, now: float, attempt: int) -> OrderIntent:
    return market_exit(
        symbol=symbol,
        position_qty=qty,
        source="reconciler.emergency",
        id_scope="reconcile.emergency",
        key=f"{symbol}:{int(now * 1000)}:{attempt}",
        ts_ms=int(now * 1000),
    )


def _cancel_leftover(o: VenueOrderView, now: float) -> CancelIntent:
    intent_id = make_intent_id("reconcile.leftover", f"{o.client_order_id}:{int(now * 1000)}", Bucket.EXIT)
    return CancelIntent(
        ts_ms=int(now * 1000),
        correlation_id=make_correlation_id(intent_id),
        client_order_id=o.client_order_id,
        symbol=o.symbol,
        is_trigger=o.is_trigger,
        reason="leftover protection: its position is flat",
        source="reconciler",
    )


def replacement_target(cov: Coverage) -> StopView | None:
    """Which resting stop a repair replaces (None: place a new one beside whatever rests).

    A misplaced close-position stop first, whoever placed it: the venue keeps one per direction (-4130),
    so a new one could never rest beside it. Then a misplaced stop of ours, then our largest counted
    (undersized) one. Someone else's reduce-only stop with a size is left alone.
    """
    ours = [s for s in cov.misplaced if bucket_of_client_order_id(s.client_order_id) is not None]
    close = [s for s in cov.misplaced if s.close_position]
    if close or ours:
        return (close or ours)[0]
    counted = [s for s in cov.stops if bucket_of_client_order_id(s.client_order_id) is not None]
    return max(counted, key=lambda s: s.qty or 0.0) if counted else None


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
        flat = abs(snap.positions.get(known.symbol, PositionView(0.0)).qty) <= cfg.qty_tolerance
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
        elif cid in st.leftover_cancels or (
            flat and seen.state == "expired" and known.bucket in (Bucket.SL, Bucket.TP)
        ):
            # we cancelled it as a leftover, or the venue expired a close-position order whose position went
            # flat: both are what should happen to protection without a position
            st.leftover_cancels.pop(cid, None)
            out.repairs.append(
                RepairAction(
                    symbol=known.symbol,
                    action="forget_order",
                    client_order_id=cid,
                    reason=f"protection without a position, venue: {seen.state}",
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
    # a flat symbol may hold leftovers, or a stop price that belonged to its last position
    symbols |= {o.symbol for o in snap.orders if o.is_protective} | set(belief.last_stop_price)
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
        flat = abs(venue_qty) <= cfg.qty_tolerance
        # where this position's stop belongs: a stop anywhere else protects some other position
        intended = None if flat else stop_price_for(symbol, venue_qty, pos, belief, cfg)
        cov = evaluate_coverage(
            venue_qty,
            stops,
            qty_tolerance=cfg.qty_tolerance,
            intended_stop=intended,
            asked_stop=belief.last_stop_price.get(symbol),
            price_tolerance=cfg.stop_price_tolerance,
        )
        gap = st.gaps.observe(symbol, not cov.protected, now, reason=cov.status.value)
        if not gap.open:
            st.emergency.pop(symbol, None)
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
            kind = _MISMATCH_OF.get(cov.status, "undersized_stop")
            detail = f"covered {cov.covered_qty:g} of {abs(venue_qty):g}"
            if cov.status is CoverageStatus.MISPLACED:
                triggers = ", ".join(f"{s.trigger_price:g}" for s in cov.misplaced if s.trigger_price)
                detail = f"stop at {triggers}; this position's stop belongs at {intended:g}"
            mismatch(symbol, kind, detail, exchange_qty=venue_qty)
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
                assert intended is not None  # not flat: a gap is open
                new = _stop_intent(symbol, venue_qty, intended, now)
                old = replacement_target(cov)
                if old is not None:
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
                    action = "move_stop" if old in cov.misplaced else "refresh_stop"
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
            if breached:
                _emergency_exit(belief, st, out, symbol, venue_qty, gap.age_sec, now)

        if flat and not belief.busy(symbol, now):
            # protection belongs to a position: with none, what rests would protect the next one at this
            # one's prices (and a close-position stop would block the next one's own, -4130)
            belief.last_stop_price.pop(symbol, None)
            _cancel_leftovers(st, out, symbol, snap.orders, now)

        target = _target_state(venue_qty, cov.protected, belief, symbol, cfg)
        if desync:
            _move(st, out, symbol, PositionBelief.DESYNC, "venue and belief disagree", venue_qty)
        _move(st, out, symbol, target, cov.status.value, venue_qty)

    listed = {o.client_order_id for o in snap.orders}
    for cid, asked_at in list(st.leftover_cancels.items()):
        if cid not in listed and now - asked_at > 10 * cfg.repair_cooldown_sec:
            del st.leftover_cancels[cid]  # gone long ago (someone else's: never in our belief)
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


_MISMATCH_OF = {CoverageStatus.MISSING: "missing_stop", CoverageStatus.MISPLACED: "misplaced_stop"}


def _trailing(belief: Belief, client_order_id: str) -> bool:
    intent = belief.intents.get(client_order_id)
    return intent is not None and intent.order_type == "trailing_stop_market"


def _stop_in_flight(belief: Belief, symbol: str) -> bool:
    return any(
        o.symbol == symbol
        and o.bucket is Bucket.SL
        and o.state in IN_FLIGHT_STATES
        and not _trailing(belief, o.client_order_id)
        for o in belief.orders.values()
    )


def _exit_in_flight(belief: Belief, symbol: str) -> bool:
    return any(
        o.symbol == symbol and o.bucket is Bucket.EXIT and o.state in IN_FLIGHT_STATES
        for o in belief.orders.values()
    )


def _emergency_exit(
    belief: Belief, st: ReconcileState, out: TickResult, symbol: str, qty: float, age: float, now: float
) -> None:
    """Close a position at market once its gap has outlived the TTL and the repairs keep failing.

    "Failing" is the journal's word, not a count of attempts: ``emergency_exit_after_refusals`` stop-losses
    for this symbol refused by the venue or given up by the router since the gap opened (a repair that
    never reached the router, bus or router down, is no evidence: an exit would not get through either),
    and none still on its way. Never while an exit is in flight or the symbol is settling; at most
    ``EMERGENCY_EXITS_PER_GAP`` per gap, a cooldown apart. The exit is reduce-only: even a second one
    racing the first can only close, never open or flip. The router never policy-blocks it (EXIT bucket).
    """
    cfg = st.config
    gap = st.gaps.gaps.get(symbol)
    refusals = belief.refusals_since(symbol, gap.opened_at) if gap is not None else 0
    if (
        not cfg.emergency_exit
        or gap is None
        or refusals < cfg.emergency_exit_after_refusals
        or _stop_in_flight(belief, symbol)
        or _exit_in_flight(belief, symbol)
        or belief.busy(symbol, now)
    ):
        return
    opened, exits, last = st.emergency.get(symbol, (gap.opened_at, 0, float("-inf")))
    if opened != gap.opened_at:
        exits, last = 0, float("-inf")
    if exits >= EMERGENCY_EXITS_PER_GAP or now - last < cfg.repair_cooldown_sec:
        return
    exit_ = _exit_intent(symbol, qty, now, exits)
    st.emergency[symbol] = (gap.opened_at, exits + 1, now)
    st.emergency_exits += 1
    belief.last_activity[symbol] = now
    out.intents.append(exit_)
    out.repairs.append(
        RepairAction(
            symbol=symbol,
            action="emergency_exit",
            reason=f"unprotected {age:.1f}s > {cfg.gap_ttl_sec:g}s, {refusals} stop placements refused",
            correlation_id=exit_.correlation_id,
            client_order_id=exit_.client_order_id,
        )
    )


def _cancel_leftovers(
    st: ReconcileState, out: TickResult, symbol: str, orders: list[VenueOrderView], now: float
) -> None:
    """Cancel (through the router) every protective order resting on a flat symbol: close-position
    stops/TPs the venue did not expire, reduce-only orders with a size (the venue never expires those).
    Each one is asked again only after the repair cooldown."""
    for o in orders:
        if o.symbol != symbol or not o.is_protective:
            continue
        asked = st.leftover_cancels.get(o.client_order_id)
        if asked is not None and now - asked < st.config.repair_cooldown_sec:
            continue
        st.leftover_cancels[o.client_order_id] = now
        st.leftovers_cancelled += 1
        cancel = _cancel_leftover(o, now)
        out.intents.append(cancel)
        kind = "close-position" if o.close_position else f"reduce-only {o.qty:g}"
        out.repairs.append(
            RepairAction(
                symbol=symbol,
                action="cancel_leftover",
                reason=f"{kind} {o.side} {o.order_type} rests without a position",
                correlation_id=cancel.correlation_id,
                client_order_id=o.client_order_id,
            )
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
