"""ccxt answers -> our types: one parse of an order and of a position for every service. Pure.

Parsing raises on an answer it cannot read (that is not a venue refusal: it propagates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
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


# a conditional order's stream states while its trigger is working: the order it placed reports the fill
_ALGO_WORKING = frozenset({"TRIGGERING", "TRIGGERED"})


@dataclass(frozen=True, slots=True)
class StreamOrderUpdate:
    """One order update pushed on the user data stream (ccxt's ``watch_orders``), in our types.

    ``complete``: it says how the order stands (state, filled quantity and average price) as fully as a
    REST lookup would; when False only a lookup can tell (e.g. an algo order finished without its fill).
    """

    order: VenueOrder
    event_ms: int | None  # the venue's transaction time: orders the updates of one order
    complete: bool


def stream_update_from_ccxt(order: dict[str, Any]) -> StreamOrderUpdate:
    """ccxt's parse of an ``ORDER_TRADE_UPDATE`` or ``ALGO_UPDATE``; raises ValueError on one we cannot
    read (no client id, symbol or status), which the caller counts as malformed.

    An algo update is the conditional order itself (ccxt's id is the algo id): TRIGGERING / TRIGGERED
    keep it working (the order it placed follows as its own update, with the same client id, and carries
    the fill); FINISHED carries the fill in ``aq`` / ``ap`` (ccxt leaves them in ``info``).
    """
    info = order.get("info") or {}
    raw = str(info.get("X") or "")
    if not order.get("clientOrderId") or not order.get("symbol") or not raw:
        raise ValueError(f"stream order update without client id, symbol or status: {info!r}"[:300])
    is_algo = "aid" in info or "caid" in info
    parsed = venue_order_from_ccxt(order, is_trigger=is_algo)
    state, filled, average = parsed.state, parsed.filled, parsed.average
    if is_algo and raw in _ALGO_WORKING:
        state = OrderState.ACKED
    elif is_algo and raw == "FINISHED":
        filled = float(info.get("aq") or 0)
        average = float(info["ap"]) if info.get("ap") and float(info["ap"]) else None
    actual = info.get("ai") if is_algo else None
    update = replace(
        parsed,
        state=state,
        venue_status=raw,
        filled=filled,
        average=average,
        actual_order_id=str(actual) if actual else None,
    )
    event_ms = info.get("T") or order.get("lastUpdateTimestamp") or order.get("timestamp")
    complete = state is not OrderState.UNKNOWN and not (state is OrderState.FILLED and filled <= 0)
    return StreamOrderUpdate(update, int(event_ms) if event_ms else None, complete)


@dataclass(frozen=True, slots=True)
class StreamPositionUpdate:
    """One symbol's position as an ``ACCOUNT_UPDATE`` on the user data stream states it."""

    symbol: str  # unified (BTC/USDT:USDT)
    qty: float  # signed, as VenuePosition
    event_ms: int | None
    reason: str  # the venue's ``m``: ORDER, FUNDING_FEE, ... (a change behind our back reads ORDER too)


def position_updates_from_account_event(
    msg: dict[str, Any], symbol_of: Callable[[str], str | None]
) -> list[StreamPositionUpdate]:
    """The positions of a raw ``ACCOUNT_UPDATE`` (ccxt keeps them only for ``watch_positions`` callers);
    ``symbol_of`` maps the venue's id to our symbol (None: not a market we know, skipped). One-way mode
    only: a hedge-mode leg (``ps`` LONG / SHORT) is not ours to read. Raises ValueError on one we cannot
    read, which the caller counts as malformed."""
    account = msg.get("a")
    if not isinstance(account, dict) or not isinstance(account.get("P", []), list):
        raise ValueError(f"ACCOUNT_UPDATE without an account part: {msg!r}"[:300])
    event_ms = msg.get("T") or msg.get("E")
    out = []
    for p in account.get("P", []):
        if not isinstance(p, dict) or "s" not in p or "pa" not in p:
            raise ValueError(f"ACCOUNT_UPDATE position without symbol or amount: {p!r}"[:300])
        if p.get("ps", "BOTH") != "BOTH":
            continue
        symbol = symbol_of(str(p["s"]))
        if symbol is None:
            continue
        out.append(
            StreamPositionUpdate(
                symbol, float(p["pa"]), int(event_ms) if event_ms else None, str(account.get("m", ""))
            )
        )
    return out
