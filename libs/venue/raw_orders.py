"""Binance USD-M's raw REST order answers -> ``VenueOrder``, without ccxt's unified order. Pure.

The router reads every create's answer; ccxt's ``parse_order`` / ``safe_order`` build a whole unified
order (timestamps, fees, trades, cost) of which ``venue_order_from_ccxt`` keeps a few fields. This reads
those fields from the raw answer (a regular order of ``/fapi/v1/order`` or a conditional one of
``/fapi/v1/algoOrder``) with ccxt's rules, so the result equals
``venue_order_from_ccxt(parse_order(answer))`` (tests/unit/test_raw_orders.py holds them equal).

An answer outside the shapes Binance sends for a create (an error ``code``, fills listed, a field of an
unexpected type, another market's symbol, a fill without its average price) is not read here: ``None``
tells the caller to parse it with ccxt, whose rules for those corners we do not copy.
"""

from __future__ import annotations

from typing import Any

from libs.venue.order_states import order_state, unified_status
from libs.venue.parsing import VenueOrder

# ccxt binance parse_order_type_by_market: contract orders (the answer names positionSide or cumQuote);
# the stream events' plain orders read their type through it too
CONTRACT_ORDER_TYPE = {
    "limit_maker": "limit",
    "stop": "limit",
    "stop_market": "market",
    "take_profit": "limit",
    "take_profit_market": "market",
    "trailing_stop_market": "market",
}
_SPOT_TYPE = {
    "limit_maker": "limit",
    "stop_loss_limit": "limit",
    "stop_loss": "market",
    "take_profit_limit": "limit",
    "take_profit": "market",
}
_TAKE_PROFIT_TYPES = ("take_profit", "take_profit_market", "take_profit_limit")


def trigger_order_type(raw_type: str) -> str:
    """Our type of a conditional order from the venue's upper-case type word (REST answers and stream
    events alike)."""
    if "TRAILING" in raw_type:
        return "trailing_stop_market"
    if raw_type.startswith("TAKE_PROFIT"):
        return "take_profit_market"
    return "stop_market"


# the fields read as ccxt reads them (strings, or numbers ccxt turns into strings)
_TEXT_FIELDS = (
    "status",
    "strategyStatus",
    "algoStatus",
    "executedQty",
    "filledQty",
    "origQty",
    "quantity",
    "qty",
    "avgPrice",
    "avgFilledPrice",
    "cummulativeQuoteQty",
    "cumQuote",
    "strategyId",
    "orderId",
    "algoId",
    "clientOrderId",
    "newClientStrategyId",
    "clientAlgoId",
    "symbol",
    "side",
    "type",
    "orderType",
    "stopPrice",
    "triggerPrice",
)


def _first(raw: dict[str, Any], *keys: str) -> str | None:
    """ccxt's ``safe_string_n`` on checked fields: the first value neither None nor empty, as text."""
    for k in keys:
        v = raw.get(k)
        if v is not None and v != "":
            return v if isinstance(v, str) else str(v)
    return None


def _nonzero(text: str | None) -> float | None:
    """ccxt's ``omit_zero`` then ``parse_number``: None for no value and for zero."""
    if text is None:
        return None
    v = float(text)
    return v if v != 0 else None


def _truthy(v: Any) -> bool:
    return v is True or str(v).lower() == "true"


def order_from_answer(
    raw: Any, client_order_id: str, *, is_trigger: bool, market_id: str, symbol: str
) -> VenueOrder | None:
    """The create answer ``raw`` for the market ``market_id`` (ccxt's ``symbol``); None: not a shape we
    read (the caller parses it with ccxt). Raises nothing on its own account: a field that is no number
    where one is expected is a None too."""
    if not isinstance(raw, dict) or raw.get("code") is not None or raw.get("fills") or raw.get("trades"):
        return None
    for k in _TEXT_FIELDS:
        v = raw.get(k)
        if v is not None and type(v) not in (str, int, float):
            return None
    venue_symbol = _first(raw, "symbol")
    if venue_symbol is not None and venue_symbol != market_id:
        return None
    try:
        return _read(raw, client_order_id, is_trigger, symbol)
    except ValueError:  # a number that is none
        return None


def _read(raw: dict[str, Any], client_order_id: str, is_trigger: bool, symbol: str) -> VenueOrder:
    status_word = _first(raw, "status", "strategyStatus", "algoStatus")
    status = unified_status(status_word) if status_word is not None else None
    filled_text = _first(raw, "executedQty", "filledQty") or "0"
    filled = float(filled_text)
    amount = _nonzero(_first(raw, "origQty", "quantity", "qty"))
    if amount is None and status == "closed":
        amount = filled  # ccxt: a closed order without a size has the size it filled
    average = _nonzero(_first(raw, "avgPrice", "avgFilledPrice"))
    if average is None and filled > 0 and _first(raw, "cummulativeQuoteQty", "cumQuote") is not None:
        raise ValueError("a fill without its average price: ccxt derives it from the cost")
    trigger_price = _nonzero(_first(raw, "stopPrice", "triggerPrice"))
    lower_type = (_first(raw, "type", "orderType") or "").lower() or None
    contract = "positionSide" in raw or "cumQuote" in raw
    ccxt_type = (CONTRACT_ORDER_TYPE if contract else _SPOT_TYPE).get(lower_type or "", lower_type)
    if is_trigger:
        order_type = trigger_order_type(str(raw.get("orderType") or raw.get("type") or "").upper())
        if order_type == "stop_market" and lower_type in _TAKE_PROFIT_TYPES and trigger_price:
            order_type = "take_profit_market"  # ccxt: a take-profit type with a trigger price
    else:
        order_type = ccxt_type or ""
    order_id = _first(raw, "strategyId", "orderId", "algoId")
    actual = raw.get("actualOrderId")
    return VenueOrder(
        client_order_id=_first(raw, "clientOrderId", "newClientStrategyId", "clientAlgoId")
        or client_order_id
        or str(order_id),
        exchange_order_id=order_id,
        state=order_state(status, filled),
        venue_status=raw.get("status") or raw.get("algoStatus") or status,
        filled=filled,
        amount=amount,
        average=average,
        actual_order_id=str(actual) if actual else None,
        symbol=symbol,
        side=(_first(raw, "side") or "").lower(),
        order_type=order_type,
        is_trigger=is_trigger,
        reduce_only=_truthy(raw.get("reduceOnly")),
        close_position=_truthy(raw.get("closePosition")),
        trigger_price=trigger_price,
    )
