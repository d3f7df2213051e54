"""Chaos: kill -9 and restart services and nats-server mid-flight; the invariants must hold.

Every service, the simulator and nats-server run as separate processes, as in
``make run``. Final assertions read the journal (the durable truth) and the
venue: no intent lost, no duplicate order, protection restored within the TTL.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from libs.common.ids import Bucket
from libs.common.messages import (
    GuardKnobs,
    KillSwitchEvent,
    OrderTransition,
    ProtectionGap,
    RebuildSummary,
    SignalDecision,
)
from libs.common.state_machine import TERMINAL_ORDER_STATES, OrderState
from tests.chaos.harness import (
    BTC,
    FAIL_SAFE,
    ChaosStack,
    assert_no_duplicates,
    entry_cid,
    filled_or_refused_fail_safe,
    running,
    send_signal,
    trades_again,
    venue_orders_by_client_id,
    wait_entry,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


@pytest.fixture
async def chaos():
    async with running(ChaosStack()) as c:
        yield c


async def test_router_killed_mid_submit_no_duplicate_no_loss(chaos: ChaosStack):
    c = chaos
    c.sim.add_fault(kind="timeout_after_accept", method="POST", path="/fapi/v1/order", count=1, delay_ms=3000)
    await send_signal(c, "k1")
    cid = entry_cid("k1")
    await wait_entry(c, "k1", OrderState.SUBMITTING)
    await asyncio.to_thread(c.kill, "router")  # SIGKILL while the venue holds the order
    await asyncio.to_thread(c.restart, "router")
    await wait_entry(c, "k1")
    posts = [
        r
        for r in c.sim.requests_log()
        if r["method"] == "POST" and r["params"].get("newClientOrderId") == cid
    ]
    assert len(posts) == 1
    assert_no_duplicates(c)
    timelines = await c.wait_journal(
        lambda t: any(x.client_order_ids & {cid} and x.state is OrderState.FILLED for x in t.values())
    )
    entry = next(x for x in timelines.values() if cid in x.client_order_ids)
    # the journal shows the crash: the new router found it SUBMITTING and picked it up from there
    reasons = [e.msg.reason for e in entry.entries if isinstance(e.msg, OrderTransition)]
    assert "recovered at boot" in reasons, reasons


async def test_nats_server_killed_and_restarted_no_intent_lost_no_duplicate(chaos: ChaosStack):
    c = chaos
    ids = [f"n{i}" for i in range(12)]
    for sid in ids[:6]:
        await send_signal(c, sid)
    await c.tap.wait_for(
        lambda: (
            sum(
                1
                for t in c.tap.of(OrderTransition)
                if t.bucket is Bucket.ENTRY and t.to_state is OrderState.FILLED
            )
            >= 3
        )
    )
    await asyncio.to_thread(c.kill_nats)
    await asyncio.sleep(1.0)  # an outage, not a blip: every client notices
    await asyncio.to_thread(c.start_nats)  # same port, same store dir
    for sid in ids[6:]:
        await send_signal(c, sid)  # the client library reconnected; publishes retry with the same msg id
    # every signal decided; one refused only fail safe (its predecessors' stops not yet answered while
    # the bus came back, say)
    decisions = await c.wait_journal(lambda d: set(ids) <= d.keys(), within=60, read=c.decisions)
    refused = {sid: decisions[sid].reason for sid in ids if not decisions[sid].accepted}
    assert all(r.startswith(FAIL_SAFE) for r in refused.values()), refused
    wanted = {entry_cid(s) for s in ids if s not in refused}

    def all_settled(t: dict) -> bool:
        done = {cid for x in t.values() for cid in x.client_order_ids if x.state in TERMINAL_ORDER_STATES}
        return wanted <= done

    timelines = await c.wait_journal(all_settled, within=60)
    entries = [x for x in timelines.values() if x.intent and x.intent.bucket is Bucket.ENTRY]
    assert len(entries) == len(wanted)
    # an entry the router was gating at the instant the bus went away is refused (fail safe)
    assert all(filled_or_refused_fail_safe(x) for x in entries), Counter(x.state for x in entries)
    assert_no_duplicates(c)
    # exactly the filled entries reached the venue; a refused one never did
    filled = {x.intent.client_order_id for x in entries if x.state is OrderState.FILLED}
    assert {cid for cid in venue_orders_by_client_id(c) if cid in wanted} == filled
    for name in ("router", "entry", "reconciler", "risk"):
        assert c.get(name, "/readyz")["ready"], name
    await trades_again(c, "after-outage", within=30)
    assert_no_duplicates(c)


async def test_entry_down_signals_wait_in_the_stream(chaos: ChaosStack):
    c = chaos
    await asyncio.to_thread(c.kill, "entry")
    for sid in ("e1", "e2", "e3"):
        await send_signal(c, sid)
    await asyncio.to_thread(c.restart, "entry")
    wanted = {entry_cid(s) for s in ("e1", "e2", "e3")}
    await c.tap.wait_for(
        lambda: (
            wanted
            <= {t.client_order_id for t in c.tap.of(OrderTransition) if t.to_state is OrderState.FILLED}
        )
    )
    assert_no_duplicates(c)


async def test_reconciler_killed_stop_cancelled_meanwhile_repaired_after_restart(chaos: ChaosStack):
    c = chaos
    await send_signal(c, "r1")
    await wait_entry(c, "r1")
    stop = await c.tap.wait_for(
        lambda: next(
            (t for t in c.tap.of(OrderTransition, bucket=Bucket.SL) if t.to_state is OrderState.ACKED), None
        )
    )
    await asyncio.to_thread(c.kill, "reconciler")
    c.sim.cancel_behind_back("BTCUSDT", stop.client_order_id)
    # no reconcile data: risk must stop entries on its own
    trip = await c.tap.wait_for(
        lambda: [k for k in c.tap.of(KillSwitchEvent) if "stale_data" in k.newly_tripped]
    )
    assert trip
    await c.tap.wait_for(lambda: any(not k.allow_entries for k in c.tap.of(GuardKnobs)))
    await asyncio.to_thread(c.restart, "reconciler")
    (rb,) = await c.tap.wait_for(lambda: c.tap.of(RebuildSummary))
    assert rb.positions == {BTC: 0.01}
    closed = await c.tap.wait_for(lambda: [g for g in c.tap.of(ProtectionGap) if g.state == "closed"])
    assert closed[0].age_sec < 5.0  # unprotected time after the rebuild stays under the TTL
    stops = [o for o in c.sim.state()["algo_orders"] if o["algoStatus"] == "NEW"]
    assert len(stops) == 1 and stops[0]["closePosition"]
    await c.tap.wait_for(lambda: c.tap.of(GuardKnobs) and c.tap.of(GuardKnobs)[-1].allow_entries)


async def test_risk_killed_halt_survives_and_entries_fail_safe(chaos: ChaosStack):
    import httpx

    c = chaos
    async with httpx.AsyncClient() as client:
        r = await client.post(
            c.url("risk", "/halt"),
            json={"reason": "chaos drill"},
            headers={"Authorization": "Bearer chaos-token"},
            timeout=5,
        )
    assert r.status_code == 200
    await asyncio.to_thread(c.kill, "risk")
    await send_signal(c, "while-risk-down")
    cid = entry_cid("while-risk-down")
    await asyncio.to_thread(c.restart, "risk")
    knobs = c.get("risk", "/guard")["knobs"]
    assert knobs["allow_entries"] is False and knobs["manual_reason"] == "api: chaos drill"
    await send_signal(c, "after-restart")
    await c.tap.wait_for(lambda: len(c.tap.of(SignalDecision)) >= 2)
    assert all(not d.accepted for d in c.tap.of(SignalDecision))
    assert cid not in venue_orders_by_client_id(c)
