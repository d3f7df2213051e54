"""The venue's truth as one tick reads it: positions, open orders, equity. Pure data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VenueOrderView:
    symbol: str
    client_order_id: str
    side: str  # "buy" / "sell"; "" when the venue did not say
    qty: float | None
    reduce_only: bool
    close_position: bool
    is_trigger: bool
    order_type: str  # unified ccxt type: market / limit / stop_market / take_profit_market ...
    trigger_price: float | None = None
    state: str = "open"

    @property
    def is_trailing(self) -> bool:
        return "trailing" in self.order_type

    @property
    def is_stop_loss(self) -> bool:
        # a trailing stop protects nothing before it activates: never counted as the stop-loss
        return self.is_trigger and "take_profit" not in self.order_type and not self.is_trailing

    @property
    def is_protective(self) -> bool:
        """Closes (part of) a position and never opens one: it belongs to a position."""
        return self.reduce_only or self.close_position


@dataclass(frozen=True, slots=True)
class PositionView:
    qty: float
    entry_price: float = 0.0
    mark_price: float = 0.0


FLAT = PositionView(0.0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    positions: dict[str, PositionView]
    orders: list[VenueOrderView]
    equity: float | None = None

    def position(self, symbol: str) -> PositionView:
        return self.positions.get(symbol, FLAT)


def order_row(o: VenueOrderView) -> dict:
    """One open order as operators read it (`/status` open_orders)."""
    return {
        "symbol": o.symbol,
        "client_order_id": o.client_order_id,
        "type": o.order_type,
        "side": o.side,
        "qty": o.qty,
        "trigger_price": o.trigger_price,
        "reduce_only": o.reduce_only,
        "close_position": o.close_position,
        "stop_loss": o.is_stop_loss and o.is_protective,
    }


def venue_positions(
    positions: dict[str, PositionView], orders: list[VenueOrderView], gap_ages_sec: dict[str, float]
) -> dict[str, dict]:
    """Every open position with the stop-losses resting for it and how long it has been unprotected."""
    out: dict[str, dict] = {}
    for symbol, p in sorted(positions.items()):
        if not p.qty:
            continue
        stops = [
            o.trigger_price
            for o in orders
            if o.symbol == symbol and o.is_stop_loss and o.is_protective and o.trigger_price
        ]
        out[symbol] = {
            "qty": p.qty,
            "entry_price": p.entry_price,
            "mark_price": p.mark_price,
            "stops": stops,
            "gap_sec": gap_ages_sec.get(symbol),
        }
    return out
