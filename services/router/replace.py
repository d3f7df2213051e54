"""Bounded cancel/replace (stop refreshes) with explicit replace states.

Never two stops, never an unbounded loop:
- the replacement is placed only once the old order is confirmed gone
  (cancelled / unknown-and-not-open) and a confirming fetch shows it did not fill;
- if the old order filled (before or "after" the cancel), replacing would double
  the exit: stop at FILLED_AFTER_CANCEL and let the reconciler re-evaluate;
- if the old order is still open after the cancel (REPLACE_RACE) or the cancel
  outcome is unknown (CANCEL_SENT_UNKNOWN), try again up to ``max_attempts``,
  then give up loudly with ``order.cancel_replace_giveup``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from libs.common.journal import EventSink
from libs.common.logs import log_event
from libs.common.messages import CancelReplaceGiveup, ReplaceIntent, ReplaceTransition
from libs.common.state_machine import OrderState, ReplaceState, TransitionError, transition
from libs.common.telemetry import CANCEL_REPLACE_GIVEUPS
from libs.venue.binance_usdm import BinanceUSDM
from services.router.cancel import cancel_order
from services.router.lifecycle import Lifecycle
from services.router.lookup import lookup_order
from services.router.retrying import Budget
from services.router.submit import OrderSubmitter

log = logging.getLogger("erl.router.replace")

PLACED_STATES = frozenset({OrderState.ACKED, OrderState.PARTIALLY_FILLED, OrderState.FILLED})


@dataclass(frozen=True, slots=True)
class ReplaceOutcome:
    state: ReplaceState
    reason: str
    attempts: int
    new_order_state: OrderState | None = None
    new_lifecycle: Lifecycle | None = None


class ReplaceMachine:
    def __init__(self, intent: ReplaceIntent, sink: EventSink, *, strict: bool = True) -> None:
        self.intent, self.sink, self.strict = intent, sink, strict
        self.state = ReplaceState.INTENT_CREATED
        self.attempt = 0

    async def move(self, to: ReplaceState, reason: str = "") -> None:
        src = self.state
        try:
            transition(src, to, key=self.intent.correlation_id)
        except TransitionError:
            if self.strict:
                raise
            log_event(log, "replace.invalid_transition", logging.ERROR, src=src.value, dst=to.value)
        self.state = to
        i = self.intent
        await self.sink.emit(
            ReplaceTransition(
                correlation_id=i.correlation_id,
                old_client_order_id=i.old_client_order_id,
                new_client_order_id=i.new_order.client_order_id,
                symbol=i.new_order.symbol,
                from_state=src,
                to_state=to,
                attempt=self.attempt,
                reason=reason,
            )
        )


async def cancel_replace_order(
    venue: BinanceUSDM,
    sink: EventSink,
    submitter: OrderSubmitter,
    intent: ReplaceIntent,
    budget: Budget,
    *,
    max_attempts: int,
    strict: bool = True,
    old_may_exist: bool = True,
    new_life: Lifecycle | None = None,
) -> ReplaceOutcome:
    """Cancel the old order, verify it is gone, then place the new one (once). ``new_life``: the new
    order's lifecycle when it was journaled before (UNKNOWN, proven never placed)."""
    m = ReplaceMachine(intent, sink, strict=strict)
    symbol = intent.new_order.symbol
    reason = ""
    resumed, new_life = new_life, None
    while m.attempt < max_attempts:
        m.attempt += 1
        report = await cancel_order(
            venue,
            sink,
            budget,
            symbol=symbol,
            client_order_id=intent.old_client_order_id,
            trigger=intent.old_is_trigger,
            correlation_id=intent.correlation_id,
            may_exist=old_may_exist,
        )
        if report.outcome == "filled":
            await m.move(ReplaceState.FILLED_AFTER_CANCEL, "old order filled before the cancel")
            await m.move(ReplaceState.DONE, "not replaced: old order filled")
            return ReplaceOutcome(m.state, "filled_after_cancel", m.attempt)
        if report.outcome == "conflict_open":
            reason = "old order still open after cancel"
            await m.move(ReplaceState.REPLACE_RACE, reason)
            continue
        if report.outcome in ("unknown", "failed"):
            reason = f"cancel {report.outcome}: {report.reason}"
            await m.move(ReplaceState.CANCEL_SENT_UNKNOWN, reason)
            if report.outcome == "failed":
                break  # fatal cancel error: more attempts would fail the same way
            continue
        # the cancel says gone; a venue can still report a fill afterwards, so look once more
        confirm = await lookup_order(
            venue,
            sink,
            budget,
            symbol=symbol,
            client_order_id=intent.old_client_order_id,
            trigger=intent.old_is_trigger,
            correlation_id=intent.correlation_id,
        )
        if confirm.known and confirm.order is not None and confirm.order.state is OrderState.FILLED:
            await m.move(ReplaceState.FILLED_AFTER_CANCEL, "old order reported filled after cancel ack")
            await m.move(ReplaceState.DONE, "not replaced: old order filled")
            return ReplaceOutcome(m.state, "filled_after_cancel", m.attempt)
        if confirm.known and confirm.order is not None and confirm.order.is_open:
            reason = "old order open on confirmation"
            await m.move(ReplaceState.REPLACE_RACE, reason)
            continue
        life = resumed or Lifecycle(intent.new_order, sink)
        placed = await submitter.send(life, budget)
        if placed.state in PLACED_STATES:
            await m.move(ReplaceState.DONE, f"replacement {placed.state.value}")
            return ReplaceOutcome(m.state, "replaced", m.attempt, placed.state, life)
        reason = f"replacement {placed.state.value}: {placed.reason}"
        new_life = life
        break
    last = m.state
    await m.move(ReplaceState.GIVE_UP, reason)
    CANCEL_REPLACE_GIVEUPS.labels(last.value).inc()
    await sink.emit(
        CancelReplaceGiveup(
            correlation_id=intent.correlation_id,
            old_client_order_id=intent.old_client_order_id,
            new_client_order_id=intent.new_order.client_order_id,
            symbol=symbol,
            state=last,
            attempts=m.attempt,
            reason=reason or "max attempts",
        )
    )
    log_event(
        log,
        "order.cancel_replace_giveup",
        logging.ERROR,
        correlation_id=intent.correlation_id,
        old_client_order_id=intent.old_client_order_id,
        attempts=m.attempt,
        reason=reason,
    )
    return ReplaceOutcome(
        m.state,
        reason or "max attempts",
        m.attempt,
        new_life.state if new_life else None,
        new_life,
    )
