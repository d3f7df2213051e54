"""Restart rebuild: belief from the venue, orphans found, journal knowledge folded in. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.common.ids import Bucket, bucket_of_client_order_id
from libs.common.messages import OrderIntent, OrphanOrder
from libs.common.replay import IntentTimeline
from libs.common.state_machine import OPEN_ORDER_STATES, TERMINAL_ORDER_STATES, OrderState
from libs.venue.parsing import side_of
from services.reconciler.belief import Belief, KnownOrder
from services.reconciler.snapshot import Snapshot


@dataclass
class RebuildPlan:
    positions: dict[str, float] = field(default_factory=dict)
    adopted_orders: int = 0
    orphans: list[OrphanOrder] = field(default_factory=list)
    unknown_from_journal: int = 0
    ended_unseen: int = 0  # journaled open, gone from the venue's open orders


def rebuild(belief: Belief, snap: Snapshot, timelines: dict[str, IntentTimeline]) -> RebuildPlan:
    """Make ``belief`` match the venue and say which open orders nobody can account for.

    An orphan is an open order that could add exposure (not reduce-only, not
    close-position) and that the journal does not know as a live intent of ours:
    left over from a crash, another process, or a human.
    """
    plan = RebuildPlan()
    journal_open = _fold_journal(belief, timelines, plan)

    for symbol, pos in snap.positions.items():
        belief.adopt_position(symbol, pos.qty)
        plan.positions[symbol] = pos.qty

    for o in snap.orders:
        bucket = bucket_of_client_order_id(o.client_order_id)
        if bucket is not None or o.client_order_id in journal_open:
            belief.adopt_order(
                KnownOrder(
                    o.client_order_id,
                    o.symbol,
                    bucket or Bucket.EXIT,
                    o.side,
                    OrderState.ACKED,
                    is_trigger=o.is_trigger,
                    stop_price=o.trigger_price,
                )
            )
            plan.adopted_orders += 1
        if not (o.reduce_only or o.close_position) and o.client_order_id not in journal_open:
            plan.orphans.append(
                OrphanOrder(
                    symbol=o.symbol,
                    client_order_id=o.client_order_id,
                    side=side_of(o.side),
                    qty=o.qty,
                    order_type=o.order_type,
                )
            )
    # journaled open but no longer listed: it ended while nobody watched (a fill, a trigger, a cancel
    # behind our back during our downtime). Believed open, the first tick looks it up and reports how it
    # ended, so the journal learns it.
    listed = {o.client_order_id for o in snap.orders}
    for cid, i in journal_open.items():
        if cid not in listed:
            belief.adopt_order(_known(i, OrderState.ACKED))
            plan.ended_unseen += 1
    return plan


def _fold_journal(
    belief: Belief, timelines: dict[str, IntentTimeline], plan: RebuildPlan
) -> dict[str, OrderIntent]:
    """What the journal knows: intents still under way, UNKNOWN orders (the router's resolver owns them),
    the newest stop price asked for per symbol. Returns the intents whose orders it has open."""
    journal_open: dict[str, OrderIntent] = {}
    asked_at: dict[str, int] = {}  # symbol -> ts of the newest stop asked for (the one a stop must match)
    for t in timelines.values():
        if t.intent is None:
            continue
        if t.state is None or t.state not in TERMINAL_ORDER_STATES:
            # still under way: its next transitions reach us live (the consumer starts at the reset just
            # before this read), and without its intent a stop would be looked up as a plain order and
            # never found (soak seed 13)
            belief.remember_intent(t.intent)
        if t.state in OPEN_ORDER_STATES:
            journal_open[t.intent.client_order_id] = t.intent
        elif t.state is OrderState.UNKNOWN:
            belief.adopt_order(_known(t.intent, OrderState.UNKNOWN))
            plan.unknown_from_journal += 1
        i = t.intent
        if (
            t.state is not None
            and i.bucket is Bucket.SL
            and i.stop_price
            and i.ts_ms >= asked_at.get(i.symbol, 0)
        ):
            asked_at[i.symbol] = i.ts_ms
            belief.last_stop_price[i.symbol] = i.stop_price
    return journal_open


def _known(i: OrderIntent, state: OrderState) -> KnownOrder:
    return KnownOrder(
        i.client_order_id, i.symbol, i.bucket, i.side, state, is_trigger=i.is_trigger, stop_price=i.stop_price
    )
