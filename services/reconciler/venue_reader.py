"""Read the venue through ccxt into the reconciler's typed snapshot; look up vanished orders.

Positions (every symbol) first, then open regular and conditional (algo) orders in
the shape the read plan chose: per watched symbol, or every symbol at once; the
balance for equity every few ticks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ccxt

from services.reconciler.read_budget import ReadPlan
from services.reconciler.tick import PositionView, Snapshot, VenueOrderView


def _truthy(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


def order_view(o: dict[str, Any], is_trigger: bool) -> VenueOrderView:
    info = o.get("info") or {}
    if is_trigger:
        if "TRAILING" in str(info.get("orderType") or info.get("type") or "").upper():
            order_type = "trailing_stop_market"  # ccxt calls it "market": only the raw type tells
        else:
            order_type = "take_profit_market" if o.get("takeProfitPrice") else "stop_market"
    else:
        order_type = str(o.get("type") or "")
    status = {"open": "open", "closed": "filled", "canceled": "canceled", "expired": "expired"}.get(
        o.get("status") or "", o.get("status") or "unknown"
    )
    return VenueOrderView(
        symbol=o["symbol"],
        client_order_id=o.get("clientOrderId") or str(o.get("id")),
        side=o.get("side") or "",
        qty=float(o["amount"]) if o.get("amount") else None,
        reduce_only=bool(o.get("reduceOnly")) or _truthy(info.get("reduceOnly")),
        close_position=_truthy(info.get("closePosition")),
        is_trigger=is_trigger,
        order_type=order_type,
        trigger_price=float(o["triggerPrice"]) if o.get("triggerPrice") else None,
        state=status,
    )


def position_view(p: dict[str, Any]) -> tuple[str, PositionView]:
    contracts = float(p.get("contracts") or 0)
    qty = -contracts if p.get("side") == "short" else contracts
    return p["symbol"], PositionView(qty, float(p.get("entryPrice") or 0), float(p.get("markPrice") or 0))


async def read_positions(ex: ccxt.Exchange) -> dict[str, PositionView]:
    return dict(position_view(p) for p in await ex.fetch_positions() if float(p.get("contracts") or 0))


async def read_orders(ex: ccxt.Exchange, plan: ReadPlan) -> tuple[list[VenueOrderView], float | None]:
    """Open orders as ``plan`` shapes the queries, plus equity when the plan asks for it."""
    symbols: tuple[str | None, ...] = (None,) if plan.symbols is None else plan.symbols
    calls = [ex.fetch_open_orders(s, None, None, {"trigger": t}) for s in symbols for t in (False, True)]
    if plan.with_equity:
        calls.append(ex.fetch_balance())
    results = await asyncio.gather(*calls)
    orders = [order_view(o, i % 2 == 1) for i, batch in enumerate(results[: 2 * len(symbols)]) for o in batch]
    equity = None
    if plan.with_equity:
        total = (results[-1].get("total") or {}).get("USDT")
        equity = float(total) if total is not None else None
    return orders, equity


async def read_snapshot(ex: ccxt.Exchange, *, with_equity: bool) -> Snapshot:
    """Everything, every symbol (the restart rebuild and sweeps)."""
    positions = await read_positions(ex)
    orders, equity = await read_orders(ex, ReadPlan(None, with_equity))
    return Snapshot(positions, orders, equity)


async def lookup(
    ex: ccxt.Exchange, symbol: str, client_order_id: str, trigger: bool
) -> VenueOrderView | None:
    """The venue's current view of one order; None when it cannot say (not found or unreachable)."""
    params: dict[str, Any] = {"clientOrderId": client_order_id}
    if trigger:
        params["trigger"] = True
    try:
        return order_view(await ex.fetch_order(None, symbol, params), trigger)
    except ccxt.OrderNotFound:
        return VenueOrderView(symbol, client_order_id, "", None, False, False, trigger, "", state="not found")
    except ccxt.BaseError:
        return None
