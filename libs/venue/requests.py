"""Request building for Binance USD-M through ccxt. Pure, unit-tested.

Every order we send or ask about is named by our client order id (ccxt sends it as
``newClientOrderId`` / ``origClientOrderId``); conditional orders live on the algo endpoint, which ccxt
reaches with ``trigger``.
"""

from __future__ import annotations

from typing import Any

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
    """(type, side, amount, price, params) for ccxt.create_order."""
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
