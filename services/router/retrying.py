"""The retry budget of one intent, the one retry runner (``Budget.run``) every venue operation goes
through, and the one place ``order.retry`` is emitted.

A 429 or an IP ban is the venue asking every caller to stop for a while, not a failure of one
request: the retry that follows waits until the venue lets us back in (the pause in the client's
``VenueLimits``), is journaled like any retry (one ``order.retry`` per wait) and does not use up an
attempt; only the elapsed cap bounds it. The transport itself (``libs/venue/client.py``) holds
every call during such a pause, and the deadline a ``Budget`` sets keeps that hold inside the budget:
a call whose pause outlasts it fails unsent, so a create never goes out after its budget has ended.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal, TypeVar

from libs.common.journal import EventSink
from libs.common.logs import log_event
from libs.common.messages import OrderRetry
from libs.common.retry import RetryPolicy
from libs.common.telemetry import RETRIES, RETRY_DELAY
from libs.venue.client import venue_deadline
from libs.venue.error_policy import ErrorDecision, VenueError
from libs.venue.limits import VenueLimits

log = logging.getLogger("erl.router.retry")

Operation = Literal["create", "cancel", "fetch", "leverage"]

T = TypeVar("T")
R = TypeVar("R")


class Retry(Enum):
    RETRY = "retry"


# what an ``on_error`` handler answers to ask the runner for another attempt (within the budget)
RETRY = Retry.RETRY


@dataclass(frozen=True, slots=True)
class RetryTarget:
    """The order a run's retries are reported for."""

    correlation_id: str
    client_order_id: str
    symbol: str


@dataclass(frozen=True, slots=True)
class GaveUp:
    """A run that ended without an answer: its last failure was not retryable, or the budget is spent."""

    decision: ErrorDecision


class Budget:
    """Shared elapsed cap for everything done for one intent; attempts are counted per operation.

    With the venue client's ``limits``, creating a budget also sets the deadline of the venue calls made
    from this task from now on (``venue_deadline``): a ban or Retry-After ending after the budget fails a
    call at once, unsent, instead of holding it past the budget.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limits: VenueLimits | None = None,
    ) -> None:
        self.policy, self.clock, self.rng, self.sleep = policy, clock, rng, sleep
        self.limits = limits
        self.pauses = 0  # venue pauses waited out under this budget: their backoff grows like attempts'
        self.t0 = clock()
        if limits is not None:
            venue_deadline.set(limits.clock() + policy.max_elapsed_sec)

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def delay_towards(self, tries: int, until: float) -> float | None:
        """Backoff while waiting for a moment on the wall clock (a request's validity deadline), never
        sleeping past it by more than a hair; attempts do not limit it, only the elapsed cap does."""
        d = min(self.policy.delay(tries, self.rng), max(until - time.time(), 0.0) + 0.001)
        return d if self.elapsed() + d <= self.policy.max_elapsed_sec else None

    def next_delay(self, tries: int, decision: ErrorDecision | None = None) -> float | None:
        """Delay before the next attempt, or None when the budget is spent.

        After a venue pause (``decision.venue_pause``) the delay is the rest of that pause (at least the
        backoff for the pauses so far) and the attempt limit does not apply: only the elapsed cap does.
        """
        if decision is not None and decision.venue_pause:
            self.pauses += 1
            pause = self.limits.remaining() if self.limits is not None else 0.0
            delay = max(self.policy.delay(self.pauses, self.rng), pause)
            return delay if self.elapsed() + delay <= self.policy.max_elapsed_sec else None
        return self.policy.next_delay(tries, self.elapsed(), self.rng)

    async def run(
        self,
        operation: Operation,
        call: Callable[[int], Awaitable[T]],
        *,
        sink: EventSink,
        target: RetryTarget,
        on_error: Callable[[ErrorDecision], Awaitable[R | Retry]] | None = None,
        before_wait: Callable[[ErrorDecision], Awaitable[None]] | None = None,
    ) -> T | R | GaveUp:
        """Make ``call`` (given the attempt number) until it answers, within this budget.

        A venue failure (``VenueError``; anything else is a bug and propagates) goes to ``on_error``,
        which ends the run with its answer or asks for another attempt (``RETRY``); without a handler,
        retryable failures are retried and the rest end the run (``GaveUp``), as does a spent budget.
        ``before_wait`` runs once a retry is decided, before its ``order.retry`` and backoff.
        """
        tries = 0
        while True:
            tries += 1
            try:
                return await call(tries)
            except VenueError as e:
                d = e.decision
            if on_error is not None:
                verdict = await on_error(d)
                if verdict is not RETRY:
                    return verdict
            elif not d.retryable:
                return GaveUp(d)
            delay = self.next_delay(tries, d)
            if delay is None:
                return GaveUp(d)
            if before_wait is not None:
                await before_wait(d)
            tries = await self.retry_after(sink, target, operation, d, tries, delay)

    async def retry_after(
        self,
        sink: EventSink,
        target: RetryTarget,
        operation: Operation,
        decision: ErrorDecision,
        tries: int,
        delay: float,
    ) -> int:
        """Emit exactly one ``order.retry`` for the attempt about to be made, then back off.

        Returns the attempt counter to continue from: ``tries`` after a failed attempt; ``tries - 1``
        after a venue pause, so the attempt the venue refused to handle is made again under the same
        number.
        """
        charged = not decision.venue_pause
        attempt = tries + 1 if charged else tries
        event = OrderRetry(
            correlation_id=target.correlation_id,
            client_order_id=target.client_order_id,
            symbol=target.symbol,
            operation=operation,
            error_class=decision.error_class,
            reason=decision.reason,
            code=decision.code,
            policy=decision.policy.value,
            tries=tries,
            attempt=attempt,
            delay_sec=round(delay, 4),
            elapsed_sec=round(self.elapsed(), 4),
        )
        RETRIES.labels(operation, decision.error_class, decision.reason).inc()
        RETRY_DELAY.observe(delay)
        log_event(
            log,
            "order.retry",
            logging.WARNING,
            correlation_id=target.correlation_id,
            client_order_id=target.client_order_id,
            symbol=target.symbol,
            operation=operation,
            error_class=decision.error_class,
            reason=decision.reason,
            code=decision.code,
            tries=tries,
            attempt=attempt,
            delay_sec=round(delay, 4),
        )
        await sink.emit(event)
        await self.sleep(delay)
        return tries if charged else tries - 1
