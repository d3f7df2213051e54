"""Engine changes -> Binance USD-M user data stream events, in the venue's field names. Pure.

Built at the moment of the change (under the engine lock) so each event is a snapshot; ``E`` is
the event time (now), ``T`` the transaction time (the order's or position's update time).

- ``ORDER_TRADE_UPDATE``: every order change (x = NEW / TRADE / CANCELED / EXPIRED; X = the status).
  No commission is modelled, so ``N`` / ``n`` are left out, as Binance does when there is none.
- ``ALGO_UPDATE``: conditional orders of the Algo Service (X = NEW / TRIGGERING / TRIGGERED / FINISHED /
  CANCELED / REJECTED / EXPIRED); ``ai`` is the id of the order a trigger placed, ``ap`` / ``aq`` / ``act``
  appear once it is in the matching engine, ``rm`` says why it failed.
- ``ACCOUNT_UPDATE``: the USDT balance and the changed symbol's position, with the reason ``m``.
- ``listenKeyExpired``: ``E`` is a string here, as Binance sends it.
"""

from __future__ import annotations

from typing import Any

from services.simulator.engine import AlgoOrder, Engine, Order
from services.simulator.wire import num


class UserEvents:
    """Payload builder for one engine; remembers each symbol's accumulated realized profit (``cr``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.realized: dict[str, float] = {}

    def reset(self) -> None:
        self.realized.clear()

    def note_realized(self, symbol: str, realized: float) -> None:
        """Every fill's realized profit, streamed or not: ``cr`` accumulates from the start."""
        if realized:
            self.realized[symbol] = self.realized.get(symbol, 0.0) + realized

    def order_update(
        self,
        o: Order,
        exec_type: str,
        last_qty: float = 0.0,
        last_price: float = 0.0,
        realized: float = 0.0,
    ) -> dict[str, Any]:
        e = self.engine
        bids, asks = self._open_notional(o.symbol)
        return {
            "e": "ORDER_TRADE_UPDATE",
            "E": e.now_ms(),
            "T": o.update_time,
            "o": {
                "s": o.symbol,
                "c": o.client_id,
                "S": o.side,
                "o": o.type,
                "f": o.time_in_force,
                "q": num(o.qty),
                "p": num(o.price),
                "ap": num(o.avg_price),
                "sp": num(o.stop_price),
                "x": exec_type,
                "X": o.status,
                "i": o.order_id,
                "l": num(last_qty),
                "z": num(o.executed),
                "L": num(last_price),
                "T": o.update_time,
                # the engine keeps no trade ids: the fill's position in its fill log is unique and increasing
                "t": len(e.fills) if exec_type == "TRADE" else 0,
                "b": num(bids),
                "a": num(asks),
                # a resting limit fills at its own price as maker; takers fill at the book
                "m": exec_type == "TRADE"
                and o.type == "LIMIT"
                and last_price == o.price
                and o.time < o.update_time,
                "R": o.reduce_only,
                "wt": "CONTRACT_PRICE",
                "ot": o.orig_type or o.type,
                "ps": "BOTH",
                "cp": o.close_position,
                "pP": False,
                "si": 0,
                "ss": 0,
                "rp": num(realized),
                "V": "EXPIRE_MAKER",
                "pm": "NONE",
                "gtd": 0,
            },
        }

    def algo_update(self, a: AlgoOrder, reason: str = "") -> dict[str, Any]:
        e = self.engine
        body: dict[str, Any] = {
            "caid": a.client_id,
            "aid": a.algo_id,
            "at": "CONDITIONAL",
            "o": a.order_type,
            "s": a.symbol,
            "S": a.side,
            "ps": "BOTH",
            "f": a.time_in_force,
            "q": num(a.qty),
            "X": a.status,
            "ai": str(a.actual_order_id) if a.actual_order_id else "",
            "tp": num(a.trigger_price),
            "p": num(a.price),
            "V": "EXPIRE_MAKER",
            "wt": a.working_type,
            "pm": "NONE",
            "cp": a.close_position,
            "pP": False,
            "R": a.reduce_only,
            "tt": a.trigger_time,
            "gtd": 0,
            "rm": reason,
        }
        child = e.orders.get(a.actual_order_id) if a.actual_order_id else None
        if child is not None:  # only once the trigger placed an order in the matching engine
            body.update({"ap": num(child.avg_price), "aq": num(child.executed), "act": child.type})
        return {"e": "ALGO_UPDATE", "E": e.now_ms(), "T": a.update_time, "o": body}

    def account_update(self, symbol: str, reason: str) -> dict[str, Any]:
        e = self.engine
        p = e.position(symbol)
        return {
            "e": "ACCOUNT_UPDATE",
            "E": e.now_ms(),
            "T": p.update_time,
            "a": {
                "m": reason,
                "B": [{"a": "USDT", "wb": num(e.wallet), "cw": num(e.wallet), "bc": "0"}],
                "P": [
                    {
                        "s": symbol,
                        "pa": num(p.qty),
                        "ep": num(p.entry_price),
                        "bep": num(p.entry_price),
                        "cr": num(self.realized.get(symbol, 0.0)),
                        "up": num(e.unrealized(symbol)),
                        "mt": "cross",
                        "iw": "0",
                        "ps": "BOTH",
                        "ma": "USDT",
                    }
                ],
            },
        }

    def _open_notional(self, symbol: str) -> tuple[float, float]:
        """Bids / asks notional of the symbol's open orders (``b`` / ``a``)."""
        bids = asks = 0.0
        for x in self.engine.live_orders():
            if x.open and x.symbol == symbol:
                n = (x.qty - x.executed) * (x.price or self.engine.prices[symbol])
                if x.side == "BUY":
                    bids += n
                else:
                    asks += n
        return bids, asks


def listen_key_expired(key: str, now_ms: int) -> dict[str, Any]:
    return {"e": "listenKeyExpired", "E": str(now_ms), "listenKey": key}
