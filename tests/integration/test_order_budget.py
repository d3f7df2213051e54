"""The venue's order budget: entries get a share of it, protective orders the rest, nothing hits -1015.

Real nats-server, simulator (its order limits lowered) and ccxt. The router reads the limits from
exchangeInfo at start; entries past ``ROUTER_ENTRY_ORDER_SHARE`` of them are BLOCKED ``order_budget``,
while stops and exits still go out. When the venue refuses with -1015 all the same (another client on
the account spent the budget), an entry is dropped and a stop waits for the window and goes again.
"""

from __future__ import annotations

import pytest

from libs.common.ids import Bucket
from libs.common.state_machine import OrderState
from libs.common.telemetry import POLICY_BLOCKS
from libs.venue.client import make_exchange
from tests.integration.helpers import BTC, BTC_ID, creates, make_intent, retries, settled, stop_intent

pytestmark = pytest.mark.integration

S = OrderState
ORDER_PATH = "/fapi/v1/order"
ALGO_PATH = "/fapi/v1/algoOrder"


def refused_for_orders(sim) -> list[dict]:
    return [r for r in sim.requests_log() if r["code"] == -1015]


def blocks() -> float:
    return POLICY_BLOCKS.labels("router", "order_budget")._value.get()


async def test_entries_stop_at_their_share_while_protective_orders_go_through(bus, sim, router_factory):
    # a per-minute limit so low that half of it is two orders (a minute: no window rolls over mid-test)
    sim.set_limits(orders_limit_1m=4)
    router = await router_factory(entry_order_share=0.5)
    assert (router.venue_limits.order_limits.per_10s, router.venue_limits.order_limits.per_1m) == (300, 4)
    assert router.venue_limits.order_limits.source == "exchangeInfo"
    blocked_before = blocks()

    entries = [make_intent() for _ in range(3)]
    for e in entries:
        await bus.publish(e)
    ends = [await bus.tap.wait_for(lambda e=e: settled(bus.tap, e)) for e in entries]
    assert [t.to_state for t in ends] == [S.FILLED, S.FILLED, S.BLOCKED]
    assert ends[2].reason == "order_budget: 3/4 per 1min, entries may use 50%"
    assert creates(sim, entries[2].client_order_id) == []  # never sent
    assert blocks() == blocked_before + 1

    # the rest of the budget is protection's: a stop and an exit both go out, up to the full limit
    stop = stop_intent("sell", round(sim.price(BTC_ID) * 0.9, 1))
    await bus.publish(stop)
    assert (await bus.tap.wait_for(lambda: settled(bus.tap, stop))).to_state is S.ACKED
    exit_ = make_intent(Bucket.EXIT, side="sell")
    await bus.publish(exit_)
    assert (await bus.tap.wait_for(lambda: settled(bus.tap, exit_))).to_state is S.FILLED
    assert refused_for_orders(sim) == []
    assert sim.limits()["order_count_1m"] == 4
    assert router.venue_limits.order_counts()[1] >= 4


async def test_a_venue_refusal_drops_the_entry_and_the_stop_waits_for_the_window(bus, sim, router_factory):
    sim.set_limits(orders_limit_10s=3)
    router = await router_factory(retry_max_elapsed_sec=20.0)
    await router.venue.ensure_markets()
    sim.set_position(BTC_ID, amount=0.01, entry_price=sim.price(BTC_ID))
    # another client on the same account spends the budget behind the router's back
    other = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret", timeout_ms=1500)
    try:
        await other.load_markets()
        px = sim.price(BTC_ID)
        for i in range(3):
            await other.create_order(
                BTC, "limit", "buy", 0.01, round(px * 0.97, 1), {"clientOrderId": f"X{i}"}
            )
    finally:
        await other.close()

    entry = make_intent()
    await bus.publish(entry)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, entry))
    assert (t.to_state, t.reason, t.code) == (S.REJECTED, "order_rate_limited", -1015)
    assert len(creates(sim, entry.client_order_id)) == 1  # not retried into the limit
    assert retries(bus.tap, entry) == []

    stop = stop_intent("sell", round(px * 0.9, 1))
    await bus.publish(stop)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, stop), within=30)
    assert t.to_state is S.ACKED
    # held through the pause, its first signature may have outlived recvWindow (-1021: refused, resigned)
    assert creates(sim, stop.client_order_id, ALGO_PATH)[-1]["status"] == 200
    assert not any(r["status"] == 418 for r in sim.requests_log())  # waited out, never banned
