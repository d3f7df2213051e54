"""The router's only contact with ccxt: typed calls by client order id.

Everything venue-specific about *how* to call ccxt (params, trigger flags,
status mapping) lives here; the submit/cancel/replace logic above it deals in
``VenueOrder`` and exceptions only. ccxt's own retries are off
(``maxRetriesOnFailure=0``): the router owns the retry budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ccxt

from libs.common.marks import read_mark
from libs.common.messages import OrderIntent
from libs.common.state_machine import OrderState
from services.router.ledger import absent_after


@dataclass(frozen=True, slots=True)
class VenueOrder:
    client_order_id: str
    exchange_order_id: str | None
    state: OrderState
    venue_status: str | None
    filled: float
    amount: float | None
    average: float | None
    actual_order_id: str | None = None  # a triggered conditional order: the order it created

    @property
    def is_open(self) -> bool:
        return self.state in (OrderState.ACKED, OrderState.PARTIALLY_FILLED)


def order_state_from_ccxt(order: dict[str, Any]) -> OrderState:
    """Unified ccxt status (+ filled) -> our lifecycle state."""
    status = order.get("status")
    filled = float(order.get("filled") or 0)
    if status == "open":
        return OrderState.PARTIALLY_FILLED if filled > 0 else OrderState.ACKED
    if status == "closed":
        return OrderState.FILLED
    if status in ("canceled", "canceling"):
        return OrderState.CANCELED
    if status == "expired":
        return OrderState.EXPIRED
    if status == "rejected":
        return OrderState.REJECTED
    # A venue answered with a status we do not know: do not guess that it is gone.
    return OrderState.UNKNOWN


def venue_order_from_ccxt(order: dict[str, Any], client_order_id: str) -> VenueOrder:
    info = order.get("info") or {}
    raw_status = info.get("status") or info.get("algoStatus") or order.get("status")
    return VenueOrder(
        client_order_id=order.get("clientOrderId") or client_order_id,
        exchange_order_id=str(order["id"]) if order.get("id") is not None else None,
        state=order_state_from_ccxt(order),
        venue_status=raw_status,
        filled=float(order.get("filled") or 0),
        amount=float(order["amount"]) if order.get("amount") is not None else None,
        average=float(order["average"]) if order.get("average") else None,
        actual_order_id=str(info["actualOrderId"]) if info.get("actualOrderId") else None,
    )


_CCXT_TYPE = {
    "market": "market",
    "limit": "limit",
    "stop_market": "market",
    "take_profit_market": "market",
    "trailing_stop_market": "market",  # ccxt picks TRAILING_STOP_MARKET from trailingPercent
}


def create_order_args(
    intent: OrderIntent, qty: float | None
) -> tuple[str, str, float | None, float | None, dict]:
    """(type, side, amount, price, params) for ccxt.create_order; pure, unit-tested."""
    params: dict[str, Any] = {"clientOrderId": intent.client_order_id}
    if intent.reduce_only and not intent.close_position:
        params["reduceOnly"] = True
    if intent.close_position:
        params["closePosition"] = True
    if intent.order_type == "stop_market":
        params["stopLossPrice"] = intent.stop_price
    elif intent.order_type == "take_profit_market":
        params["takeProfitPrice"] = intent.stop_price
    elif intent.order_type == "trailing_stop_market":
        # ccxt binanceusdm: callbackRate (percent) and, on the algo endpoint, activatePrice
        params["trailingPercent"] = intent.callback_rate
        if intent.activation_price is not None:
            params["trailingTriggerPrice"] = intent.activation_price
    price = intent.price if intent.order_type == "limit" else None
    return _CCXT_TYPE[intent.order_type], intent.side, qty, price, params


class Venue:
    """Async calls against one ccxt exchange. Raises ccxt exceptions unchanged."""

    def __init__(self, exchange: ccxt.Exchange, *, ambiguity_margin_ms: int = 1000) -> None:
        self.ex = exchange
        self._markets_loaded = False
        self.ambiguity_margin_ms = ambiguity_margin_ms

    def absent_after(self, sent_at: float) -> float:
        """Unix time from which a request sent at ``sent_at`` is void at the venue (its recvWindow)."""
        recv_window_ms = int(self.ex.options.get("recvWindow") or 5000)
        return absent_after(sent_at, recv_window_ms, self.ambiguity_margin_ms)

    async def ensure_markets(self) -> None:
        if not self._markets_loaded:
            await self.ex.load_markets()
            # sign with the venue's clock: then timestamp + recvWindow, the moment an ambiguous request
            # becomes void, is known on our clock too (up to this measurement's error: the margin)
            await self.ex.load_time_difference()
            self._markets_loaded = True

    async def create(self, intent: OrderIntent, qty: float | None) -> VenueOrder:
        await self.ensure_markets()
        typ, side, amount, price, params = create_order_args(intent, qty)
        if amount is None:
            # closePosition stops carry no quantity; ccxt still wants a number it will drop
            amount = 0.0
        order = await self.ex.create_order(intent.symbol, typ, side, amount, price, params)
        return venue_order_from_ccxt(order, intent.client_order_id)

    async def fetch(self, symbol: str, client_order_id: str, trigger: bool) -> VenueOrder | None:
        """Look an order up by client id. None = the venue says it does not exist."""
        await self.ensure_markets()
        params: dict[str, Any] = {"clientOrderId": client_order_id}
        if trigger:
            params["trigger"] = True
        try:
            order = await self.ex.fetch_order(None, symbol, params)
        except ccxt.OrderNotFound:
            return None
        return venue_order_from_ccxt(order, client_order_id)

    async def resting_close_position(self, intent: OrderIntent) -> tuple[str, float] | None:
        """(client id, trigger price) of the close-position order of ``intent``'s kind resting on its
        side, if any (the venue allows one per kind and direction)."""
        await self.ensure_markets()
        kind = "TAKE_PROFIT" if intent.order_type == "take_profit_market" else "STOP"
        for o in await self.ex.fetch_open_orders(intent.symbol, None, None, {"trigger": True}):
            info = o.get("info") or {}
            order_type = str(info.get("orderType") or info.get("type") or "")
            if (
                str(info.get("closePosition")).lower() == "true"
                and o.get("side") == intent.side
                and order_type.startswith(kind)
            ):
                return str(o.get("clientOrderId")), float(o.get("triggerPrice") or 0)
        return None

    async def fetch_by_id(self, symbol: str, order_id: str, client_order_id: str) -> VenueOrder:
        """A regular order by the venue's id (the order a triggered stop created)."""
        await self.ensure_markets()
        return venue_order_from_ccxt(await self.ex.fetch_order(order_id, symbol), client_order_id)

    async def cancel(self, symbol: str, client_order_id: str, trigger: bool) -> VenueOrder:
        await self.ensure_markets()
        params: dict[str, Any] = {"clientOrderId": client_order_id}
        if trigger:
            params["trigger"] = True
        order = await self.ex.cancel_order(None, symbol, params)
        return venue_order_from_ccxt(order, client_order_id)

    async def position_qty(self, symbol: str) -> float:
        """Signed position size in contracts (long > 0, short < 0, flat 0)."""
        await self.ensure_markets()
        positions = await self.ex.fetch_positions([symbol])
        total = 0.0
        for p in positions:
            if p.get("symbol") != symbol:
                continue
            contracts = float(p.get("contracts") or 0)
            total += -contracts if p.get("side") == "short" else contracts
        return total

    async def mark_price(self, symbol: str) -> float:
        """The venue's mark price (premiumIndex with the symbol: weight 1); the router's one mark read.

        Uncached: the router reads it through a ``MarkCache`` (libs/common/marks.py). Raises on failure.
        """
        await self.ensure_markets()
        return await read_mark(self.ex, symbol)

    async def set_leverage(self, symbol: str, leverage: int) -> None:
        await self.ensure_markets()
        await self.ex.set_leverage(leverage, symbol)

    async def resync_clock(self) -> None:
        """After -1021: measure the venue clock offset so signed timestamps land in recvWindow."""
        await self.ex.load_time_difference()

    async def close(self) -> None:
        await self.ex.close()
