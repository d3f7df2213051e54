"""Idempotent cancel with fetch cross-check, and the bounded cancel/replace machine."""

from __future__ import annotations

import pytest

from libs.common.ids import Bucket
from libs.common.messages import CancelReplaceGiveup, CancelResult, ReplaceTransition
from libs.common.state_machine import OrderState, ReplaceState
from tests.integration.helpers import (
    BTC_ID,
    cancel_for,
    make_intent,
    path_of,
    replace_for,
    retries,
    settled,
    stop_intent,
)

pytestmark = pytest.mark.integration

S = OrderState
R = ReplaceState


def cancel_result(tap, intent) -> CancelResult | None:
    return next(iter(tap.of(CancelResult, client_order_id=intent.client_order_id)), None)


async def resting_limit(bus, sim):
    intent = make_intent(order_type="limit", price=round(sim.price(BTC_ID) * 0.97, 1))
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    return intent


async def test_cancel_open_order(bus, sim, router_factory):
    await router_factory()
    intent = await resting_limit(bus, sim)
    await bus.publish(cancel_for(intent))
    r = await bus.tap.wait_for(lambda: cancel_result(bus.tap, intent))
    assert r.outcome == "canceled"
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.CANCELED))
    assert path_of(bus.tap, intent)[-3:] == ["ACKED", "CANCEL_PENDING", "CANCELED"]


async def test_cancel_unknown_order_is_idempotent_success(bus, sim, router_factory):
    await router_factory()
    never_sent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(cancel_for(never_sent))
    r = await bus.tap.wait_for(lambda: cancel_result(bus.tap, never_sent))
    assert (r.outcome, r.code) == ("already_gone", -2011)


async def test_cancel_twice_is_idempotent(bus, sim, router_factory):
    await router_factory()
    intent = await resting_limit(bus, sim)
    await bus.publish(cancel_for(intent), "c1")
    await bus.publish(cancel_for(intent), "c2")
    rs = await bus.tap.wait_for(
        lambda: (x := bus.tap.of(CancelResult, client_order_id=intent.client_order_id)) and len(x) == 2 and x
    )
    assert [r.outcome for r in rs] == ["canceled", "already_gone"]


async def test_unknown_order_while_still_open_is_a_conflict_not_success(bus, sim, router_factory):
    """-2011 from cancel while a fetch shows the order open: retry the cancel, do not report it gone."""
    await router_factory()
    intent = await resting_limit(bus, sim)
    sim.add_fault(
        kind="binance_error",
        method="DELETE",
        path="/fapi/v1/order",
        count=1,
        code=-2011,
        msg="Unknown order sent.",
    )
    await bus.publish(cancel_for(intent))
    r = await bus.tap.wait_for(lambda: cancel_result(bus.tap, intent))
    assert r.outcome == "canceled"
    (retry,) = retries(bus.tap, intent, "cancel")
    assert retry.code == -2011 and retry.policy == "idempotent_safe"
    assert [o["status"] for o in sim.state()["orders"] if o["clientOrderId"] == intent.client_order_id] == [
        "CANCELED"
    ]


async def test_fill_on_cancel_race_reports_filled(bus, sim, router_factory):
    await router_factory()
    intent = await resting_limit(bus, sim)
    sim.add_fault(kind="fill_on_cancel", method="DELETE", path="/fapi/v1/order", count=1)
    await bus.publish(cancel_for(intent))
    r = await bus.tap.wait_for(lambda: cancel_result(bus.tap, intent))
    assert r.outcome == "filled" and r.status == "FILLED"
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))
    assert path_of(bus.tap, intent)[-2:] == ["CANCEL_PENDING", "FILLED"]


# ----------------------------------------------------------------------------- cancel/replace


async def open_stop(bus, sim, qty=0.01):
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, amount=qty, entry_price=px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=qty)
    await bus.publish(sl)
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED))
    return sl, px


def open_stops(sim) -> list[dict]:
    return [o for o in sim.state()["algo_orders"] if o["algoStatus"] == "NEW"]


def replace_states(tap, old) -> list[str]:
    ts = tap.of(ReplaceTransition, old_client_order_id=old.client_order_id)
    return [ts[0].from_state.value, *(t.to_state.value for t in ts)] if ts else []


async def test_replace_stop(bus, sim, router_factory):
    await router_factory()
    old, px = await open_stop(bus, sim)
    new = stop_intent("sell", round(px * 0.95, 1), qty=0.01, key=old.intent_id, generation=1)
    assert new.client_order_id != old.client_order_id and len(new.client_order_id) == len(old.client_order_id)
    await bus.publish(replace_for(old, new))
    await bus.tap.wait_for(lambda: R.DONE.value in replace_states(bus.tap, old))
    assert replace_states(bus.tap, old) == ["INTENT_CREATED", "DONE"]
    stops = open_stops(sim)
    assert [s["clientAlgoId"] for s in stops] == [new.client_order_id]  # exactly one stop, the new one


async def test_replace_after_fill_after_cancel_places_nothing(bus, sim, router_factory):
    await router_factory()
    old, px = await open_stop(bus, sim)
    sim.add_fault(kind="fill_after_cancel_ack", method="DELETE", path="/fapi/v1/algoOrder", count=1)
    new = stop_intent("sell", round(px * 0.95, 1), qty=0.01, key=old.intent_id, generation=1)
    await bus.publish(replace_for(old, new))
    await bus.tap.wait_for(lambda: R.DONE.value in replace_states(bus.tap, old))
    assert replace_states(bus.tap, old) == ["INTENT_CREATED", "FILLED_AFTER_CANCEL", "DONE"]
    assert open_stops(sim) == []
    assert not [r for r in sim.requests_log() if r["params"].get("clientAlgoId") == new.client_order_id]


async def test_replace_gives_up_when_cancel_never_confirms(bus, sim, router_factory):
    await router_factory(cancel_replace_max_attempts=3, retry_max_attempts=2)
    old, px = await open_stop(bus, sim)
    sim.add_fault(kind="http_error", method="DELETE", path="/fapi/v1/algoOrder", count=None, status=503)
    new = stop_intent("sell", round(px * 0.95, 1), qty=0.01, key=old.intent_id, generation=1)
    await bus.publish(replace_for(old, new))
    (g,) = await bus.tap.wait_for(
        lambda: bus.tap.of(CancelReplaceGiveup, old_client_order_id=old.client_order_id)
    )
    assert g.attempts == 3 and g.state is R.CANCEL_SENT_UNKNOWN
    assert replace_states(bus.tap, old) == [
        "INTENT_CREATED",
        "CANCEL_SENT_UNKNOWN",
        "CANCEL_SENT_UNKNOWN",
        "CANCEL_SENT_UNKNOWN",
        "GIVE_UP",
    ]
    # the old stop is still there and no second stop was placed: never two, never none
    assert [s["clientAlgoId"] for s in open_stops(sim)] == [old.client_order_id]


async def test_replace_race_old_stop_still_open(bus, sim, router_factory):
    await router_factory(cancel_replace_max_attempts=3, retry_max_attempts=2)
    old, px = await open_stop(bus, sim)
    # cancel "succeeds" with unknown-order, but the stop is still open: REPLACE_RACE, then a real cancel
    sim.add_fault(
        kind="binance_error",
        method="DELETE",
        path="/fapi/v1/algoOrder",
        count=2,
        code=-2011,
        msg="Unknown order sent.",
    )
    new = stop_intent("sell", round(px * 0.95, 1), qty=0.01, key=old.intent_id, generation=1)
    await bus.publish(replace_for(old, new))
    await bus.tap.wait_for(
        lambda: (
            R.DONE.value in replace_states(bus.tap, old) or R.GIVE_UP.value in replace_states(bus.tap, old)
        )
    )
    assert replace_states(bus.tap, old) == ["INTENT_CREATED", "REPLACE_RACE", "DONE"]
    assert [s["clientAlgoId"] for s in open_stops(sim)] == [new.client_order_id]


async def test_exit_and_stop_buckets_use_reduce_only(bus, sim, router_factory):
    await router_factory()
    old, _ = await open_stop(bus, sim)
    posted = [
        r
        for r in sim.requests_log()
        if r["params"].get("clientAlgoId") == old.client_order_id and r["method"] == "POST"
    ]
    assert posted and posted[0]["params"].get("reduceOnly") == "true"
    assert old.bucket is Bucket.SL
