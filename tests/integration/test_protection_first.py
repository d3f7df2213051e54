"""Protection first (issue 14, item 2): a stop never waits behind entries, and nothing is lost or doubled.

The router consumes in two lanes, each its own durable consumer with its own delivery window. Here
the entry lane is flooded: a dozen entries on one symbol, each held by the venue for a while, with a
delivery window of two. With one consumer the stop would be delivered only once ten of them had
been acknowledged; in its own lane it is placed while most of them still wait.
"""

from __future__ import annotations

import pytest

from libs.common.ids import Bucket
from libs.common.messages import OrderTransition
from libs.common.state_machine import OrderState
from tests.integration.helpers import BTC_ID, creates, make_intent, settled, stop_intent

pytestmark = pytest.mark.integration

S = OrderState
ENTRIES = 12


async def test_a_stop_is_placed_while_entries_wait_and_every_order_goes_out_once(bus, sim, router_factory):
    sim.set_position(BTC_ID, 0.02)
    router = await router_factory(max_in_flight=2)
    # every entry (a plain order) spends 400 ms at the venue; the stop (an algo order) does not
    sim.add_fault(kind="latency", method="POST", path="/fapi/v1/order", count=ENTRIES, delay_ms=400)
    entries = [make_intent() for _ in range(ENTRIES)]
    for e in entries:
        await bus.publish(e)
    # the backlog is there: the first entry is at the venue
    await bus.tap.wait_for(lambda: bus.tap.of(OrderTransition, to_state=S.SUBMITTING))
    stop = stop_intent("sell", 45_000.0)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))
    waiting = sum(1 for e in entries if settled(bus.tap, e) is None)
    assert waiting >= ENTRIES // 2, f"the stop waited behind entries: only {waiting} were still waiting"
    # nothing lost, nothing doubled: every entry fills, each order was sent once
    for e in entries:
        await bus.tap.wait_for(lambda e=e: settled(bus.tap, e, S.FILLED), within=30)
        assert len(creates(sim, e.client_order_id)) == 1
    assert len(creates(sim, stop.client_order_id, "/fapi/v1/algoOrder")) == 1
    assert sim.position(BTC_ID) == pytest.approx(0.02 + 0.01 * ENTRIES)
    assert stop.bucket is Bucket.SL and router.protect is not None and router.protect.handled >= 1
