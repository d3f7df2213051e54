"""429s and IP bans handled as the venue demands: real nats-server, simulator and ccxt.

A ban (418) or a 429's Retry-After pauses every venue call of the process that got it, and a ban is
journaled (``venue.ban``) so every other service using the venue pauses too; the waits cost no retry
attempts, only elapsed budget, and a create that cannot go out inside its budget fails unsent.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from libs.common.config import KillSettings
from libs.common.messages import KillSwitchEvent, OrderTransition, VenueBan
from libs.common.state_machine import OrderState
from libs.venue.limits import VenueLimits
from tests.integration.helpers import BTC_ID, creates, make_intent, retries, settled, stop_intent

pytestmark = pytest.mark.integration

S = OrderState
ORDER_PATH = "/fapi/v1/order"
ALGO_PATH = "/fapi/v1/algoOrder"
# a request already on the wire when a ban is learned may still reach the venue just after
IN_FLIGHT_GRACE_SEC = 0.3


def learned(limits: VenueLimits) -> asyncio.Event:
    """Set when ``limits`` takes in a new pause (from a response or from the bus)."""
    event = asyncio.Event()
    limits.listeners.append(lambda pause: event.set())
    return event


def requests_between(sim, start: float, end: float, path: str | None = None) -> list[dict]:
    return [r for r in sim.requests_log() if start < r["ts"] < end and (path is None or r["path"] == path)]


def ban(seconds: float, source: str = "router") -> VenueBan:
    return VenueBan(
        banned_until_ms=int((time.time() + seconds) * 1000),
        retry_after_sec=seconds,
        source_service=source,
        reason="Way too many requests; banned until ...",
    )


async def test_ban_is_waited_out_without_burning_attempts_and_journaled(bus, sim, router_factory):
    # two bans in a row, fewer attempts than bans: only a wait that costs no attempt can fill this
    router = await router_factory(retry_max_attempts=2)
    await router.venue.ensure_markets()
    sim.add_fault(kind="http_error", method="POST", path=ORDER_PATH, count=2, status=418)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED

    bans = bus.tap.of(VenueBan)
    assert [b.source_service for b in bans] == ["router", "router"]  # each 418 journaled once
    rs = retries(bus.tap, intent, "create")
    assert len(rs) == 2  # one order.retry per wait
    assert all((r.reason, r.tries, r.attempt, r.policy) == ("ip_banned", 1, 1, "retryable") for r in rs)
    submits = [
        x
        for x in bus.tap.of(OrderTransition, client_order_id=intent.client_order_id)
        if x.to_state is S.SUBMITTING
    ]
    assert [x.attempt for x in submits] == [1, 1, 1]  # the refused attempt is made again, not charged

    sent = creates(sim, intent.client_order_id)
    assert len(sent) == 3 and [r["status"] for r in sent] == [418, 418, 200]
    for refused, after, b in zip(sent[:-1], sent[1:], bans, strict=True):
        until = b.banned_until_ms / 1000
        assert after["ts"] >= until  # resent only once the ban was over ...
        assert requests_between(sim, refused["ts"], until) == []  # ... and nothing at all went out meanwhile
    assert router.venue_limits.current() is None


async def test_rate_limit_storm_is_bounded_by_elapsed_not_attempts(bus, sim, router_factory):
    await router_factory(retry_max_attempts=2, retry_max_elapsed_sec=3.5)
    sim.add_fault(kind="http_error", method="POST", path=ORDER_PATH, count=None, status=429)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert (t.to_state, t.reason) == (S.FAILED, "retries_exhausted:rate_limited")
    sent = creates(sim, intent.client_order_id)
    rs = retries(bus.tap, intent, "create")
    assert len(sent) > 2 and len(rs) == len(sent) - 1  # past max_attempts, one order.retry per wait
    assert all(r.elapsed_sec + r.delay_sec <= 3.5 + 1e-6 for r in rs)
    for before, after, r in zip(sent, sent[1:], rs, strict=False):
        assert after["ts"] - before["ts"] >= r.delay_sec * 0.9  # every Retry-After honoured


async def test_ban_learned_from_the_bus_pauses_the_reconciler(bus, sim, reconciler_factory):
    rec = await reconciler_factory()
    await rec.wait_ticks(1)
    got = learned(rec.venue_limits)
    await bus.publish(ban(1.5, source="router"))
    await asyncio.wait_for(got.wait(), 5)
    t_learned, until = time.time(), rec.venue_limits.current().until
    # the tick in flight may finish; the one after it is held until the ban ends
    summary = await rec.wait_ticks(2, within_sec=10)
    assert summary.ok and time.time() >= until
    assert requests_between(sim, t_learned + IN_FLIGHT_GRACE_SEC, until) == []
    assert [r for r in sim.requests_log() if r["ts"] >= until]  # and it reads the venue again afterwards
    assert rec.venue_limits.current() is None


async def test_shared_ban_holds_a_create_until_it_ends_or_fails_it_unsent(bus, sim, router_factory):
    router = await router_factory(retry_max_elapsed_sec=2.0)
    await router.venue.ensure_markets()
    got = learned(router.venue_limits)
    await bus.publish(ban(1.0, source="reconciler"))
    await asyncio.wait_for(got.wait(), 5)
    until = router.venue_limits.current().until
    held = make_intent()
    await bus.publish(held)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, held, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED and retries(bus.tap, held) == []  # a pause before the send is no retry
    (sent,) = creates(sim, held.client_order_id)
    assert sent["ts"] >= until

    # a ban that outlasts the intent's budget: the create never goes out, late or otherwise
    got.clear()
    await bus.publish(ban(30.0, source="reconciler"))
    await asyncio.wait_for(got.wait(), 5)
    doomed = make_intent()
    await bus.publish(doomed)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, doomed, S.FILLED, S.FAILED, S.REJECTED))
    assert (t.to_state, t.reason, t.error_class) == (S.FAILED, "retries_exhausted:ip_banned", "VenuePaused")
    assert creates(sim, doomed.client_order_id) == []


async def test_risk_counts_a_ban_as_an_api_error(bus, sim, risk_factory):
    risk = await risk_factory(kill=KillSettings(api_error_max=1, stale_data_sec=3600))
    await bus.publish(ban(0.5))
    knobs = await risk.wait_published(lambda k: "api_errors" in k.kill_reasons)
    assert not knobs.allow_entries
    trip = next(e for e in bus.tap.of(KillSwitchEvent) if "api_errors" in e.newly_tripped)
    assert trip.api_errors_in_window == 1


@pytest.mark.parametrize("code", [-4509, -4129])
async def test_close_position_stop_without_position_is_moot(bus, sim, router_factory, code):
    await router_factory()
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path=ALGO_PATH,
        count=1,
        code=code,
        msg="Time in Force (TIF) GTE can only be used with open positions or open orders.",
    )
    sl = stop_intent("sell", round(sim.price(BTC_ID) * 0.9, 1), qty=None)
    await bus.publish(sl)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, sl))
    assert (t.to_state, t.reason) == (S.MOOT, "no_position_for_close_order:no_position_to_reduce")


async def test_close_position_stop_refused_while_a_position_exists_is_sent_again_without_size(
    bus, sim, router_factory
):
    await router_factory()
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, amount=0.01, entry_price=px)
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path=ALGO_PATH,
        count=1,
        code=-4509,
        msg="TIF GTE can only be used with open positions or open orders.",
    )
    sl = stop_intent("sell", round(px * 0.9, 1), qty=None)
    await bus.publish(sl)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, sl))
    assert t.to_state is S.ACKED
    sent = creates(sim, sl.client_order_id, ALGO_PATH)
    assert len(sent) == 2 and all(r["params"].get("closePosition") == "true" for r in sent)
    assert all("quantity" not in r["params"] for r in sent)
