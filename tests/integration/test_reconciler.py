"""Reconciler against real NATS + simulator + ccxt: repairs, gaps, drift, rebuild."""

from __future__ import annotations

import pytest

from libs.common.config import BootSettings
from libs.common.messages import (
    HaltCommand,
    MismatchEvent,
    OrderIntent,
    PositionBeliefTransition,
    ProtectionGap,
    RebuildSummary,
    ReconcileSummary,
    RepairAction,
    ReplaceIntent,
)
from libs.common.state_machine import OrderState
from tests.integration.helpers import BTC, BTC_ID, make_intent, settled, stop_intent

pytestmark = pytest.mark.integration

S = OrderState


def open_stops(sim, symbol=BTC_ID) -> list[dict]:
    return [o for o in sim.state()["algo_orders"] if o["algoStatus"] == "NEW" and o["symbol"] == symbol]


def repairs(tap, action: str) -> list[RepairAction]:
    return [r for r in tap.of(RepairAction) if r.action == action]


async def test_stop_cancelled_behind_our_back_is_repaired_within_ttl(
    bus, sim, router_factory, reconciler_factory
):
    await router_factory()
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.02, px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=None)
    await bus.publish(sl)
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED))
    rec = await reconciler_factory()
    await rec.wait_ticks(2)
    assert rec.last_summary.mismatches == 0 and rec.last_summary.open_gaps == 0
    sim.cancel_behind_back(BTC_ID, sl.client_order_id)
    (placed,) = await bus.tap.wait_for(lambda: repairs(bus.tap, "place_stop"))
    assert placed.symbol == BTC
    missing = bus.tap.of(MismatchEvent, mismatch="missing_order")
    assert missing and missing[0].client_order_id == sl.client_order_id
    repaired = next(i for i in bus.tap.of(OrderIntent) if i.client_order_id == placed.client_order_id)
    assert repaired.close_position and repaired.side == "sell" and repaired.source == "reconciler"
    assert repaired.stop_price == sl.stop_price  # the last stop we asked for is still protective: reuse it
    await bus.tap.wait_for(lambda: settled(bus.tap, repaired, S.ACKED))
    closed = await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "closed"])
    assert closed[0].age_sec < rec.settings.protection_gap_ttl_sec  # unprotected time stayed under the TTL
    assert [s["clientAlgoId"] for s in open_stops(sim)] == [repaired.client_order_id]
    assert not [g for g in bus.tap.of(ProtectionGap) if g.state == "breached"]


async def test_undersized_stop_is_refreshed_by_bounded_replace(bus, sim, router_factory, reconciler_factory):
    await router_factory()
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.01, px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=0.01)
    await bus.publish(sl)
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED))
    await reconciler_factory()
    sim.set_position(BTC_ID, 0.05, px)  # scaled in behind the stop's back: 20% covered
    (_refresh,) = await bus.tap.wait_for(lambda: repairs(bus.tap, "refresh_stop"))
    (replace,) = bus.tap.of(ReplaceIntent)
    assert replace.old_client_order_id == sl.client_order_id and replace.new_order.close_position
    await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "closed"])
    assert [s["clientAlgoId"] for s in open_stops(sim)] == [replace.new_order.client_order_id]
    assert bus.tap.of(MismatchEvent, mismatch="undersized_stop")


async def test_small_shortfall_is_left_alone_anti_churn(bus, sim, router_factory, reconciler_factory):
    await router_factory()
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.1, px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=0.1)
    await bus.publish(sl)
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED))
    rec = await reconciler_factory(min_delta_ratio=0.2, max_refresh_interval_sec=3600)
    sim.set_position(BTC_ID, 0.105, px)  # 4.8% short: below the 20% anti-churn threshold
    s = await rec.wait_ticks(5)
    assert s.repair_skipped >= 1 and s.repair_actions == 0
    assert repairs(bus.tap, "refresh_stop") == [] and repairs(bus.tap, "place_stop") == []


async def test_repair_cooldown_bounds_attempts_and_ttl_breach_is_critical(
    bus, sim, router_factory, reconciler_factory
):
    await router_factory(retry_max_attempts=1)
    sim.set_position(BTC_ID, 0.02, sim.price(BTC_ID))
    # the venue refuses every conditional order: repairs cannot land
    sim.add_fault(kind="http_error", method="POST", path="/fapi/v1/algoOrder", count=None, status=503)
    rec = await reconciler_factory(repair_cooldown_sec=1.0, protection_gap_ttl_sec=1.5)
    breach = await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "breached"])
    assert breach[0].critical and breach[0].age_sec > 1.5
    s = await rec.wait_ticks(3)
    assert s.gap_breaches == 1 and s.mismatch_streak >= 3
    assert [m for m in bus.tap.of(MismatchEvent, mismatch="gap_ttl_breach") if m.critical]
    attempts = len(repairs(bus.tap, "place_stop"))
    assert 1 <= attempts <= 4  # ~1 per cooldown, not one per 0.2 s tick
    sim.clear_faults()
    await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "closed"])
    s = await rec.wait_ticks(2)
    assert s.gap_breaches == 0 and s.mismatch_streak == 0 and len(open_stops(sim)) == 1


async def test_position_drift_on_a_quiet_symbol_is_a_mismatch_then_adopted(bus, sim, reconciler_factory):
    rec = await reconciler_factory()
    await rec.wait_ticks(1)
    sim.set_position("ETHUSDT", -1.0, 3000)  # appeared behind our back (and unprotected)
    drift = await bus.tap.wait_for(lambda: bus.tap.of(MismatchEvent, mismatch="position_drift"))
    assert drift[0].exchange_qty == -1.0 and drift[0].believed_qty == 0.0
    await bus.tap.wait_for(lambda: repairs(bus.tap, "adopt_position"))
    s = await rec.wait_ticks(2)
    assert rec.belief.position("ETH/USDT:USDT") == -1.0
    assert not [m for m in bus.tap.of(MismatchEvent, mismatch="position_drift") if m.streak > 1]
    assert s.mismatch_events >= 1
    # and the short got a buy-side stop above the market
    stop = next(i for i in bus.tap.of(OrderIntent) if i.symbol == "ETH/USDT:USDT")
    assert stop.side == "buy" and stop.stop_price > 3000
    transitions = bus.tap.of(PositionBeliefTransition, symbol="ETH/USDT:USDT")
    assert [(t.from_state.value, t.to_state.value) for t in transitions[:2]] == [
        ("FLAT", "DESYNC"),
        ("DESYNC", "OPEN_UNPROTECTED"),
    ]


async def test_orphan_order_at_boot_freezes_entries(bus, sim, reconciler_factory, risk_factory):
    from libs.common.exchange import make_exchange

    ex = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret")
    try:
        await ex.create_order(BTC, "limit", "buy", 0.01, 48_000.0, {"clientOrderId": "manual_orphan_1"})
    finally:
        await ex.close()
    risk = await risk_factory()
    await reconciler_factory(boot=BootSettings(rebuild_on_start=True, rebuild_freeze_on_orphans=True))
    (rb,) = await bus.tap.wait_for(lambda: bus.tap.of(RebuildSummary))
    assert rb.froze and [o.client_order_id for o in rb.orphans] == ["manual_orphan_1"]
    (cmd,) = await bus.tap.wait_for(lambda: bus.tap.of(HaltCommand))
    assert cmd.action == "halt" and cmd.source == "reconciler"
    knobs = await risk.wait_published(lambda k: not k.allow_entries)
    assert knobs.manual_halt and "orphan" in knobs.manual_reason


async def test_rebuild_adopts_positions_and_our_orders(bus, sim, router_factory, reconciler_factory):
    await router_factory()
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.02, px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=None)
    resting = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(sl)
    await bus.publish(resting)
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED) and settled(bus.tap, resting, S.ACKED))
    rec = await reconciler_factory(boot=BootSettings(rebuild_on_start=True, rebuild_freeze_on_orphans=True))
    (rb,) = await bus.tap.wait_for(lambda: bus.tap.of(RebuildSummary))
    assert (
        rb.positions == {BTC: 0.02} and rb.orphans == [] and not rb.froze
    )  # the resting entry is in the journal
    s = await rec.wait_ticks(2)
    assert s.mismatches == 0 and s.open_gaps == 0
    assert {o.client_order_id for o in rec.belief.open_orders()} == {
        sl.client_order_id,
        resting.client_order_id,
    }


async def test_summaries_flow_as_a_heartbeat(bus, sim, reconciler_factory):
    await reconciler_factory(summary_heartbeat_sec=0.5)
    sums = await bus.tap.wait_for(
        lambda: len(bus.tap.of(ReconcileSummary)) >= 3 and bus.tap.of(ReconcileSummary)
    )
    assert all(s.ok and s.mismatch_streak == 0 for s in sums)
    assert sums[-1].tick > sums[0].tick


async def test_unreadable_venue_publishes_not_ok(bus, sim, reconciler_factory):
    rec = await reconciler_factory()
    sim.add_fault(kind="http_error", method="GET", path="/fapi/v3/positionRisk", count=None, status=503)
    bad = await bus.tap.wait_for(lambda: [s for s in bus.tap.of(ReconcileSummary) if not s.ok])
    assert "ExchangeNotAvailable" in bad[0].error
    ok, why = rec.readiness()
    assert not ok and "venue unreadable" in why
