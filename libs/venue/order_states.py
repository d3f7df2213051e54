"""The one order-state map: a venue order's status -> our lifecycle state. Pure.

ccxt parses Binance's REST order answers into its unified status; the user data stream's raw events
(libs/venue/stream_events.py) and the create answers read raw (libs/venue/raw_orders.py) carry the
venue's own word, read through ``unified_status`` as ccxt reads it, so all land on the same state.
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


# the venue's own status word (Binance order ``status`` / stream ``X``, algo ``algoStatus``) -> ccxt's
# unified status, as ccxt's binance ``parse_order_status`` maps it (4.5.x)
_UNIFIED: dict[str, str] = {
    "NEW": "open",
    "PARTIALLY_FILLED": "open",
    "ACCEPTED": "open",
    "TRIGGERING": "open",
    "FILLED": "closed",
    "TRIGGERED": "closed",
    "FINISHED": "closed",
    "CANCELED": "canceled",
    "CANCELLED": "canceled",
    "PENDING_CANCEL": "canceling",
    "REJECTED": "rejected",
    "EXPIRED": "expired",
    "EXPIRED_IN_MATCH": "expired",
    "S": "ok",
    "F": "rejected",
}


def unified_status(venue_status: str) -> str:
    """The venue's status word as ccxt's unified status (a word ccxt does not know stays as it is)."""
    return _UNIFIED.get(venue_status, venue_status)


def order_state(status: str | None, filled: float) -> OrderState:
    """Unified ccxt status (+ filled) -> our lifecycle state."""
    if status == "open":
        return OrderState.PARTIALLY_FILLED if filled > 0 else OrderState.ACKED
    # A venue answered with a status we do not know: do not guess that it is gone.
    return _BY_STATUS.get(status or "", OrderState.UNKNOWN)
