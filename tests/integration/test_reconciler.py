"""Reconciler against real NATS + simulator + ccxt: repairs, gaps, drift, rebuild."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client import REGISTRY

from libs.common.config import BootSettings, GuardSettings, KillSettings
from libs.common.ids import Bucket
from libs.common.messages import (
    CancelResult,
    HaltCommand,
    MismatchEvent,
    OrderIntent,
    OrderTransition,
    PositionBeliefTransition,
    ProtectionGap,
    RebuildSummary,
    ReconcileSummary,
    RepairAction,
    ReplaceIntent,
    Signal,
)
from libs.common.protection import trailing_stop
from libs.common.state_machine import OrderState
from tests.conftest import ADMIN_TOKEN
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
    # the emergency exit would end this gap by closing the position: here the breach itself is under test
    rec = await reconciler_factory(repair_cooldown_sec=1.0, protection_gap_ttl_sec=1.5, emergency_exit=False)
    breach = await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "breached"])
    assert breach[0].critical and breach[0].age_sec > 1.5
    s = await rec.wait_ticks(3)
    assert s.gap_breaches == 1 and s.mismatch_streak >= 3
    # the alert's per-symbol series names the symbol while the breach lasts, and goes with it
    assert REGISTRY.get_sample_value("erl_protection_gap_breached_symbol", {"symbol": BTC}) == 1
    assert [m for m in bus.tap.of(MismatchEvent, mismatch="gap_ttl_breach") if m.critical]
    attempts = len(repairs(bus.tap, "place_stop"))
    assert 1 <= attempts <= 4  # ~1 per cooldown, not one per 0.2 s tick
    sim.clear_faults()
    await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "closed"])
    s = await rec.wait_ticks(2)
    assert s.gap_breaches == 0 and s.mismatch_streak == 0 and len(open_stops(sim)) == 1
    assert REGISTRY.get_sample_value("erl_protection_gap_breached_symbol", {"symbol": BTC}) is None


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
    from libs.venue.client import make_exchange

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


# ----------------------------------------------------------------------------- protection belongs to the position


def open_protection(sim, symbol=BTC_ID) -> list[str]:
    """Client ids of every protective order resting on the venue for ``symbol``."""
    st = sim.state()
    algos = [
        a["clientAlgoId"] for a in st["algo_orders"] if a["algoStatus"] == "NEW" and a["symbol"] == symbol
    ]
    regular = [
        o["clientOrderId"]
        for o in st["orders"]
        if o["status"] in ("NEW", "PARTIALLY_FILLED") and o["symbol"] == symbol and o["reduceOnly"]
    ]
    return algos + regular


async def test_protection_left_resting_when_the_position_goes_flat_is_cancelled(
    bus, sim, router_factory, reconciler_factory
):
    from libs.common.telemetry import LEFTOVER_CANCELS

    await router_factory()
    # the venue leaves close-position orders resting when the position goes flat: clean-up is ours
    sim.add_fault(kind="keep_protection", symbol=BTC_ID, count=None)
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.02, px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=None)
    tp = make_intent(Bucket.TP, side="sell", order_type="limit", price=round(px * 1.04, 1), qty=0.02)
    trail = trailing_stop(
        symbol=BTC,
        position_side="buy",
        qty=0.02,
        callback_rate=2.0,
        activation_price=None,
        ref_price=px,
        source="test",
        id_scope="test",
        key=uuid.uuid4().hex,
    )
    for i in (sl, tp, trail):
        await bus.publish(i)
    await bus.tap.wait_for(lambda: all(settled(bus.tap, i, S.ACKED) for i in (sl, tp, trail)))
    mine = {sl.client_order_id, tp.client_order_id, trail.client_order_id}
    assert set(open_protection(sim)) == mine
    rec = await reconciler_factory()
    await rec.wait_ticks(3)
    assert repairs(bus.tap, "cancel_leftover") == []  # never while the position is open
    before = LEFTOVER_CANCELS._value.get()

    sim.set_position(BTC_ID, 0.0)  # closed (say by hand): the stop, the TP and the trailing stop stay behind
    assert set(open_protection(sim)) == mine
    cancelled = await bus.tap.wait_for(
        lambda: (
            {r.client_order_id for r in repairs(bus.tap, "cancel_leftover")} == mine
            and all(settled(bus.tap, i, S.CANCELED) for i in (sl, tp, trail))
        )
    )
    assert cancelled and open_protection(sim) == []
    assert {c.client_order_id for c in bus.tap.of(CancelResult) if c.outcome == "canceled"} == mine
    assert LEFTOVER_CANCELS._value.get() - before == 3
    s = await rec.wait_ticks(3)
    assert len(repairs(bus.tap, "cancel_leftover")) == 3  # asked once each
    assert not bus.tap.of(MismatchEvent, mismatch="missing_order")  # our own clean-up is no surprise
    assert s.mismatch_streak == 0 and rec.belief.open_orders() == []


async def test_stale_close_position_stop_from_a_closed_position_is_replaced_for_the_next_one(
    bus, sim, router_factory, entry_factory, reconciler_factory
):
    """The reproduced bug: a close-position stop left from a closed position (51% below the new entry)
    was counted as protection for the next position; the new stage-1 stop went MOOT (-4130: one
    close-position stop per direction) and the user's --stop-loss was silently dropped. Now the router
    puts the new stop in the stale one's place, and the reconciler finds nothing to fix."""
    await router_factory()
    await entry_factory()
    sim.add_fault(kind="keep_protection", symbol=BTC_ID, count=None)
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.02, px)
    old = stop_intent("sell", round(px * 0.49, 1), qty=None)
    await bus.publish(old)
    await bus.tap.wait_for(lambda: settled(bus.tap, old, S.ACKED))
    sim.set_position(BTC_ID, 0.0)  # that position is gone; its stop is not (nobody watched it go flat)
    assert [s["clientAlgoId"] for s in open_stops(sim)] == [old.client_order_id]

    wanted = round(px * 0.97, 1)  # the user's --stop-loss for the next position
    await bus.publish(
        Signal(signal_id=uuid.uuid4().hex, symbol=BTC, side="buy", qty=0.01, stop_loss_price=wanted)
    )
    stage1 = await bus.tap.wait_for(
        lambda: next((i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1"), None)
    )
    t = await bus.tap.wait_for(lambda: settled(bus.tap, stage1, S.MOOT, S.ACKED, S.REJECTED))
    assert t.to_state is S.ACKED  # the -4130 led to replacing the stale stop, not to MOOT
    (stop,) = open_stops(sim)  # exactly one live stop for the long, at the user's price
    assert (stop["clientAlgoId"], stop["side"], float(stop["triggerPrice"])) == (
        stage1.client_order_id,
        "SELL",
        wanted,
    )
    rec = await reconciler_factory()
    s = await rec.wait_ticks(3)
    assert s.open_gaps == 0 and repairs(bus.tap, "move_stop") == []
    assert not bus.tap.of(MismatchEvent, mismatch="misplaced_stop")


async def test_a_misplaced_stop_on_an_open_position_is_moved_by_the_reconciler(
    bus, sim, router_factory, reconciler_factory
):
    """The backstop: a position whose only stop is far from where its stop belongs (placed behind our
    back, or left by an older position) is not protection: the reconciler moves it."""
    from libs.venue.client import make_exchange

    await router_factory()
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.02, px)
    ex = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret")
    try:  # a stop nobody journaled: another session's, or a human's
        await ex.create_order(
            BTC,
            "market",
            "sell",
            0.0,
            None,
            {"stopLossPrice": round(px * 0.49, 1), "closePosition": True, "clientOrderId": "manualstop1"},
        )
    finally:
        await ex.close()
    rec = await reconciler_factory()
    await bus.tap.wait_for(lambda: repairs(bus.tap, "move_stop"))
    (replace,) = bus.tap.of(ReplaceIntent)
    assert replace.old_client_order_id == "manualstop1"
    assert bus.tap.of(MismatchEvent, mismatch="misplaced_stop")
    await bus.tap.wait_for(lambda: settled(bus.tap, replace.new_order, S.ACKED))
    (stop,) = open_stops(sim)  # exactly one live stop for the long, near where it belongs
    assert stop["clientAlgoId"] == replace.new_order.client_order_id
    assert abs(float(stop["triggerPrice"]) - px) / px < 0.1
    s = await rec.wait_ticks(3)
    assert s.open_gaps == 0 and len(repairs(bus.tap, "move_stop")) == 1


@pytest.mark.parametrize("code", [-2010, -2021])
async def test_emergency_exit_when_the_venue_refuses_every_stop_even_under_a_halt(
    bus, sim, router_factory, reconciler_factory, risk_factory, code
):
    """-2010: refused outright, the repairs keep failing: after the TTL the reconciler closes the position at
    market. -2021 (the trigger already crossed): the router itself closes at market instead of placing the
    stop. Either way the position is closed exactly once, and a halt never blocks it."""
    from libs.common.telemetry import EMERGENCY_EXITS

    router = await router_factory(retry_max_attempts=2, guard=GuardSettings(require_knobs=True))
    risk = await risk_factory(kill=KillSettings(stale_data_sec=3600, reconcile_mismatch_streak_max=1000))
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"http://127.0.0.1:{risk.bound_port}/halt",
            json={"reason": "exchange maintenance"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert r.status_code == 200
    await router.guard.wait_until(lambda k: k is not None and not k.allow_entries)
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path="/fapi/v1/algoOrder",
        symbol=BTC_ID,
        count=None,
        code=code,
        msg="Order would immediately trigger." if code == -2021 else "Order rejected.",
    )
    before = EMERGENCY_EXITS._value.get()
    sim.set_position(BTC_ID, 0.02, sim.price(BTC_ID))
    rec = await reconciler_factory(repair_cooldown_sec=0.5, protection_gap_ttl_sec=1.5)
    await bus.tap.wait_for(lambda: sim.position(BTC_ID) == 0 or None, within=20)
    s = await rec.wait_ticks(5)
    closes = [
        r
        for r in sim.requests_log()
        if r["method"] == "POST" and r["path"] == "/fapi/v1/order" and r["params"].get("reduceOnly")
    ]
    assert len(closes) == 1 and sim.position(BTC_ID) == 0  # closed, and only once
    exits = [i for i in bus.tap.of(OrderIntent) if i.bucket is Bucket.EXIT]
    if code == -2010:
        (exit_,) = exits
        assert exit_.source == "reconciler.emergency" and exit_.reduce_only and exit_.qty == 0.02
        assert settled(bus.tap, exit_).to_state is S.FILLED  # not BLOCKED by the halt
        (journaled,) = repairs(bus.tap, "emergency_exit")
        breach = next(g for g in bus.tap.of(ProtectionGap) if g.state == "breached")
        assert journaled.ts_ms >= breach.ts_ms and journaled.client_order_id == exit_.client_order_id
        assert (
            len(
                [t for t in bus.tap.of(OrderTransition) if t.bucket is Bucket.SL and t.to_state is S.REJECTED]
            )
            >= 2
        )
        assert EMERGENCY_EXITS._value.get() - before == 1
    else:
        assert exits == [] and repairs(bus.tap, "emergency_exit") == []
    assert s.open_gaps == 0
