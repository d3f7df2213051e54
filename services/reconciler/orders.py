"""The tick's order phases: orders we believe open that the venue no longer lists, and venue orders we do
not know. Pure: they update the belief and record repairs and mismatches in the tick's work."""

from __future__ import annotations

from libs.common.ids import Bucket, bucket_of_client_order_id
from libs.common.messages import RepairAction
from libs.common.state_machine import OrderState
from services.reconciler.belief import Belief, KnownOrder
from services.reconciler.protection import QTY_TOLERANCE
from services.reconciler.snapshot import Snapshot, VenueOrderView
from services.reconciler.state import ReconcileState, TickWork

NOT_FOUND = "not found"  # how a missing order reads in mismatches and repairs
STILL_THERE = frozenset({"open", "unknown"})  # a lookup's answers that settle nothing


def vanished_orders(belief: Belief, snapshot: Snapshot) -> list[KnownOrder]:
    """Orders we believe open that the venue no longer lists: the shell looks each one up."""
    listed = {o.client_order_id for o in snapshot.orders}
    return [o for o in belief.open_orders() if o.client_order_id not in listed]


def settle_vanished(
    belief: Belief,
    snap: Snapshot,
    lookups: dict[str, VenueOrderView | None],
    st: ReconcileState,
    work: TickWork,
) -> None:
    """Forget each vanished order the venue has answered for (``lookups``: client id -> its answer, None
    when it says it has no such order; an order it could not be asked about is left out: still believed).

    "Not found" is not "absent": a venue answers -2013 for an order it took a moment ago (query lag), and
    an order forgotten then ends later unreported (the journal would keep it open forever). Such an order
    stays believed, and looked up every tick, until the venue has not known it for
    RECONCILE_NOT_FOUND_GRACE_SEC.
    """
    vanished = {o.client_order_id for o in vanished_orders(belief, snap)}
    for cid in [c for c in st.not_found_since if c not in vanished]:
        del st.not_found_since[cid]  # listed again, or no longer believed open
    for cid, seen in lookups.items():
        known = belief.orders.get(cid)
        if known is None:
            continue
        if seen is None:
            since = st.not_found_since.setdefault(cid, work.now)
            if work.now - since < st.config.not_found_grace_sec:
                continue
        elif seen.state in STILL_THERE:
            # the lookup, newer than the listing, finds it open (placed after the read, or a listing the
            # venue had not caught up with) or cannot say how it stands: it is still believed. Forgetting
            # a live stop would count a missing order and repair a position that has its stop (bench.throughput)
            st.not_found_since.pop(cid, None)
            continue
        st.not_found_since.pop(cid, None)
        gone = _position_gone(known, snap.position(known.symbol).qty)
        work.out.repairs.append(_forget(cid, known, seen.state if seen else NOT_FOUND, gone, st, work))
        belief.forget_order(cid)


def _position_gone(known: KnownOrder, qty: float) -> bool:
    """The position an order closes is no longer there: flat, or flipped to the side the order would
    add to (a sell stop protects a long; the venue expires a close-position stop whose position flipped)."""
    if abs(qty) <= QTY_TOLERANCE:
        return True
    return (known.side == "sell" and qty < 0) or (known.side == "buy" and qty > 0)


def _forget(
    cid: str, known: KnownOrder, state: str, gone: bool, st: ReconcileState, work: TickWork
) -> RepairAction:
    if state == "filled":
        work.explained.add(
            known.symbol
        )  # e.g. a stop triggered on the venue: the position change is expected
        return RepairAction(
            symbol=known.symbol, action="forget_order", client_order_id=cid, reason="filled on the venue"
        )
    if cid in st.leftover_cancels or (gone and state == "expired" and known.bucket in (Bucket.SL, Bucket.TP)):
        # we cancelled it as a leftover, or the venue expired a close-position order whose position went
        # flat or flipped: both are what should happen to protection without its position
        st.leftover_cancels.pop(cid, None)
        return RepairAction(
            symbol=known.symbol,
            action="forget_order",
            client_order_id=cid,
            reason=f"protection without a position, venue: {state}",
        )
    work.mismatch(
        known.symbol,
        "missing_order",
        f"believed {known.state.value}, venue says {state}",
        client_order_id=cid,
    )
    return RepairAction(
        symbol=known.symbol, action="forget_order", client_order_id=cid, reason=f"venue: {state}"
    )


def adopt_unknown(belief: Belief, snap: Snapshot, work: TickWork) -> None:
    """Venue orders we do not know, on quiet symbols: one that can open exposure is an orphan, one of
    ours (by its id) is adopted into the belief; either is a mismatch. Someone else's protection is
    neither: it is left to the coverage check."""
    for o in snap.orders:
        if belief.knows(o.client_order_id) or belief.busy(o.symbol, work.now):
            continue
        bucket = bucket_of_client_order_id(o.client_order_id)
        if not o.is_protective:
            work.orphans += 1
            work.mismatch(
                o.symbol,
                "orphan_order",
                f"{o.side} {o.qty} {o.order_type} can open exposure",
                client_order_id=o.client_order_id,
            )
        elif bucket is not None:
            work.mismatch(
                o.symbol,
                "unknown_own_order",
                "ours but not in the journal view",
                client_order_id=o.client_order_id,
            )
        if bucket is not None:
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
            work.out.repairs.append(
                RepairAction(symbol=o.symbol, action="adopt_order", client_order_id=o.client_order_id)
            )
