"""VenueLimits: what a response says about the venue's limits, and how long we must pause. Clock injected."""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import random

import pytest

from libs.common.retry import RetryPolicy
from libs.venue.client import VenuePaused, make_exchange, venue_deadline, wait_out_pause
from libs.venue.error_policy import classify_order_error_policy
from libs.venue.limits import VenueLimits, parse_banned_until, parse_retry_after
from services.router.retrying import Budget

NOW = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def limits(clock: Clock | None = None, **kw) -> VenueLimits:
    return VenueLimits(clock=clock or Clock(), **kw)


def ban_body(until_ms: int | str) -> str:
    return f'{{"code":-1003,"msg":"Way too many requests; IP(127.0.0.1) banned until {until_ms}. Use websockets."}}'


RATE_BODY = (
    '{"code":-1003,"msg":"Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute."}'
)


def test_usage_headers_are_recorded_case_insensitively_on_every_response():
    lim = limits()
    assert lim.record(200, {"x-mbx-used-weight-1m": "57", "X-MBX-ORDER-COUNT-10S": "3"}, "{}") is None
    assert (lim.used_weight_1m, lim.order_count_10s, lim.order_count_1m) == (57, 3, None)
    lim.record(400, {"X-MBX-USED-WEIGHT-1M": "58", "X-MBX-ORDER-COUNT-1M": "9"}, '{"code":-2019}')
    assert (lim.used_weight_1m, lim.order_count_10s, lim.order_count_1m) == (58, 3, 9)
    lim.record(200, {"X-MBX-USED-WEIGHT-1M": "garbage"}, "{}")
    assert lim.used_weight_1m == 58  # an unreadable header leaves the last good value
    assert lim.current() is None and lim.remaining() == 0.0


def test_429_pauses_for_retry_after():
    clock = Clock()
    lim = limits(clock)
    p = lim.record(429, {"Retry-After": "7", "X-MBX-USED-WEIGHT-1M": "2401"}, RATE_BODY)
    assert p is not None and (p.kind, p.reason, p.until, p.retry_after_sec) == (
        "rate_limit",
        "rate_limited",
        NOW + 7,
        7,
    )
    assert lim.used_weight_1m == 2401
    assert lim.remaining() == 7
    clock.t += 7
    assert lim.current() is None and lim.remaining() == 0.0


def test_429_without_retry_after_uses_the_default():
    lim = limits(rate_limit_default_sec=2.5)
    p = lim.record(429, {}, RATE_BODY)
    assert p.until == NOW + 2.5 and p.retry_after_sec is None


def test_418_prefers_retry_after_over_the_body():
    lim = limits()
    p = lim.record(418, {"retry-after": "120"}, ban_body(int((NOW + 500) * 1000)))
    assert (p.kind, p.reason, p.until, p.venue_until) == ("ban", "ip_banned", NOW + 120, NOW + 500)


def test_418_without_retry_after_reads_banned_until():
    lim = limits()
    p = lim.record(418, {}, ban_body(int((NOW + 90) * 1000)))
    assert p.until == pytest.approx(NOW + 90) and p.retry_after_sec is None and not p.capped


@pytest.mark.parametrize(
    "body", [ban_body(int((NOW - 30) * 1000)), ban_body("soon"), "<html>teapot</html>", ""]
)
def test_418_with_a_past_or_garbled_end_falls_back_to_the_default(body):
    lim = limits(ban_default_sec=45)
    p = lim.record(418, {"Retry-After": "not-a-number"}, body)
    assert p.kind == "ban" and p.until == NOW + 45


def test_absurd_ban_is_capped_and_flagged():
    lim = limits(max_pause_sec=300)
    p = lim.record(418, {}, ban_body(4102444800000))  # year 2100
    assert p.capped and p.until == NOW + 300 and p.venue_until == 4102444800.0


def test_ban_text_on_a_429_is_a_ban():
    p = limits().record(429, {"Retry-After": "3"}, ban_body(int((NOW + 3) * 1000)))
    assert p.kind == "ban"


def test_same_ban_seen_again_is_not_news_a_longer_one_is():
    clock = Clock()
    lim = limits(clock)
    seen = []
    lim.listeners.append(seen.append)
    first = lim.record(418, {"Retry-After": "60"}, ban_body(0))
    clock.t += 0.2
    assert lim.record(418, {"Retry-After": "60"}, ban_body(0)) is None  # a concurrent call, 0.2 s later
    assert lim.ban.until == NOW + 60.2  # still held to the latest word
    longer = lim.record(418, {"Retry-After": "240"}, ban_body(0))
    assert seen == [first, longer] and lim.remaining() == pytest.approx(240)


def test_learned_ban_pauses_within_our_own_cap_and_never_from_the_past():
    clock = Clock()
    lim = limits(clock, max_pause_sec=100)
    assert lim.learn(NOW - 1) is None and lim.current() is None
    p = lim.learn(NOW + 30, message="router: banned")
    assert (p.source, p.until, p.capped) == ("bus", NOW + 30, False)
    assert lim.learn(NOW + 20) is None  # shorter than what we hold
    far = lim.learn(NOW + 10_000)
    assert far.capped and far.until == NOW + 100


def test_current_is_the_later_of_ban_and_rate_limit():
    lim = limits()
    lim.record(429, {"Retry-After": "5"}, RATE_BODY)
    lim.record(418, {"Retry-After": "50"}, ban_body(0))
    assert lim.current().kind == "ban" and lim.remaining() == 50
    assert lim.status()["paused"] == "ip_banned"


def test_parsers():
    assert parse_retry_after("12", NOW) == 12.0
    assert parse_retry_after(" 0 ", NOW) is None and parse_retry_after("-3", NOW) is None
    assert parse_retry_after(None, NOW) is None and parse_retry_after("soon", NOW) is None
    assert parse_retry_after(email.utils.formatdate(NOW + 20, usegmt=True), NOW) == 20.0
    assert parse_banned_until(ban_body(1700000123456)) == 1700000123.456
    assert parse_banned_until("banned until 1700000123") == 1700000123.0  # seconds from a sloppy venue
    assert parse_banned_until("no ban here") is None


# ----------------------------------------------------------------------------- the transport and the budget


async def test_transport_holds_a_call_until_the_pause_ends():
    lim = VenueLimits()
    lim.record(429, {"Retry-After": "0.2"}, RATE_BODY)
    loop = asyncio.get_running_loop()
    t = loop.time()
    await wait_out_pause(lim)
    assert loop.time() - t >= 0.19 and lim.current() is None


async def test_transport_refuses_unsent_when_the_pause_outlasts_the_budget():
    lim = VenueLimits()
    lim.record(418, {"Retry-After": "60"}, ban_body(0))
    token = venue_deadline.set(lim.clock() + 5)
    try:
        with pytest.raises(VenuePaused) as err:
            await wait_out_pause(lim)
    finally:
        venue_deadline.reset(token)
    d = classify_order_error_policy(err.value)
    assert (d.reason, d.ambiguous, d.venue_pause) == ("ip_banned", False, True)


def test_every_client_gets_limits_real_host_included():
    for url in (None, "http://127.0.0.1:1"):
        ex = make_exchange(api_url=url, api_key="k", api_secret="s")
        assert isinstance(ex.venue_limits, VenueLimits)
        assert isinstance(ex.limits, dict)  # ccxt's own market limits are untouched


def test_budget_waits_out_a_venue_pause_without_charging_an_attempt():
    contextvars.copy_context().run(_budget_case)  # a Budget sets the task's venue deadline: keep it here


def _budget_case() -> None:
    clock = Clock()
    lim = limits(clock)
    lim.record(418, {"Retry-After": "3"}, ban_body(0))
    ban = classify_order_error_policy(VenuePaused(lim.current()))
    policy = RetryPolicy(max_attempts=2, max_elapsed_sec=10, base_delay_sec=0.1, jitter=0)
    budget = Budget(policy, clock=clock, rng=random.Random(1), limits=lim)
    assert venue_deadline.get() == NOW + 10
    assert budget.next_delay(5, ban) == 3.0  # past max_attempts: a pause is not an attempt
    lim.record(418, {"Retry-After": "30"}, ban_body(0))
    assert budget.next_delay(1, ban) is None  # the pause outlasts the elapsed cap
    other = classify_order_error_policy(code=-1008)
    assert budget.next_delay(1, other) == 0.1 and budget.next_delay(2, other) is None
