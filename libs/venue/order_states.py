"""The one order-state map: a venue order's status -> our lifecycle state. Pure.

ccxt parses every Binance order answer into its unified status (REST order and algo-order endpoints,
and ccxt's user-data stream parser for ``ORDER_TRADE_UPDATE``), so this one map serves the REST reads
today and the stream tomorrow.
"""

from __future__ import annotations

from libs.common.state_machine import OrderState

# ccxt unified status -> our state ("open" is split by the filled quantity)
_BY_STATUS: dict[str, OrderState] = {
    "closed": OrderState.FILLED,
    "canceled": OrderState.CANCELED,
    "canceling": OrderState.CANCELED,  # Binance PENDING_CANCEL
    "expired": OrderState.EXPIRED,
    "rejected": OrderState.REJECTED,
}


def order_state(status: str | None, filled: float) -> OrderState:
    """Unified ccxt status (+ filled) -> our lifecycle state."""
    if status == "open":
        return OrderState.PARTIALLY_FILLED if filled > 0 else OrderState.ACKED
    # A venue answered with a status we do not know: do not guess that it is gone.
    return _BY_STATUS.get(status or "", OrderState.UNKNOWN)
