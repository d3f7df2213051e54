"""The retry budget of one router operation and the one place ``order.retry`` is emitted."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from libs.common.error_policy import ErrorDecision
from libs.common.journal import EventSink
from libs.common.logs import log_event
from libs.common.messages import OrderRetry
from libs.common.retry import RetryPolicy
from libs.common.telemetry import RETRIES, RETRY_DELAY

log = logging.getLogger("erl.router.retry")

Operation = Literal["create", "cancel", "fetch", "leverage"]


class Budget:
    """Shared elapsed cap for everything done for one intent; attempts are counted per operation."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.policy, self.clock, self.rng, self.sleep = policy, clock, rng, sleep
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def next_delay(self, tries: int) -> float | None:
        return self.policy.next_delay(tries, self.elapsed(), self.rng)


async def emit_retry_and_wait(
    sink: EventSink,
    budget: Budget,
    *,
    operation: Operation,
    decision: ErrorDecision,
    tries: int,
    delay: float,
    correlation_id: str,
    client_order_id: str,
    symbol: str,
) -> None:
    """Emit exactly one ``order.retry`` for the attempt about to be made, then back off."""
    event = OrderRetry(
        correlation_id=correlation_id,
        client_order_id=client_order_id,
        symbol=symbol,
        operation=operation,
        error_class=decision.error_class,
        reason=decision.reason,
        code=decision.code,
        policy=decision.policy.value,
        tries=tries,
        attempt=tries + 1,
        delay_sec=round(delay, 4),
        elapsed_sec=round(budget.elapsed(), 4),
    )
    RETRIES.labels(operation, decision.error_class, decision.reason).inc()
    RETRY_DELAY.observe(delay)
    log_event(
        log,
        "order.retry",
        logging.WARNING,
        correlation_id=correlation_id,
        client_order_id=client_order_id,
        symbol=symbol,
        operation=operation,
        error_class=decision.error_class,
        reason=decision.reason,
        code=decision.code,
        tries=tries,
        attempt=tries + 1,
        delay_sec=round(delay, 4),
    )
    await sink.emit(event)
    await budget.sleep(delay)
