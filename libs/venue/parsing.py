"""ccxt answers -> our types: one parse of an order and of a position for every service. Pure.
(The user data stream's raw events: libs/venue/stream_events.py.)

Parsing raises on an answer it cannot read (that is not a venue refusal: it propagates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.common.messages import Side
from libs.common.state_machine import OrderState
from libs.venue.order_states import order_state


def side_of(text: str) -> Side | None:
    """ccxt's side word as ours; None when the venue's answer did not carry one."""
    return "buy" if text == "buy" else "sell" if text == "sell" else None


@dataclass(frozen=True, slots=True)
class VenueOrder:
    """One order as the venue reports it."""

    client_order_id: str
    exchange_order_id: str | None
    state: OrderState
    venue_status: str | None  # the venue's own word (Binance status / algoStatus)
    filled: float
    amount: float | None
    average: float | None
    actual_order_id: str | None = None  # a triggered conditional order: the order it created
    # what the order is (the reconciler's protection checks)
    symbol: str = ""
    side: str = ""
    order_type: str = ""  # market / limit / stop_market / take_profit_market / trailing_stop_market
    is_trigger: bool = False  # a conditional (algo) order
    reduce_only: bool = False
    close_position: bool = False
    trigger_price: float | None = None

    @property
    def is_open(self) -> bool:
        return self.state in (OrderState.ACKED, OrderState.PARTIALLY_FILLED)


@dataclass(frozen=True, slots=True)
class VenuePosition:
    symbol: str
    qty: float  # signed contracts: long > 0, short < 0, flat 0
    entry_price: float = 0.0
    mark_price: float = 0.0


def venue_symbol(unified: str) -> str:
    """BTC/USDT:USDT -> BTCUSDT, the venue's market id for a USD-M perpetual."""
    return unified.split(":", 1)[0].replace("/", "")


def _truthy(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


def order_state_from_ccxt(order: dict[str, Any]) -> OrderState:
    """Unified ccxt status (+ filled) -> our lifecycle state."""
    return order_state(order.get("status"), float(order.get("filled") or 0))


def _order_type(o: dict[str, Any], info: dict[str, Any], is_trigger: bool) -> str:
    if not is_trigger:
        return str(o.get("type") or "")
    raw = str(info.get("orderType") or info.get("type") or "").upper()
    if "TRAILING" in raw:
        return "trailing_stop_market"  # ccxt calls it "market": only the raw type tells
    if raw.startswith("TAKE_PROFIT") or o.get("takeProfitPrice"):
        return "take_profit_market"
    return "stop_market"


def venue_order_from_ccxt(
    order: dict[str, Any], client_order_id: str | None = None, *, is_trigger: bool = False
) -> VenueOrder:
    """``client_order_id``: the id it was asked by, for an answer that does not repeat it."""
    info = order.get("info") or {}
    raw_status = info.get("status") or info.get("algoStatus") or order.get("status")
    return VenueOrder(
        client_order_id=order.get("clientOrderId") or client_order_id or str(order.get("id")),
        exchange_order_id=str(order["id"]) if order.get("id") is not None else None,
        state=order_state_from_ccxt(order),
        venue_status=raw_status,
        filled=float(order.get("filled") or 0),
        amount=float(order["amount"]) if order.get("amount") is not None else None,
        average=float(order["average"]) if order.get("average") else None,
        actual_order_id=str(info["actualOrderId"]) if info.get("actualOrderId") else None,
        symbol=order.get("symbol") or "",
        side=order.get("side") or "",
        order_type=_order_type(order, info, is_trigger),
        is_trigger=is_trigger,
        reduce_only=bool(order.get("reduceOnly")) or _truthy(info.get("reduceOnly")),
        close_position=_truthy(info.get("closePosition")),
        trigger_price=float(order["triggerPrice"]) if order.get("triggerPrice") else None,
    )


def position_from_ccxt(p: dict[str, Any]) -> VenuePosition:
    """ccxt reports size unsigned plus a side; we carry the sign."""
    contracts = float(p.get("contracts") or 0)
    qty = -contracts if p.get("side") == "short" else contracts
    return VenuePosition(p["symbol"], qty, float(p.get("entryPrice") or 0), float(p.get("markPrice") or 0))
