"""The venue's leverage per symbol, set before an entry goes out (within the entry's retry budget)."""

from __future__ import annotations

from libs.common.journal import EventSink
from libs.common.messages import OrderIntent
from libs.venue.binance_usdm import BinanceUSDM
from services.router.retrying import Budget, GaveUp, RetryTarget


class LeverageSetter:
    """Remembers what it set: the venue keeps a symbol's leverage, so it is only sent when it changes."""

    def __init__(self, venue: BinanceUSDM) -> None:
        self.venue = venue
        self.current: dict[str, int] = {}

    async def ensure(self, sink: EventSink, budget: Budget, intent: OrderIntent, leverage: int) -> str:
        """Set ``intent.symbol``'s leverage; a refusal reason if it could not be set, else ""."""
        if self.current.get(intent.symbol) == leverage:
            return ""
        answer = await budget.run(
            "leverage",
            lambda _attempt: self.venue.set_leverage(intent.symbol, leverage),
            sink=sink,
            target=RetryTarget(intent.correlation_id, intent.client_order_id, intent.symbol),
        )
        if isinstance(answer, GaveUp):
            return f"leverage_not_set:{answer.decision.reason}"
        self.current[intent.symbol] = leverage
        return ""
