"""Request building for Binance USD-M. Pure, unit-tested.

Every order we send or ask about is named by our client order id (ccxt sends it as
``newClientOrderId`` / ``origClientOrderId``); conditional orders live on the algo endpoint, which ccxt
reaches with ``trigger``.

Creates skip ccxt's unified ``create_order`` (the router's hottest venue call): ``create_request``
builds the raw params ccxt would send for ``create_order_args``, and the caller posts them through
ccxt's implicit endpoint methods, so signing, recvWindow / timestamp, the limits bookkeeping and the
error mapping stay ccxt's. tests/unit/test_create_request.py holds the two equal, case by case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import ccxt

from libs.common.messages import OrderIntent


def order_ref(client_order_id: str, trigger: bool) -> dict[str, Any]:
    """ccxt params naming one order by our client id (fetch, cancel)."""
    params: dict[str, Any] = {"clientOrderId": client_order_id}
    if trigger:
        params["trigger"] = True
    return params


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
    """(type, side, amount, price, params) for ccxt.create_order: the unified call ``create_request``
    stands for (its reference in the tests)."""
    params: dict[str, Any] = order_ref(intent.client_order_id, trigger=False)
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


class Precision(Protocol):
    """The market precision formatting of the ccxt client (amounts truncated, prices rounded)."""

    id: str

    def amount_to_precision(self, symbol: str, amount: Any) -> str: ...

    def price_to_precision(self, symbol: str, price: Any) -> str: ...


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """One create as Binance takes it, before signing."""

    algo: bool  # a conditional order: POST /fapi/v1/algoOrder (the others: POST /fapi/v1/order)
    params: dict[str, Any]


_VENUE_TYPE = {
    "market": "MARKET",
    "limit": "LIMIT",
    "stop_market": "STOP_MARKET",
    "take_profit_market": "TAKE_PROFIT_MARKET",
    "trailing_stop_market": "TRAILING_STOP_MARKET",
}


def create_request(
    intent: OrderIntent,
    qty: float | None,
    market: dict[str, Any],
    precision: Precision,
    time_in_force: str | None,
) -> CreateRequest:
    """What ccxt 4.5's ``create_order`` posts for ``create_order_args(intent, qty)`` on a USD-M perpetual
    (binance ``create_order_request``), keys in its order. ``market``: ccxt's market of ``intent.symbol``;
    ``time_in_force``: ccxt's ``options['createOrder']['timeInForce']`` (limit orders).

    Numbers go through the client's own formatting with the arguments ccxt gives it (trigger prices as
    ccxt's string of the float), so they are the same bytes; a quantity below the market's precision
    raises ccxt's InvalidOrder as before. Booleans stay booleans: ccxt's urlencode writes them "true".
    """
    symbol, kind = intent.symbol, intent.order_type
    algo = intent.is_trigger
    venue_type = _VENUE_TYPE[kind]
    req: dict[str, Any] = {"symbol": market["id"], "side": intent.side.upper()}
    if kind == "trailing_stop_market":
        req["callbackRate"] = str(intent.callback_rate)
        if intent.activation_price is not None:
            req["activatePrice"] = precision.price_to_precision(symbol, str(intent.activation_price))
    valid_types = market["info"].get("orderTypes")
    if venue_type not in (valid_types if isinstance(valid_types, list) else []):
        ccxt_type = _CCXT_TYPE[kind]
        if ccxt_type.upper() != venue_type:
            raise ccxt.InvalidOrder(
                f"{precision.id} triggerPrice parameter is not allowed for {symbol} {ccxt_type} orders"
            )
        raise ccxt.InvalidOrder(
            f"{precision.id} {ccxt_type} is not a valid order type for the {symbol} market"
        )
    req["clientAlgoId" if algo else "newClientOrderId"] = intent.client_order_id
    req["newOrderRespType"] = "RESULT"
    req["type"] = venue_type
    if not (algo and intent.close_position):
        # closePosition stops carry no quantity; ccxt formats the 0.0 it is given for a market order
        req["quantity"] = precision.amount_to_precision(symbol, qty if qty is not None else 0.0)
    if kind == "limit":
        req["price"] = precision.price_to_precision(symbol, intent.price)
    if kind in ("stop_market", "take_profit_market"):
        req["triggerPrice"] = precision.price_to_precision(symbol, str(intent.stop_price))
    if kind == "limit":
        req["timeInForce"] = time_in_force
    if intent.reduce_only and not intent.close_position:
        req["reduceOnly"] = True
    if intent.close_position:
        req["closePosition"] = True
    if algo:
        req["algoType"] = "CONDITIONAL"
    return CreateRequest(algo, req)
