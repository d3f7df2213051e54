"""The tick's repairs: a stop where a position's stop belongs, an emergency exit when those keep being
refused, cancels of protection left on a flat symbol. Pure: intents and repair actions go into the tick's
work; the shell sends them through the router, which never policy-blocks them."""

from __future__ import annotations

from libs.common.config import ReconcilerSettings
from libs.common.ids import Bucket, bucket_of_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import CancelIntent, OrderIntent, RepairAction, RepairKind, ReplaceIntent
from libs.common.protection import (
    default_stop_price,
    market_exit,
    on_protective_side,
    position_side,
    stop_loss,
)
from services.reconciler.belief import IN_FLIGHT_STATES, Belief
from services.reconciler.protection import Coverage, CoverageStatus, StopView, should_refresh
from services.reconciler.snapshot import PositionView, VenueOrderView
from services.reconciler.state import ReconcileState, SymbolCheck, TickWork

EMERGENCY_EXITS_PER_GAP = 3  # a refused exit is tried again (after the cooldown), but not forever

_MISMATCH_OF = {CoverageStatus.MISSING: "missing_stop", CoverageStatus.MISPLACED: "misplaced_stop"}


def stop_price_for(
    symbol: str, qty: float, pos: PositionView, belief: Belief, cfg: ReconcilerSettings
) -> float:
    """The last stop price we asked for if it is still on the protective side of the market, else a
    default distance from the mark (a repair protects from now on; it does not chase the entry)."""
    side, mark = position_side(qty), pos.mark_price or pos.entry_price
    last = belief.last_stop_price.get(symbol)
    if last and mark and on_protective_side(side, last, mark):
        return last
    return default_stop_price(side, mark, cfg.default_stop_pct)


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


def coverage_mismatch(check: SymbolCheck) -> tuple[str, str]:
    """The mismatch an unprotected position is: its kind and detail."""
    cov = check.coverage
    kind = _MISMATCH_OF.get(cov.status, "undersized_stop")
    if cov.status is CoverageStatus.MISPLACED:
        triggers = ", ".join(f"{s.trigger_price:g}" for s in cov.misplaced if s.trigger_price)
        return kind, f"stop at {triggers}; this position's stop belongs at {check.intended_stop:g}"
    return kind, f"covered {cov.covered_qty:g} of {abs(check.qty):g}"


def repair_protection(belief: Belief, st: ReconcileState, check: SymbolCheck, work: TickWork) -> None:
    """An unprotected position: a mismatch, a stop repair when the anti-churn gate and the stops already on
    their way allow, and the emergency exit once its gap has outlived the TTL."""
    symbol, cfg = check.symbol, st.config
    # a fresh fill whose stage-1 stop is still on its way is not a mismatch yet: the gap clock runs,
    # and once it breaches the TTL we repair whatever the reason
    if check.coverage.protected or not (check.breached or not belief.busy(symbol, work.now)):
        return
    kind, detail = coverage_mismatch(check)
    work.mismatch(symbol, kind, detail, exchange_qty=check.qty)
    decision = should_refresh(
        check.coverage,
        now=work.now,
        last_refresh_at=st.last_repair_at.get(symbol),
        gap_age_sec=check.gap.age_sec,
        min_delta_ratio=cfg.min_delta_ratio,
        max_refresh_interval_sec=cfg.max_refresh_interval_sec,
        cooldown_sec=cfg.repair_cooldown_sec,
    )
    if decision.refresh and not stop_in_flight(belief, symbol):
        repair_stop(belief, st, check, decision.reason, work)
    else:
        st.repair_skipped += 1
    if check.breached:
        emergency_exit(belief, st, check, work)


def repair_stop(belief: Belief, st: ReconcileState, check: SymbolCheck, reason: str, work: TickWork) -> None:
    """A new stop where this position's stop belongs, replacing the stop it supersedes if any."""
    symbol, now = check.symbol, work.now
    assert check.intended_stop is not None  # not flat: a gap is open
    new = _stop_intent(symbol, check.qty, check.intended_stop, now)
    old = replacement_target(check.coverage)
    if old is not None:
        work.out.intents.append(
            ReplaceIntent(
                correlation_id=new.correlation_id,
                old_client_order_id=old.client_order_id,
                old_is_trigger=True,
                new_order=new,
                reason=reason,
                source="reconciler",
            )
        )
        action: RepairKind = "move_stop" if old in check.coverage.misplaced else "refresh_stop"
    else:
        work.out.intents.append(new)
        action = "place_stop"
    st.last_repair_at[symbol] = now
    st.repair_actions += 1
    belief.last_activity[symbol] = now
    work.out.repairs.append(
        RepairAction(
            symbol=symbol,
            action=action,
            reason=reason,
            correlation_id=new.correlation_id,
            client_order_id=new.client_order_id,
        )
    )


def emergency_exit(belief: Belief, st: ReconcileState, check: SymbolCheck, work: TickWork) -> None:
    """Close a position at market once its gap has outlived the TTL and the repairs keep failing.

    "Failing" is the journal's word, not a count of attempts: ``emergency_exit_after_refusals`` stop-losses
    for this symbol refused by the venue or given up by the router since the gap opened (a repair that
    never reached the router, bus or router down, is no evidence: an exit would not get through either),
    and none still on its way. Never while an exit is in flight or the symbol is settling; at most
    ``EMERGENCY_EXITS_PER_GAP`` per gap, a cooldown apart. The exit is reduce-only: even a second one
    racing the first can only close, never open or flip. The router never policy-blocks it (EXIT bucket).
    """
    cfg, symbol, now = st.config, check.symbol, work.now
    gap = st.gaps.gaps.get(symbol)
    refusals = belief.refusals_since(symbol, gap.opened_at) if gap is not None else 0
    if (
        not cfg.emergency_exit
        or gap is None
        or refusals < cfg.emergency_exit_after_refusals
        or stop_in_flight(belief, symbol)
        or _exit_in_flight(belief, symbol)
        or belief.busy(symbol, now)
    ):
        return
    opened, exits, last = st.emergency.get(symbol, (gap.opened_at, 0, float("-inf")))
    if opened != gap.opened_at:
        exits, last = 0, float("-inf")
    if exits >= EMERGENCY_EXITS_PER_GAP or now - last < cfg.repair_cooldown_sec:
        return
    exit_ = _exit_intent(symbol, check.qty, now, exits)
    st.emergency[symbol] = (gap.opened_at, exits + 1, now)
    st.emergency_exits += 1
    belief.last_activity[symbol] = now
    work.out.intents.append(exit_)
    work.out.repairs.append(
        RepairAction(
            symbol=symbol,
            action="emergency_exit",
            reason=f"unprotected {check.gap.age_sec:.1f}s > {cfg.protection_gap_ttl_sec:g}s, "
            f"{refusals} stop placements refused",
            correlation_id=exit_.correlation_id,
            client_order_id=exit_.client_order_id,
        )
    )


def cancel_leftovers(st: ReconcileState, symbol: str, orders: list[VenueOrderView], work: TickWork) -> None:
    """Cancel (through the router) every protective order resting on a flat symbol: close-position
    stops/TPs the venue did not expire, reduce-only orders with a size (the venue never expires those).
    Each one is asked again only after the repair cooldown."""
    now = work.now
    for o in orders:
        if o.symbol != symbol or not o.is_protective:
            continue
        asked = st.leftover_cancels.get(o.client_order_id)
        if asked is not None and now - asked < st.config.repair_cooldown_sec:
            continue
        st.leftover_cancels[o.client_order_id] = now
        st.leftovers_cancelled += 1
        cancel = _cancel_leftover(o, now)
        work.out.intents.append(cancel)
        kind = "close-position" if o.close_position else f"reduce-only {o.qty:g}"
        work.out.repairs.append(
            RepairAction(
                symbol=symbol,
                action="cancel_leftover",
                reason=f"{kind} {o.side} {o.order_type} rests without a position",
                correlation_id=cancel.correlation_id,
                client_order_id=o.client_order_id,
            )
        )


def forget_old_leftover_cancels(st: ReconcileState, orders: list[VenueOrderView], now: float) -> None:
    """A leftover we asked to cancel and the venue no longer lists is looked up and forgotten as ours; one
    that never reaches our belief (someone else's) is dropped here once it is long gone."""
    listed = {o.client_order_id for o in orders}
    for cid, asked_at in list(st.leftover_cancels.items()):
        if cid not in listed and now - asked_at > 10 * st.config.repair_cooldown_sec:
            del st.leftover_cancels[cid]


def stop_in_flight(belief: Belief, symbol: str) -> bool:
    return any(
        o.symbol == symbol
        and o.bucket is Bucket.SL
        and o.state in IN_FLIGHT_STATES
        and not _trailing(belief, o.client_order_id)
        for o in belief.orders.values()
    )


def _trailing(belief: Belief, client_order_id: str) -> bool:
    intent = belief.intents.get(client_order_id)
    return intent is not None and intent.order_type == "trailing_stop_market"


def _exit_in_flight(belief: Belief, symbol: str) -> bool:
    return any(
        o.symbol == symbol and o.bucket is Bucket.EXIT and o.state in IN_FLIGHT_STATES
        for o in belief.orders.values()
    )


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
