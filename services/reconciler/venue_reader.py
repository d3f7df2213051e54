"""The venue's answers (``libs/venue``) in the reconciler's snapshot types; look up vanished orders.

Positions (every symbol) first, then open regular and conditional (algo) orders in
the shape the read plan chose: per watched symbol, or every symbol at once; the
balance for equity every few ticks. No ccxt here: the venue package calls and parses.
"""

from __future__ import annotations

import asyncio

from libs.common.state_machine import OrderState
from libs.venue.binance_usdm import BinanceUSDM
from libs.venue.error_policy import VenueError
from libs.venue.parsing import VenueOrder
from services.reconciler.belief import KnownOrder
from services.reconciler.read_budget import ReadPlan
from services.reconciler.tick import PositionView, Snapshot, VenueOrderView

# our lifecycle state -> the word the reconciler's tick reads ("filled", "expired" ...)
_VIEW_STATE = {
    OrderState.ACKED: "open",
    OrderState.PARTIALLY_FILLED: "open",
    OrderState.FILLED: "filled",
    OrderState.CANCELED: "canceled",
    OrderState.EXPIRED: "expired",
    OrderState.REJECTED: "rejected",
}


def order_view(o: VenueOrder) -> VenueOrderView:
    return VenueOrderView(
        symbol=o.symbol,
        client_order_id=o.client_order_id,
        side=o.side,
        qty=o.amount or None,
        reduce_only=o.reduce_only,
        close_position=o.close_position,
        is_trigger=o.is_trigger,
        order_type=o.order_type,
        trigger_price=o.trigger_price,
        state=_VIEW_STATE.get(o.state, "unknown"),
    )


async def read_positions(venue: BinanceUSDM) -> dict[str, PositionView]:
    return {
        p.symbol: PositionView(p.qty, p.entry_price, p.mark_price) for p in await venue.positions() if p.qty
    }


async def read_orders(venue: BinanceUSDM, plan: ReadPlan) -> tuple[list[VenueOrderView], float | None]:
    """Open orders as ``plan`` shapes the queries, plus equity when the plan asks for it."""
    symbols: tuple[str | None, ...] = (None,) if plan.symbols is None else plan.symbols
    batches = asyncio.gather(*(venue.open_orders(s, t) for s in symbols for t in (False, True)))
    if plan.with_equity:
        results, equity = await asyncio.gather(batches, venue.equity_usdt())
    else:
        results, equity = await batches, None
    return [order_view(o) for batch in results for o in batch], equity


async def read_snapshot(venue: BinanceUSDM, *, with_equity: bool) -> Snapshot:
    """Everything, every symbol (the restart rebuild and sweeps)."""
    positions = await read_positions(venue)
    orders, equity = await read_orders(venue, ReadPlan(None, with_equity))
    return Snapshot(positions, orders, equity)


async def lookups(venue: BinanceUSDM, orders: list[KnownOrder]) -> dict[str, VenueOrderView | None]:
    """Client id -> the venue's current view of each order, None when the venue says it does not have it
    (as ``fetch_order`` says it); an order the venue could not be asked about is left out."""

    async def one(o: KnownOrder) -> tuple[str, VenueOrderView | None] | None:
        try:
            found = await venue.fetch_order(o.symbol, o.client_order_id, o.is_trigger)
        except VenueError:
            return None
        return o.client_order_id, order_view(found) if found is not None else None

    return dict(a for a in await asyncio.gather(*(one(o) for o in orders)) if a is not None)
