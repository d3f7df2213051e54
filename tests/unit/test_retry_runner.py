"""The one retry runner (services/router/retrying.py): bounds, one order.retry per retry, pauses free."""

import random

import ccxt
import pytest

from libs.common.messages import OrderRetry
from libs.common.retry import RetryPolicy
from libs.venue.error_policy import ErrorDecision, VenueError
from services.router.retrying import RETRY, Budget, GaveUp, RetryTarget

TARGET = RetryTarget("corr-1", "cid-1", "BTC/USDT:USDT")
TIMEOUT = ccxt.RequestTimeout("binanceusdm POST timed out")
RATE_LIMITED = ccxt.RateLimitExceeded('binanceusdm {"code":-1003,"msg":"Too many requests."}')
NO_MARGIN = ccxt.InsufficientFunds('binanceusdm {"code":-2019,"msg":"Margin is insufficient."}')


class Sink:
    def __init__(self) -> None:
        self.events: list[OrderRetry] = []

    async def emit(self, event) -> None:
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, sec: float) -> None:
        self.now += sec


def budget(**policy) -> tuple[Budget, Clock]:
    clock = Clock()
    p = RetryPolicy(**{"jitter": 0.0, **policy})
    return Budget(p, clock=clock, rng=random.Random(1), sleep=clock.sleep), clock


def venue(*outcomes):
    """A venue call failing with each exception in turn, then answering the last non-exception."""
    seen: list[int] = []
    queue = list(outcomes)

    async def call(attempt: int):
        seen.append(attempt)
        out = queue.pop(0)
        if isinstance(out, BaseException):
            raise VenueError(out) if isinstance(out, ccxt.BaseError) else out
        return out

    return call, seen


async def test_retryable_failures_are_retried_with_one_order_retry_each():
    b, clock = budget()
    sink = Sink()
    call, seen = venue(TIMEOUT, TIMEOUT, "answer")
    assert await b.run("fetch", call, sink=sink, target=TARGET) == "answer"
    assert seen == [1, 2, 3]
    assert [(e.operation, e.reason, e.tries, e.attempt) for e in sink.events] == [
        ("fetch", "request_timeout", 1, 2),
        ("fetch", "request_timeout", 2, 3),
    ]
    assert sink.events[0].client_order_id == "cid-1" and sink.events[0].correlation_id == "corr-1"
    assert clock.now == pytest.approx(0.25 + 0.5)  # the backoff doubles


async def test_a_failure_that_is_not_retryable_ends_the_run_at_once():
    b, _ = budget()
    sink = Sink()
    call, seen = venue(NO_MARGIN, "never")
    answer = await b.run("leverage", call, sink=sink, target=TARGET)
    assert isinstance(answer, GaveUp) and answer.decision.reason == "insufficient_margin"
    assert seen == [1] and sink.events == []


async def test_attempts_are_bounded():
    b, _ = budget(max_attempts=3)
    sink = Sink()
    call, seen = venue(TIMEOUT, TIMEOUT, TIMEOUT, "never")
    answer = await b.run("cancel", call, sink=sink, target=TARGET)
    assert isinstance(answer, GaveUp) and answer.decision.reason == "request_timeout"
    assert seen == [1, 2, 3] and len(sink.events) == 2


async def test_the_elapsed_cap_includes_the_coming_sleep():
    b, clock = budget(max_attempts=50, max_elapsed_sec=1.0)
    sink = Sink()
    call, seen = venue(*[TIMEOUT] * 10)
    assert isinstance(await b.run("fetch", call, sink=sink, target=TARGET), GaveUp)
    assert seen == [1, 2, 3] and clock.now == pytest.approx(0.75)  # a third sleep (1 s) would pass 1.0


async def test_a_venue_pause_repeats_the_attempt_under_its_number_and_burns_no_attempt():
    b, _ = budget(max_attempts=2)
    sink = Sink()
    call, seen = venue(RATE_LIMITED, RATE_LIMITED, TIMEOUT, "answer")
    assert await b.run("create", call, sink=sink, target=TARGET) == "answer"
    assert seen == [1, 1, 1, 2]
    assert [(e.reason, e.tries, e.attempt) for e in sink.events] == [
        ("rate_limited", 1, 1),
        ("rate_limited", 1, 1),
        ("request_timeout", 1, 2),
    ]


async def test_the_handler_ends_the_run_or_asks_for_a_retry_and_before_wait_runs_per_retry():
    b, _ = budget()
    sink = Sink()
    decided: list[str] = []

    async def on_error(d: ErrorDecision):
        decided.append(d.reason)
        return RETRY if d.reason == "insufficient_margin" else "handled"  # retries even a fatal one

    async def before_wait(d: ErrorDecision):
        assert len(sink.events) == len(decided) - 1  # before its order.retry
        decided.append(f"wait:{d.reason}")

    call, seen = venue(NO_MARGIN, TIMEOUT, "never")
    answer = await b.run("create", call, sink=sink, target=TARGET, on_error=on_error, before_wait=before_wait)
    assert answer == "handled" and seen == [1, 2]
    assert decided == ["insufficient_margin", "wait:insufficient_margin", "request_timeout"]
    assert len(sink.events) == 1


async def test_a_bug_of_ours_is_never_retried_or_classified():
    b, _ = budget()
    sink = Sink()
    call, seen = venue(KeyError("oops"), "never")
    with pytest.raises(KeyError):
        await b.run("create", call, sink=sink, target=TARGET)
    assert seen == [1] and sink.events == []


def test_the_routers_policy_comes_from_its_settings_whose_defaults_are_the_policys():
    from libs.common.config import RouterSettings

    assert RouterSettings().retry_policy == RetryPolicy()
    s = RouterSettings(retry_max_attempts=2, retry_max_elapsed_sec=3.0, retry_jitter=0.0)
    assert s.retry_policy == RetryPolicy(max_attempts=2, max_elapsed_sec=3.0, jitter=0.0)
