"""Submit one order intent: bounded retries, never a duplicate order.

Rules, in the order they matter:
1. After any failure whose outcome is ambiguous (timeout, 5xx, -1007, a
   redelivered intent after a crash, -4116 duplicate id) the order is looked up
   by client id before anything is resent. "Not found" is only "not found yet"
   until the original request can no longer be accepted (its timestamp +
   recvWindow + a margin: ``Lifecycle.absent_after``): until then the lookup is
   repeated with backoff, and the lookup that decides starts after that moment.
   If the lookups cannot answer in the budget, the intent stays UNKNOWN and is
   handed to the resolver; it is never resent blind.
2. Retries are bounded by attempts and by an elapsed cap; each retry emits
   exactly one ``order.retry``.
3. Errors the policy calls fatal end the intent as REJECTED at once, and so does -1015 (the order
   budget is spent) for an entry; a protective order waits for the window and goes again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from libs.common.journal import EventSink
from libs.common.messages import OrderIntent
from libs.common.state_machine import OrderState
from libs.common.telemetry import SUBMIT_LATENCY, Children
from libs.venue.binance_usdm import BinanceUSDM
from libs.venue.error_policy import ErrorDecision, Modification, Policy, VenueError
from services.router.cancel import cancel_order
from services.router.leverage import LeverageSetter
from services.router.lifecycle import Lifecycle
from services.router.lookup import lookup_intent
from services.router.retrying import RETRY, Budget, GaveUp, Retry, RetryTarget

log = logging.getLogger("erl.router.submit")
_SUBMIT_LATENCY = Children(SUBMIT_LATENCY)


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    state: OrderState
    reason: str
    lifecycle: Lifecycle


def reducible_qty(side: str, position_qty: float, qty: float | None) -> float | None:
    """How much a reduce-only order on ``side`` may still close; None if it would not reduce anything."""
    if side == "sell" and position_qty > 0:
        return position_qty if qty is None else min(qty, position_qty)
    if side == "buy" and position_qty < 0:
        return -position_qty if qty is None else min(qty, -position_qty)
    return None


def as_market_exit(intent: OrderIntent) -> OrderIntent:
    """A stop whose trigger is already crossed: close at market instead (same client id, never placed)."""
    return intent.model_copy(
        update={"order_type": "market", "stop_price": None, "close_position": False, "reduce_only": True}
    )


# a resting close-position order this close to the price asked for is that protection already
# (the reconciler's RECONCILE_STOP_PRICE_TOLERANCE default)
SAME_STOP_TOLERANCE = 0.005

# a lookup found nothing while the last send could still be accepted: look again, do not resend
NOT_FOUND_YET = ErrorDecision(Policy.RETRYABLE, "not_found_yet", -2013, "OrderNotFound")


class OrderSubmitter:
    def __init__(self, venue: BinanceUSDM, sink: EventSink, leverage: LeverageSetter | None = None) -> None:
        self.venue, self.sink = venue, sink
        self.leverage = leverage or LeverageSetter(venue)

    async def _ensure_leverage(self, life: Lifecycle, budget: Budget) -> SubmitOutcome | None:
        """The leverage the entry decision asked for, set before the order; BLOCKED if the venue refuses."""
        if life.leverage is None:
            return None
        refusal = await self.leverage.ensure(self.sink, budget, life.intent, life.leverage)
        if not refusal:
            return None
        await life.move(OrderState.BLOCKED, refusal)
        return SubmitOutcome(OrderState.BLOCKED, refusal, life)

    async def send(self, life: Lifecycle, budget: Budget) -> SubmitOutcome:
        """Drive ``life`` (CREATED, or proven absent by ``resolve_if_sent``) to a settled state: first
        the leverage its entry decision asked for (``life.leverage``), then the order."""
        blocked = await self._ensure_leverage(life, budget)
        if blocked is not None:
            return blocked
        intent = life.intent
        qty = intent.qty

        async def create(attempt: int) -> SubmitOutcome:
            life.attempt = attempt
            await life.move(OrderState.SUBMITTING, f"attempt {attempt}")
            life.absent_after = self.venue.absent_after(time.time())
            t = time.perf_counter()
            try:
                order = await self.venue.create(intent, qty)
            except VenueError:
                _SUBMIT_LATENCY("error").observe(time.perf_counter() - t)
                raise
            took = time.perf_counter() - t
            _SUBMIT_LATENCY("ok").observe(took)
            await life.settle(order, venue_ms=round(took * 1000, 3))
            return SubmitOutcome(life.state, "venue", life)

        async def on_error(d: ErrorDecision) -> SubmitOutcome | Retry:
            nonlocal intent, qty
            if d.ambiguous or d.policy is Policy.IDEMPOTENT_SAFE:
                await life.move(OrderState.UNKNOWN, d.reason, error_class=d.error_class, code=d.code)
                found = await self._resolve(life, budget, intent)
                if found is not None:
                    return found
                # confirmed absent: a resend cannot duplicate it
            elif d.policy is Policy.RETRYABLE_WITH_MODIFICATION:
                modified = await self._modify(life, budget, intent, qty, d)
                if isinstance(modified, SubmitOutcome):
                    return modified
                intent, qty = modified
                life.intent = intent
            elif d.policy is not Policy.RETRYABLE or (d.order_budget_spent and not intent.is_exit):
                # an entry refused for the order budget is dropped, not retried into the limit: what the
                # budget has left (after the window) belongs to protective orders first
                await life.move(OrderState.REJECTED, d.reason, error_class=d.error_class, code=d.code)
                return SubmitOutcome(OrderState.REJECTED, d.reason, life)
            return RETRY

        async def before_wait(d: ErrorDecision) -> None:
            await life.move(OrderState.RETRY_WAIT, d.reason, error_class=d.error_class, code=d.code)

        answer = await budget.run(
            "create",
            create,
            sink=self.sink,
            target=RetryTarget(intent.correlation_id, intent.client_order_id, intent.symbol),
            on_error=on_error,
            before_wait=before_wait,
        )
        if isinstance(answer, GaveUp):
            d = answer.decision
            reason = f"retries_exhausted:{d.reason}"
            await life.move(OrderState.FAILED, reason, error_class=d.error_class, code=d.code)
            return SubmitOutcome(OrderState.FAILED, reason, life)
        return answer

    async def resolve_if_sent(
        self, life: Lifecycle, budget: Budget, *, redelivered: bool = False
    ) -> SubmitOutcome | None:
        """An intent that may have been sent before (journaled in flight, or delivered again): settle it
        from the venue, park it UNKNOWN, or return None once it is proven absent (then it may be sent)."""
        if life.state in (OrderState.SUBMITTING, OrderState.RETRY_WAIT) or (
            redelivered and life.state is OrderState.CREATED
        ):
            # we may have sent it before a crash: find out before sending again
            await life.move(OrderState.UNKNOWN, "redelivered")
        if life.state is not OrderState.UNKNOWN:
            return None
        if life.absent_after is None:
            # sent at some unknown moment before now: void at the latest one recvWindow from now
            life.absent_after = self.venue.absent_after(time.time())
        return await self._resolve(life, budget, life.intent)

    async def _resolve(self, life: Lifecycle, budget: Budget, intent: OrderIntent) -> SubmitOutcome | None:
        """From UNKNOWN: settle if the venue has the order, park if it cannot say, None once it is proven
        absent: not found by a lookup that started after the last send became void."""
        tries = 0
        while True:
            started = time.time()
            res = await lookup_intent(self.venue, self.sink, budget, intent)
            if not res.known:
                return SubmitOutcome(OrderState.UNKNOWN, f"lookup_failed:{res.reason}", life)
            if res.order is not None:
                await life.settle(res.order, "found_by_client_id")
                return SubmitOutcome(life.state, "found_by_client_id", life)
            deadline = life.absent_after or 0.0
            if started >= deadline:
                return None
            tries += 1
            delay = budget.delay_towards(tries, deadline)
            if delay is None:  # the resolver keeps asking, and decides after the deadline
                return SubmitOutcome(OrderState.UNKNOWN, NOT_FOUND_YET.reason, life)
            target = RetryTarget(intent.correlation_id, intent.client_order_id, intent.symbol)
            await budget.retry_after(self.sink, target, "fetch", NOT_FOUND_YET, tries, delay)

    async def _take_place_of(
        self, life: Lifecycle, budget: Budget, intent: OrderIntent, qty: float | None, d: ErrorDecision
    ) -> tuple[OrderIntent, float | None] | SubmitOutcome:
        """-4130: a close-position order of this kind already rests on this side (the venue allows one).
        At our price it is the protection asked for (MOOT); anywhere else it is not what was asked (a
        stale stop of a closed position, another stop price): cancel it, verified, and send ours."""
        try:
            resting = await self.venue.resting_close_position(intent)
        except VenueError as e:
            reason = f"{d.reason}:unreadable"
            await life.move(OrderState.REJECTED, reason, error_class=e.decision.error_class, code=d.code)
            return SubmitOutcome(OrderState.REJECTED, reason, life)
        wanted = intent.stop_price or 0.0
        if resting is None or abs(resting[1] - wanted) <= SAME_STOP_TOLERANCE * wanted:
            await life.move(OrderState.MOOT, d.reason, error_class=d.error_class, code=d.code)
            return SubmitOutcome(OrderState.MOOT, d.reason, life)
        report = await cancel_order(
            self.venue,
            self.sink,
            budget,
            symbol=intent.symbol,
            client_order_id=resting[0],
            trigger=True,
            correlation_id=intent.correlation_id,
        )
        if report.outcome in ("canceled", "already_gone", "filled"):  # gone, or it closed the position
            log.warning(
                "replaced resting %s at %s by %s at %s",
                resting[0],
                resting[1],
                intent.client_order_id,
                wanted,
            )
            return intent, qty
        reason = f"{d.reason}:cancel_{report.outcome}"
        await life.move(OrderState.REJECTED, reason, error_class=d.error_class, code=d.code)
        return SubmitOutcome(OrderState.REJECTED, reason, life)

    async def _modify(
        self, life: Lifecycle, budget: Budget, intent: OrderIntent, qty: float | None, d: ErrorDecision
    ) -> tuple[OrderIntent, float | None] | SubmitOutcome:
        """Apply the modification the error policy asked for, or end the intent."""
        if d.modification is Modification.PROTECTION_EXISTS and intent.close_position:
            return await self._take_place_of(life, budget, intent, qty, d)
        if d.modification is Modification.RESYNC_CLOCK:
            try:
                await self.venue.resync_clock()
            except VenueError as e:  # the retry itself will tell whether it helped
                log.warning("clock resync failed: %s", e)
            return intent, qty
        resize = d.modification is Modification.RESIZE_REDUCE_ONLY and (
            intent.reduce_only or intent.close_position
        )
        if d.modification is Modification.TRIGGER_CROSSED and intent.order_type == "trailing_stop_market":
            if intent.activation_price is None:  # nothing to move: the venue refuses the stop itself
                await life.move(OrderState.REJECTED, d.reason, error_class=d.error_class, code=d.code)
                return SubmitOutcome(OrderState.REJECTED, d.reason, life)
            # the activation price is already reached: track from now instead (never a market close)
            return intent.model_copy(update={"activation_price": None}), qty
        if d.modification is Modification.TRIGGER_CROSSED and intent.is_trigger:
            was_close_position = intent.close_position
            intent = as_market_exit(intent)
            if not was_close_position:
                return intent, qty
            resize = True  # a closePosition stop has no size: take it from the position
        if resize:
            return await self._resize(life, intent, qty, d)
        await life.move(OrderState.REJECTED, d.reason, error_class=d.error_class, code=d.code)
        return SubmitOutcome(OrderState.REJECTED, d.reason, life)

    async def _resize(
        self, life: Lifecycle, intent: OrderIntent, qty: float | None, d: ErrorDecision
    ) -> tuple[OrderIntent, float | None] | SubmitOutcome:
        """A reduce-only (or close-position) order the venue refused for its size: fit it to the position
        the venue reports, or end it when there is nothing left to reduce."""
        try:
            position = await self.venue.position_qty(intent.symbol)
        except VenueError as e:
            reason = f"{d.reason}:position_unavailable"
            await life.move(OrderState.FAILED, reason, error_class=e.decision.error_class)
            return SubmitOutcome(OrderState.FAILED, reason, life)
        new_qty = reducible_qty(intent.side, position, qty)
        if new_qty is None or new_qty <= 0:
            # -2022 / -4118 for a reduce-only order, -4509 / -4129 for a close-position one: the
            # position it was meant to close is gone (or on the other side)
            await life.move(OrderState.MOOT, f"{d.reason}:no_position_to_reduce")
            return SubmitOutcome(OrderState.MOOT, "no_position_to_reduce", life)
        if intent.close_position:
            # there is a position to close after all (it opened meanwhile): the same order again; a
            # close-position order carries no size (the venue refuses one with a quantity, -4137)
            return intent, None
        if qty is not None and new_qty >= qty:
            # the venue refused a size that fits the position: nothing left to modify
            await life.move(OrderState.REJECTED, d.reason, error_class=d.error_class, code=d.code)
            return SubmitOutcome(OrderState.REJECTED, d.reason, life)
        return intent, new_qty
