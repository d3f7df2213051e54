"""Idempotent cancel, cross-checked with a fetch.

"Unknown order" from a cancel is success (already gone) only when a fetch
confirms it: a fetch showing the order still open / new / partially filled is a
conflict (some venues answer -2011 for an order they have not finished routing),
and a fetch that finds nothing proves nothing for an order we may have placed
(the venue's query side lags right after acceptance): that stays ``unknown``,
as does a fetch that cannot answer. Treating either as gone would leave a live
order nobody tracks, and a replace would then place a second stop beside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from libs.common.journal import EventSink
from libs.common.messages import CancelOutcome, CancelResult
from libs.common.state_machine import OrderState
from libs.common.telemetry import CANCELS
from libs.venue.binance_usdm import BinanceUSDM
from libs.venue.error_policy import ErrorDecision, Policy
from libs.venue.parsing import VenueOrder
from services.router.lookup import LookupResult, lookup_order
from services.router.retrying import RETRY, Budget, GaveUp, Retry, RetryTarget


@dataclass(frozen=True, slots=True)
class CancelReport:
    outcome: CancelOutcome
    order: VenueOrder | None
    reason: str = ""
    code: int | None = None

    @property
    def gone(self) -> bool:
        """The order can no longer fill: safe to place a replacement."""
        return self.outcome in ("canceled", "already_gone")


def _outcome_from_fetch(order: VenueOrder | None, may_exist: bool) -> CancelOutcome:
    if order is None:
        # not found: gone only if it was never placed as far as our journal knows
        return "unknown" if may_exist else "already_gone"
    if order.is_open:
        return "conflict_open"
    if order.state is OrderState.FILLED:
        return "filled"
    if order.state is OrderState.UNKNOWN:
        return "unknown"
    return "already_gone"


async def _report_from_ack(
    order: VenueOrder, fetch: Callable[[], Awaitable[LookupResult]], may_exist: bool
) -> CancelReport:
    """The venue answered the cancel itself."""
    if order.state is OrderState.CANCELED:
        return CancelReport("canceled", order, "venue")
    if order.state is OrderState.UNKNOWN:
        # a bare ack without a status (Binance algo cancels): the fetch tells what happened
        res = await fetch()
        if res.known and res.order is not None and res.order.state is OrderState.CANCELED:
            return CancelReport("canceled", res.order, "venue_ack+fetch")
        if res.known and res.order is not None:
            return CancelReport(_outcome_from_fetch(res.order, may_exist), res.order, "venue_ack+fetch")
        # the venue acknowledged this very cancel (a bare ack is its success answer), the fetch
        # could not add the status: a triggered or filled order answers -2011, never an ack
        return CancelReport("canceled", order, "venue_ack:unverified")
    return CancelReport(_outcome_from_fetch(order, may_exist), order, f"venue_status:{order.venue_status}")


async def cancel_order(
    venue: BinanceUSDM,
    sink: EventSink,
    budget: Budget,
    *,
    symbol: str,
    client_order_id: str,
    trigger: bool,
    correlation_id: str,
    may_exist: bool = True,
    order_correlation_id: str | None = None,
) -> CancelReport:
    """``may_exist``: our journal says the order may have reached the venue (a lookup that finds
    nothing is then no proof that it is gone)."""

    async def fetch() -> LookupResult:
        return await lookup_order(
            venue,
            sink,
            budget,
            symbol=symbol,
            client_order_id=client_order_id,
            trigger=trigger,
            correlation_id=correlation_id,
        )

    last: CancelReport | None = None  # what the last failed attempt told: the answer if the budget ends

    async def on_error(d: ErrorDecision) -> CancelReport | Retry:
        nonlocal last
        if d.policy is Policy.IDEMPOTENT_SAFE:
            res = await fetch()
            outcome = _outcome_from_fetch(res.order, may_exist) if res.known else "unknown"
            reason = d.reason if res.known else f"{d.reason}:unverified"
            last = CancelReport(outcome, res.order, reason, d.code)
            return RETRY if outcome in ("conflict_open", "unknown") else last
        if d.retryable:
            last = CancelReport("unknown", None, d.reason, d.code)
            return RETRY
        return CancelReport("failed", None, d.reason, d.code)

    answer = await budget.run(
        "cancel",
        lambda _attempt: venue.cancel(symbol, client_order_id, trigger),
        sink=sink,
        target=RetryTarget(correlation_id, client_order_id, symbol),
        on_error=on_error,
    )
    if isinstance(answer, GaveUp):  # the budget ended after a failure that asked for a retry
        report = last or CancelReport("unknown", None, answer.decision.reason, answer.decision.code)
    elif isinstance(answer, CancelReport):
        report = answer
    else:
        report = await _report_from_ack(answer, fetch, may_exist)
    CANCELS.labels(report.outcome).inc()
    await sink.emit(
        CancelResult(
            correlation_id=correlation_id,
            client_order_id=client_order_id,
            symbol=symbol,
            outcome=report.outcome,
            order_correlation_id=order_correlation_id,
            status=report.order.venue_status if report.order else None,
            filled_qty=report.order.filled if report.order else None,
            reason=report.reason,
            code=report.code,
        )
    )
    return report
