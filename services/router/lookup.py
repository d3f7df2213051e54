"""Look an order up by client id, retrying within the intent's budget.

This is what makes resends safe: after any ambiguous failure the router asks
the venue whether the order exists before it sends anything again.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.journal import EventSink
from libs.common.messages import OrderIntent
from libs.venue.binance_usdm import BinanceUSDM
from libs.venue.parsing import VenueOrder
from services.router.retrying import Budget, GaveUp, RetryTarget


@dataclass(frozen=True, slots=True)
class LookupResult:
    known: bool  # False: we still do not know whether the order exists
    order: VenueOrder | None = None  # None with known=True: the venue says it does not exist
    reason: str = ""


async def lookup_intent(
    venue: BinanceUSDM, sink: EventSink, budget: Budget, intent: OrderIntent
) -> LookupResult:
    """``lookup_order`` for the order an intent places."""
    return await lookup_order(
        venue,
        sink,
        budget,
        symbol=intent.symbol,
        client_order_id=intent.client_order_id,
        trigger=intent.is_trigger,
        correlation_id=intent.correlation_id,
    )


async def lookup_order(
    venue: BinanceUSDM,
    sink: EventSink,
    budget: Budget,
    *,
    symbol: str,
    client_order_id: str,
    trigger: bool,
    correlation_id: str,
) -> LookupResult:
    answer = await budget.run(
        "fetch",
        lambda _attempt: venue.fetch_order(symbol, client_order_id, trigger),
        sink=sink,
        target=RetryTarget(correlation_id, client_order_id, symbol),
    )
    if isinstance(answer, GaveUp):
        return LookupResult(False, None, answer.decision.reason)
    return LookupResult(True, answer)
