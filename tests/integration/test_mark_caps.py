"""Money checks use the venue's mark price, never a number a caller supplies (entry service and router),
through real NATS, the simulator and real ccxt."""

from __future__ import annotations

import asyncio

import pytest

from libs.common.config import GuardSettings
from libs.common.ids import Bucket
from libs.common.messages import OrderIntent, Signal, SignalDecision
from libs.common.state_machine import OrderState
from services.entry.cli import parse_args, signal_from_args
from tests.integration.helpers import BTC, BTC_ID, creates, make_intent, settled, stop_intent

pytestmark = pytest.mark.integration

S = OrderState
KNOBS = GuardSettings(require_knobs=True)
CAP = 10_000.0  # the risk service's normal-mode notional cap; the simulator's BTC mark is 50,000
PREMIUM_INDEX = "/fapi/v1/premiumIndex"
ETH = "ETH/USDT:USDT"
UNLISTED = "DOGE/USDT:USDT"  # not one of the simulator's markets


def decision(tap, signal_id: str) -> SignalDecision | None:
    return next(iter(tap.of(SignalDecision, signal_id=signal_id)), None)


def sig(signal_id: str, **kw) -> Signal:
    return Signal(**{"signal_id": signal_id, "symbol": BTC, "side": "buy", "qty": 0.01, **kw})


async def decided(bus, signal: Signal) -> SignalDecision:
    await bus.publish(signal)
    return await bus.tap.wait_for(lambda: decision(bus.tap, signal.signal_id))


async def outcome(bus, intent: OrderIntent):
    await bus.publish(intent)
    return await bus.tap.wait_for(lambda: settled(bus.tap, intent))


def on_venue(sim, client_order_id: str) -> list[dict]:
    return [o for o in sim.state()["orders"] if o["clientOrderId"] == client_order_id]


def mark_reads(sim) -> list[dict]:
    return [r for r in sim.requests_log() if r["method"] == "GET" and r["path"] == PREMIUM_INDEX]


async def capped_stack(router_factory, risk_factory, entry_factory=None, **router_overrides):
    """Router (+ entry) applying the risk service's 10k notional cap."""
    router = await router_factory(guard=KNOBS, **router_overrides)
    await risk_factory(max_notional_usdt=CAP)
    await router.guard.wait_until(lambda k: k is not None and k.max_notional_usdt == CAP)
    entry = None
    if entry_factory is not None:
        entry = await entry_factory(guard=KNOBS)
        await entry.guard.wait_until(lambda k: k is not None and k.max_notional_usdt == CAP)
    return router, entry


async def test_cli_signal_with_a_tiny_ref_price_is_refused_at_the_venue_mark(
    bus, sim, router_factory, risk_factory, entry_factory
):
    """Reproduced bug: ``--ref-price 1`` let a 14.6k USDT entry through a 10k cap."""
    await capped_stack(router_factory, risk_factory, entry_factory)
    args = ["--symbol", BTC, "--side", "buy", "--qty", "0.292", "--ref-price", "1", "--signal-id", "tiny-ref"]
    d = await decided(bus, signal_from_args(parse_args(args)))
    assert not d.accepted and d.reason == "notional_cap:14600.00>10000"
    assert bus.tap.of(OrderIntent) == [] and sim.state()["orders"] == []
    # the same CLI signal under the cap goes through: the ref price is merely informational
    args = ["--symbol", BTC, "--side", "buy", "--qty", "0.19", "--ref-price", "1e9", "--signal-id", "ok-ref"]
    d = await decided(bus, signal_from_args(parse_args(args)))
    assert d.accepted, d.reason
    (intent,) = bus.tap.of(OrderIntent, bucket=Bucket.ENTRY)
    assert intent.notional_usdt == pytest.approx(0.19 * 50_000)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))


async def test_entry_intent_without_notional_over_the_cap_is_blocked_before_the_venue(
    bus, sim, router_factory, risk_factory
):
    """Reproduced bug: an ENTRY intent published without ``notional_usdt`` filled 1 BTC (50k) through a
    10k cap; one declaring a notional lower than its size is no better."""
    await capped_stack(router_factory, risk_factory)
    bare = make_intent(qty=1.0)
    lying = make_intent(qty=1.0, notional_usdt=1.0)
    for intent in (bare, lying):
        t = await outcome(bus, intent)
        assert t.to_state is S.BLOCKED and t.reason == "notional_cap:50000.00>10000", t.reason
    for intent in (bare, lying):
        assert on_venue(sim, intent.client_order_id) == [] and creates(sim, intent.client_order_id) == []
    assert sim.state()["orders"] == [] and sim.position(BTC_ID) == 0
    # under the cap, computed from the mark, it goes through
    small = make_intent(qty=0.19)
    assert (await outcome(bus, small)).to_state is S.FILLED


async def test_limit_entry_counts_at_the_higher_of_limit_and_mark(
    bus, sim, router_factory, risk_factory, entry_factory
):
    """Mark 50,000, cap 10,000: a buy limit above the mark counts at its limit, one below at the mark."""
    await capped_stack(router_factory, risk_factory, entry_factory)
    above = dict(order_type="limit", price=52_000.0, qty=0.197)  # 9,850 at the mark, 10,244 at the limit
    below = dict(order_type="limit", price=48_000.0, qty=0.205)  # 9,840 at the limit, 10,250 at the mark
    fits = dict(order_type="limit", price=48_000.0, qty=0.197)  # 9,850 at the mark: rests on the book
    # the entry service
    d = await decided(bus, sig("above", **above))
    assert not d.accepted and d.reason == "notional_cap:10244.00>10000"
    d = await decided(bus, sig("below", **below))
    assert not d.accepted and d.reason == "notional_cap:10250.00>10000"
    d = await decided(bus, sig("fits", **fits))
    assert d.accepted, d.reason
    (sent,) = bus.tap.of(OrderIntent, bucket=Bucket.ENTRY)
    assert (await bus.tap.wait_for(lambda: settled(bus.tap, sent))).to_state is S.ACKED
    # the router, for intents that bypass the entry service
    for kw, reason in ((above, "notional_cap:10244.00>10000"), (below, "notional_cap:10250.00>10000")):
        intent = make_intent(**kw)
        t = await outcome(bus, intent)
        assert (t.to_state, t.reason) == (S.BLOCKED, reason)
        assert creates(sim, intent.client_order_id) == []
    assert [o["clientOrderId"] for o in sim.state()["orders"]] == [sent.client_order_id]


async def test_unreadable_mark_refuses_entries_while_exits_and_stops_flow(
    bus, sim, router_factory, risk_factory, entry_factory
):
    """premiumIndex answers 503: no mark, no entry (entry: mark_price_unavailable, router:
    notional_unknown); a reduce-only exit and a stop never need one."""
    sim.add_fault(kind="http_error", method="GET", path=PREMIUM_INDEX, count=None, status=503)
    await capped_stack(router_factory, risk_factory, mark_cache_sec=0.2, mark_max_stale_sec=0.5)
    await entry_factory(guard=KNOBS, price_cache_sec=0.2, price_max_stale_sec=0.5)
    d = await decided(bus, sig("no-mark", ref_price=50_000.0))
    assert not d.accepted and d.reason == "mark_price_unavailable"
    direct = make_intent(qty=0.01, notional_usdt=500.0)
    t = await outcome(bus, direct)
    assert (t.to_state, t.reason) == (S.BLOCKED, "notional_unknown")
    assert creates(sim, direct.client_order_id) == []
    assert len(mark_reads(sim)) >= 2  # both services asked the venue, and were refused
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.05, px)
    stop = stop_intent("sell", round(px * 0.9, 1), qty=None)
    assert (await outcome(bus, stop)).to_state is S.ACKED
    exit_ = make_intent(Bucket.EXIT, side="sell", qty=0.05)
    assert (await outcome(bus, exit_)).to_state is S.FILLED
    assert sim.position(BTC_ID) == 0
    # the venue answers again: entries resume
    sim.clear_faults()
    await asyncio.sleep(0.3)  # past the services' no-retry window after a failed read
    d = await decided(bus, sig("mark-back"))
    assert d.accepted, d.reason
    entry = next(i for i in bus.tap.of(OrderIntent, bucket=Bucket.ENTRY) if i.signal_id == "mark-back")
    await bus.tap.wait_for(lambda: settled(bus.tap, entry, S.FILLED))


async def test_router_reads_the_mark_once_for_a_burst_of_entries(bus, sim, router_factory):
    """Hot path: a cached mark costs no venue round trip per entry. Two symbols (below BULK_FROM) are
    read one by one (premiumIndex with a symbol, weight 1 each; without one it weighs 10): BTC's read,
    then ETH's first read, which refreshes BTC with it."""
    await router_factory(mark_cache_sec=30.0, mark_max_stale_sec=60.0)
    intents = [make_intent(qty=0.001) for _ in range(5)] + [
        make_intent(symbol=ETH, qty=0.01) for _ in range(5)
    ]
    for i in intents:
        await bus.publish(i)
    for i in intents:
        await bus.tap.wait_for(lambda i=i: settled(bus.tap, i, S.FILLED))
    reads = mark_reads(sim)
    assert len(reads) <= 3 and all("symbol" in r["params"] for r in reads), reads


async def test_router_rereads_a_stale_mark_before_the_cap(bus, sim, router_factory, risk_factory):
    """A mark older than ROUTER_MARK_MAX_STALE_SEC is read again before use: the cap sees the move."""
    await capped_stack(router_factory, risk_factory, mark_cache_sec=0.1, mark_max_stale_sec=0.3)
    first = make_intent(qty=0.19)  # 9,500 at 50,000
    assert (await outcome(bus, first)).to_state is S.FILLED
    sim.set_price(BTC_ID, 60_000.0)
    await asyncio.sleep(0.4)
    second = make_intent(qty=0.19)  # 11,400 at 60,000
    t = await outcome(bus, second)
    assert (t.to_state, t.reason) == (S.BLOCKED, "notional_cap:11400.00>10000")


async def test_symbol_the_venue_does_not_list_gets_no_mark(
    bus, sim, router_factory, risk_factory, entry_factory
):
    """A symbol the venue does not price gets no mark (no guess): refused by the entry service and
    blocked by the router, each asking the venue about it once, not once per entry."""
    await capped_stack(router_factory, risk_factory, entry_factory)
    for signal_id, symbol in (("btc", BTC), ("eth", ETH)):
        assert (await decided(bus, sig(signal_id, symbol=symbol))).accepted
    d = await decided(bus, sig("unlisted", symbol=UNLISTED, ref_price=0.1))
    assert not d.accepted and d.reason == "mark_price_unavailable"
    direct = make_intent(symbol=UNLISTED, qty=1.0, notional_usdt=0.1)
    t = await outcome(bus, direct)
    assert (t.to_state, t.reason) == (S.BLOCKED, "notional_unknown")
    assert creates(sim, direct.client_order_id) == []
    again = make_intent(symbol=UNLISTED, qty=1.0, notional_usdt=0.1)
    assert (await outcome(bus, again)).reason == "notional_unknown"
    unlisted = [r for r in mark_reads(sim) if r["params"].get("symbol") not in ("BTCUSDT", "ETHUSDT")]
    assert len(unlisted) <= 2, unlisted  # one per service
