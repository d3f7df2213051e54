"""Entries and the router: an entry intent whose publish failed, and orders the router has not answered.

An entry intent whose publish failed: its fate is open (it may be stored without an ack), so the entry
stays open until the intent is provably stored, is stored once, and its decision is taken once.

Found by the cluster chaos test: the entry was counted open before a publish that failed while the
journal's leader was away; the redelivered signal was decided again, refused by its own open entry
(``open_order_cap:1>=1``), and that phantom blocked every later entry for good.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from libs.common.bus import BusUnavailable
from libs.common.config import GuardSettings
from libs.common.ids import Bucket
from libs.common.messages import OrderIntent, OrderTransition, Signal, SignalDecision
from libs.common.state_machine import OrderState
from tests.builders import transition
from tests.integration.helpers import BTC

pytestmark = pytest.mark.integration


def fail_entry_publishes(entry: Any, times: int, *, stored: bool) -> None:
    """The next ``times`` entry-intent publishes fail; ``stored``: after the journal stored them (the ack
    lost on the way back), else before."""
    real = entry.publisher.publish
    left = [times]

    async def publish(msg: Any, msg_id: str, **kw: Any) -> Any:
        if isinstance(msg, OrderIntent) and msg.bucket is Bucket.ENTRY and left[0] > 0:
            left[0] -= 1
            if stored:
                await real(msg, msg_id, **kw)
            raise BusUnavailable("injected: the journal's leader is away")
        return await real(msg, msg_id, **kw)

    entry.publisher.publish = publish


async def stored_copies(bus: Any, subject: str) -> int:
    info = await bus.js.stream_info(bus.settings.stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def sig(signal_id: str) -> Signal:
    return Signal(signal_id=signal_id, symbol=BTC, side="buy", qty=0.01, confidence=0.9)


@pytest.mark.parametrize(
    ("stored", "max_deliver"),
    [(False, 5), (True, 5), (False, 1), (True, 1)],
    ids=["lost-redelivered", "unacked-redelivered", "lost-dead-lettered", "unacked-dead-lettered"],
)
async def test_entry_whose_intent_publish_failed_is_sent_once_and_then_ends(
    bus, sim, router_factory, risk_factory, entry_factory, stored: bool, max_deliver: int
):
    await router_factory()
    await risk_factory(max_open_orders=1)  # the entry's own phantom would refuse every later one
    entry = await entry_factory(
        guard=GuardSettings(require_knobs=True), max_deliver=max_deliver, unsent_retry_sec=0.2
    )
    await entry.guard.wait_until(lambda k: k is not None and k.max_open_orders == 1)
    fail_entry_publishes(entry, 1, stored=stored)

    # max_deliver 1: the signal is dead-lettered on the failure and never comes again
    await bus.publish(sig("flaky"))
    d = await bus.tap.wait_for(lambda: bus.tap.of(SignalDecision, signal_id="flaky"), within=30)
    assert [x.accepted for x in d] == [True], [x.reason for x in d]  # decided once, as accepted
    cid = next(i for i in bus.tap.of(OrderIntent) if i.correlation_id == d[0].correlation_id).client_order_id
    await bus.tap.wait_for(lambda: not entry.open_entries, within=30)  # it filled: no longer open
    assert entry.counts["intent_publish_failed"] == 1 and not entry.unsent
    assert await stored_copies(bus, entry.publisher.subject(entry.entries[cid].intent)) == 1
    assert [o["status"] for o in sim.state()["orders"] if o["clientOrderId"] == cid] == ["FILLED"]

    # and the cap of one open entry lets the next one through
    await bus.publish(sig("next"))
    nxt = await bus.tap.wait_for(lambda: bus.tap.of(SignalDecision, signal_id="next"), within=30)
    assert nxt[0].accepted, nxt[0].reason


def answer(intent: OrderIntent, to: OrderState, **kw: Any) -> OrderTransition:
    """What the router would journal for ``intent`` (this test plays the router)."""
    return transition(intent, OrderState.SUBMITTING, to, **kw)


async def test_orders_waiting_for_the_router_hold_new_entries_back(bus, sim, entry_factory):
    """No router runs: the test answers. While an entry is unanswered (router_behind), or a filled entry's
    stop is (stop_waiting), a new signal is refused at once; each answer lets entries on."""
    entry = await entry_factory(max_entries_waiting=1, stop_waiting_sec=0.001)

    async def decided(signal_id: str) -> SignalDecision:
        await bus.publish(sig(signal_id))
        return (await bus.tap.wait_for(lambda: bus.tap.of(SignalDecision, signal_id=signal_id)))[0]

    first = await decided("first")
    assert first.accepted, first.reason
    assert (await decided("behind")).reason == "router_behind:1>=1"
    (intent,) = bus.tap.of(OrderIntent, correlation_id=first.correlation_id)
    await bus.publish(answer(intent, OrderState.FILLED, filled_qty=0.01, avg_price=50_000.0))
    stop = (
        await bus.tap.wait_for(lambda: [i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1"])
    )[0]
    # the position waits for its stop: no new entry yet
    assert (await decided("unprotected")).reason.startswith("stop_waiting:")
    await bus.publish(answer(stop, OrderState.ACKED))
    await entry.fills.wait_until(lambda: entry.stops_waiting.count(time.monotonic()) == 0)
    after = await decided("after")
    assert after.accepted, after.reason
