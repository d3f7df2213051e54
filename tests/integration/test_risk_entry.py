"""Risk (kill switch, belief controller, halt API) and the guarded entry service, end to end."""

from __future__ import annotations

import httpx
import pytest

from libs.common.config import GuardSettings, KillSettings
from libs.common.ids import Bucket
from libs.common.messages import (
    GuardKnobs,
    HaltCommand,
    KillSwitchEvent,
    OrderIntent,
    OrderRetry,
    OrderTransition,
    ProtectionGap,
    RepairAction,
    Signal,
    SignalDecision,
    Stage1GapAssertion,
)
from libs.common.state_machine import OrderState
from tests.conftest import ADMIN_TOKEN
from tests.integration.helpers import BTC, BTC_ID, make_intent, settled, stop_intent

pytestmark = pytest.mark.integration

S = OrderState
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def url(svc, path: str) -> str:
    return f"http://127.0.0.1:{svc.bound_port}{path}"


async def post(svc, path: str, body: dict | None = None, headers: dict | None = None) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.post(url(svc, path), json=body, headers=headers or {})


def decision(tap, signal_id: str) -> SignalDecision | None:
    return next(iter(tap.of(SignalDecision, signal_id=signal_id)), None)


def sig(signal_id: str, **kw) -> Signal:
    return Signal(**{"signal_id": signal_id, "symbol": BTC, "side": "buy", "qty": 0.01, **kw})


async def place_orphan(sim, cid: str = "manual_orphan") -> None:
    from libs.venue.client import make_exchange

    ex = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret")
    try:
        await ex.create_order(BTC, "limit", "buy", 0.01, 48_000.0, {"clientOrderId": cid})
    finally:
        await ex.close()


# ----------------------------------------------------------------------------- halt API


async def test_halt_and_resume_api(bus, sim, risk_factory, entry_factory, router_factory):
    await router_factory(guard=GuardSettings(require_knobs=True))
    risk = await risk_factory()
    entry = await entry_factory(guard=GuardSettings(require_knobs=True))
    assert (await post(risk, "/halt", {"reason": "x"})).status_code == 401
    assert (
        await post(risk, "/halt", {"reason": "maintenance"}, {"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (await post(risk, "/halt", {}, AUTH)).status_code == 422
    r = await post(risk, "/halt", {"reason": "exchange maintenance"}, AUTH)
    assert r.status_code == 200 and r.json()["allow_entries"] is False and r.json()["mode"] == "halted"
    await entry.guard.wait_until(lambda k: k is not None and not k.allow_entries)
    (cmd,) = await bus.tap.wait_for(lambda: bus.tap.of(HaltCommand))
    assert (cmd.action, cmd.reason, cmd.source) == ("halt", "exchange maintenance", "api")
    await bus.publish(sig("h1"))
    d = await bus.tap.wait_for(lambda: decision(bus.tap, "h1"))
    assert not d.accepted and d.reason == "entries_blocked:halted"
    async with httpx.AsyncClient() as c:
        guard = (await c.get(url(risk, "/guard"))).json()
    assert guard["manual_halt"] is True and guard["knobs"]["manual_reason"] == "api: exchange maintenance"
    r = await post(risk, "/resume", {"reason": "maintenance over"}, AUTH)
    assert r.json()["allow_entries"] is True
    await entry.guard.wait_until(lambda k: k is not None and k.allow_entries)
    await bus.publish(sig("h2"))
    d = await bus.tap.wait_for(lambda: decision(bus.tap, "h2"))
    assert d.accepted
    knobs = bus.tap.of(GuardKnobs)
    assert [k.allow_entries for k in knobs][-2:] == [False, True]  # every change journaled


async def test_halt_api_disabled_without_token(risk_factory):
    risk = await risk_factory(admin_token=None)
    r = await post(risk, "/halt", {"reason": "maintenance"}, AUTH)
    assert r.status_code == 503 and "RISK_ADMIN_TOKEN" in r.text


async def test_manual_halt_survives_a_risk_restart(bus, risk_factory):
    first = await risk_factory()
    await post(first, "/halt", {"reason": "investigating"}, AUTH)
    await first.stop()
    second = await risk_factory()
    assert second.published is not None and not second.published.allow_entries
    assert second.published.manual_reason == "api: investigating"


# ----------------------------------------------------------------------------- kill switch


async def test_mismatch_storm_trips_kill_switch_entries_stop_exits_and_repairs_flow(
    bus, sim, router_factory, reconciler_factory, risk_factory, entry_factory
):
    await router_factory(guard=GuardSettings(require_knobs=True))
    risk = await risk_factory(
        kill=KillSettings(reconcile_mismatch_streak_max=3, reconcile_mismatch_halt_sec=60)
    )
    entry = await entry_factory(guard=GuardSettings(require_knobs=True))
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, 0.03, px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=None)
    await bus.publish(sl)
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED))
    await reconciler_factory()
    await place_orphan(sim)  # an order nobody tracks: a mismatch every tick
    trip = await bus.tap.wait_for(lambda: [k for k in bus.tap.of(KillSwitchEvent) if k.tripped])
    assert "reconcile_mismatch_storm" in trip[0].newly_tripped and trip[0].mismatch_streak >= 3
    knobs = await risk.wait_published(lambda k: not k.allow_entries)
    assert "reconcile_mismatch_storm" in knobs.kill_reasons
    await entry.guard.wait_until(lambda k: k is not None and not k.allow_entries)
    # entries stop
    await bus.publish(sig("storm-entry"))
    d = await bus.tap.wait_for(lambda: decision(bus.tap, "storm-entry"))
    assert not d.accepted and d.reason.startswith("entries_blocked")
    direct = make_intent()  # even an entry intent that bypasses the entry service is refused by the router
    await bus.publish(direct)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, direct))
    assert t.to_state is S.BLOCKED
    # exits go through
    exit_ = make_intent(Bucket.EXIT, side="sell", qty=0.01)
    await bus.publish(exit_)
    await bus.tap.wait_for(lambda: settled(bus.tap, exit_, S.FILLED))
    # and so do stop repairs
    sim.cancel_behind_back(BTC_ID, sl.client_order_id)
    (placed,) = await bus.tap.wait_for(
        lambda: [r for r in bus.tap.of(RepairAction) if r.action == "place_stop"]
    )
    repaired = next(i for i in bus.tap.of(OrderIntent) if i.client_order_id == placed.client_order_id)
    await bus.tap.wait_for(lambda: settled(bus.tap, repaired, S.ACKED))


async def test_stale_reconcile_data_trips_and_fresh_data_releases(bus, sim, risk_factory, reconciler_factory):
    risk = await risk_factory(kill=KillSettings(stale_data_sec=1.0))
    knobs = await risk.wait_published(lambda k: "stale_data" in k.kill_reasons)
    assert not knobs.allow_entries
    await reconciler_factory()
    knobs = await risk.wait_published(lambda k: k.allow_entries)
    assert knobs.kill_reasons == []


async def test_api_error_rate_trips(bus, sim, router_factory, risk_factory):
    await router_factory(retry_max_attempts=4)
    risk = await risk_factory(kill=KillSettings(api_error_max=5, stale_data_sec=3600))
    sim.add_fault(kind="http_error", method="POST", path="/fapi/v1/order", count=None, status=429)
    for _ in range(2):
        await bus.publish(make_intent(Bucket.EXIT, side="sell"))
    knobs = await risk.wait_published(lambda k: "api_errors" in k.kill_reasons)
    assert not knobs.allow_entries


async def test_venue_rejections_count_as_api_errors(bus, sim, router_factory, risk_factory):
    """Risk's consumer takes only REJECTED / FAILED transitions (their state is in the subject): the
    rejections still reach it. Fails if its filter left REJECTED out."""
    await router_factory()
    risk = await risk_factory(kill=KillSettings(api_error_max=3, stale_data_sec=3600))
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path="/fapi/v1/order",
        count=None,
        code=-1111,
        msg="Precision is over the maximum defined for this asset.",
    )
    for _ in range(4):
        await bus.publish(make_intent(Bucket.EXIT, side="sell"))
    knobs = await risk.wait_published(lambda k: "api_errors" in k.kill_reasons)
    assert not knobs.allow_entries
    assert not bus.tap.of(OrderRetry)  # fatal: no retries, so the transitions alone tripped it


async def test_belief_controller_tightens_with_persistence_and_recovers_with_hysteresis(
    bus, sim, reconciler_factory, risk_factory
):
    risk = await risk_factory(
        kill=KillSettings(reconcile_mismatch_streak_max=1000), tighten_after=2, recover_after=2
    )
    rec = await reconciler_factory(summary_heartbeat_sec=0.3)
    await place_orphan(sim, "orphan_ctl")
    knobs = await risk.wait_published(lambda k: k.mode == "halted")
    first_tight = next(k for k in bus.tap.of(GuardKnobs) if k.mode != "normal")
    assert first_tight.belief_debt >= 1 and "tighten" in first_tight.reason  # after persistence, with its why
    assert knobs.controller_mode == "halted" and knobs.belief_debt and knobs.debt_inputs["orphans"] >= 1
    assert not knobs.allow_entries and knobs.kill_reasons == []
    sim.cancel_behind_back(BTC_ID, "orphan_ctl")
    await rec.wait_ticks(1)
    knobs = await risk.wait_published(lambda k: k.mode == "normal", within_sec=30)
    await bus.tap.wait_for(lambda: bus.tap.of(GuardKnobs)[-1].mode == "normal")
    modes = [k.mode for k in bus.tap.of(GuardKnobs)]
    modes = [m for i, m in enumerate(modes) if i == 0 or m != modes[i - 1]]
    tail = modes[len(modes) - 1 - modes[::-1].index("halted") :]
    assert tail == ["halted", "defensive", "cautious", "normal"]  # one step at a time


# ----------------------------------------------------------------------------- entry knobs


async def test_entry_applies_every_knob(bus, sim, router_factory, risk_factory, entry_factory):
    await router_factory()
    await risk_factory(min_entry_conf=0.6, entry_cooldown_sec=3600, max_notional_usdt=1000, max_open_orders=1)
    entry = await entry_factory(guard=GuardSettings(require_knobs=True))
    await entry.guard.wait_until(lambda k: k is not None and k.min_entry_conf == 0.6)
    cases = [
        (sig("low-conf", confidence=0.5), "confidence_below_floor"),
        (sig("too-big", qty=1.0), "notional_cap"),  # 50k > 1k
        (sig("ok-1", confidence=0.9, order_type="limit", price=48_000.0), ""),  # rests: an open entry
        (sig("cooldown", confidence=0.9), "cooldown"),
        (
            Signal(signal_id="cap", symbol="ETH/USDT:USDT", side="buy", qty=0.01, confidence=0.9),
            "open_order_cap",
        ),
    ]
    for s, reason in cases:
        await bus.publish(s)
        d = await bus.tap.wait_for(lambda s=s: decision(bus.tap, s.signal_id))
        assert d.accepted is (reason == ""), (s.signal_id, d.reason)
        assert d.reason.startswith(reason)


async def test_entry_fails_safe_without_knobs(bus, sim, entry_factory):
    await entry_factory(guard=GuardSettings(require_knobs=True))  # no risk service: nothing published
    await bus.publish(sig("nobody-home"))
    d = await bus.tap.wait_for(lambda: decision(bus.tap, "nobody-home"))
    assert not d.accepted and d.reason == "guard_unavailable"


# ----------------------------------------------------------------------------- stage-1 protection


async def test_fill_gets_stage1_stop_and_take_profit(bus, sim, router_factory, entry_factory):
    await router_factory()
    await entry_factory()
    await bus.publish(sig("s1", stop_loss_price=45_000.0, take_profit_price=60_000.0))
    d = await bus.tap.wait_for(lambda: decision(bus.tap, "s1"))
    assert d.accepted, d.reason
    sl, tp = await bus.tap.wait_for(
        lambda: (
            (x := [i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1"]) and len(x) == 2 and x
        )
    )
    assert {sl.bucket, tp.bucket} == {Bucket.SL, Bucket.TP}
    stop = sl if sl.bucket is Bucket.SL else tp
    assert (
        stop.stop_price == 45_000.0 and stop.close_position and stop.parent_correlation_id == d.correlation_id
    )
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED) and settled(bus.tap, tp, S.ACKED))
    stops = [o for o in sim.state()["algo_orders"] if o["algoStatus"] == "NEW"]
    assert sorted(o["orderType"] for o in stops) == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]


async def test_second_entry_is_already_covered_by_the_close_position_stop(
    bus, sim, router_factory, entry_factory
):
    """The venue allows one close-position stop per direction (-4130): a second fill's stage-1 stop is
    moot, not a failure, and asserts no protection gap."""
    await router_factory()
    entry = await entry_factory()
    for sid in ("add1", "add2"):
        await bus.publish(sig(sid, stop_loss_price=45_000.0))
        await bus.tap.wait_for(lambda sid=sid: decision(bus.tap, sid))
        stop = await bus.tap.wait_for(
            lambda sid=sid: next(
                (
                    i
                    for i in bus.tap.of(OrderIntent)
                    if i.source == "entry.stage1"
                    and i.parent_correlation_id == decision(bus.tap, sid).correlation_id
                ),
                None,
            )
        )
        await bus.tap.wait_for(
            lambda stop=stop: settled(bus.tap, stop, S.ACKED, S.MOOT, S.REJECTED, S.FAILED)
        )
    first, second = [i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1"]
    assert settled(bus.tap, first, S.ACKED)
    moot = settled(bus.tap, second, S.MOOT)
    assert moot and moot.reason == "close_position_order_exists" and moot.code == -4130
    assert [o["clientAlgoId"] for o in sim.state()["algo_orders"] if o["algoStatus"] == "NEW"] == [
        first.client_order_id
    ]
    assert sim.position(BTC_ID) == pytest.approx(0.02)
    await entry.fills.wait_until(lambda: not entry.stops)  # nothing left waiting for protection
    assert bus.tap.of(Stage1GapAssertion) == [] and entry.counts.get("stage1_gap") is None


async def test_a_fill_learned_without_its_price_gets_its_stop_from_the_venue_mark(bus, sim, entry_factory):
    # a FILLED transition can come without an average price (a lookup or a cancel answer saying only how
    # much): stage-1 must still price the stop, from the venue's mark, not crash on a zero price
    entry = await entry_factory()
    sim.set_price(BTC_ID, 40_000.0)
    fill = make_intent(Bucket.ENTRY)
    await bus.publish(fill)
    await bus.publish(
        OrderTransition(
            correlation_id=fill.correlation_id,
            intent_id=fill.intent_id,
            client_order_id=fill.client_order_id,
            symbol=BTC,
            bucket=Bucket.ENTRY,
            side="buy",
            from_state=S.SUBMITTING,
            to_state=S.FILLED,
            filled_qty=0.01,
            avg_price=None,
        )
    )
    (stop,) = await bus.tap.wait_for(
        lambda: [
            i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1" and i.order_type == "stop_market"
        ]
    )
    assert stop.side == "sell" and stop.stop_price is not None
    expected = 40_000.0 * (1 - entry.settings.default_stop_pct)
    assert abs(stop.stop_price - expected) <= 0.001 * expected
    assert bus.tap.of(Stage1GapAssertion) == []


async def test_stage1_failure_asserts_a_gap_the_reconciler_acts_on(
    bus, sim, router_factory, entry_factory, reconciler_factory
):
    await router_factory(retry_max_attempts=1)
    await entry_factory()
    rec = await reconciler_factory(repair_cooldown_sec=0.5)
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path="/fapi/v1/algoOrder",
        count=1,
        code=-2010,
        msg="Order would immediately trigger.",
    )
    await bus.publish(sig("s2"))
    (gap,) = await bus.tap.wait_for(lambda: bus.tap.of(Stage1GapAssertion))
    assert gap.symbol == BTC and "REJECTED" in gap.reason
    opened = await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "opened"])
    assert opened[0].reason.startswith("stage1")
    await bus.tap.wait_for(lambda: [g for g in bus.tap.of(ProtectionGap) if g.state == "closed"])
    assert [o["algoStatus"] for o in sim.state()["algo_orders"]].count("NEW") == 1
    assert rec.state.gaps.gaps == {}
    fills = [t for t in bus.tap.of(OrderTransition) if t.bucket is Bucket.ENTRY and t.to_state is S.FILLED]
    assert len(fills) == 1


async def test_equity_drawdown_latches_until_resume(bus, sim, reconciler_factory, risk_factory):
    # the position stays unprotected here (no router): keep the mismatch storm out of this test
    risk = await risk_factory(kill=KillSettings(max_drawdown_pct=5.0, reconcile_mismatch_streak_max=100_000))
    await reconciler_factory()
    sim.set_position(BTC_ID, 20.0, 50_000.0)  # 1M notional on a 1M account
    await risk.consumer.wait_until(lambda: risk.kill.peak_equity == 1_000_000)
    sim.set_price(BTC_ID, 47_000.0)  # -60k unrealised: 6% below the peak
    knobs = await risk.wait_published(lambda k: "equity_drawdown" in k.kill_reasons)
    assert not knobs.allow_entries
    sim.set_price(BTC_ID, 50_000.0)  # recovered: still latched, money was lost once
    await risk.consumer.wait_until(lambda: risk.last_summary.equity == 1_000_000)
    await risk.evaluate()
    assert "equity_drawdown" in risk.published.kill_reasons
    await post(risk, "/resume", {"reason": "reviewed the drawdown"}, AUTH)
    knobs = await risk.wait_published(lambda k: k.allow_entries)
    assert knobs.kill_reasons == []
