"""The venue stream service end to end: the simulator's user data stream through the real ccxt.pro
client, venue facts on the journal, the router settling lifecycles from them (no reconciler runs here:
nothing but the stream can tell the router about these fills)."""

from __future__ import annotations

import pytest

from libs.common.ids import Bucket
from libs.common.messages import (
    OrderIntent,
    OrderTransition,
    RepairAction,
    Signal,
    SignalDecision,
    VenueOrderFact,
    VenuePositionFact,
    VenueStreamStatus,
)
from libs.common.state_machine import OrderState
from tests.integration.helpers import BTC, BTC_ID, make_intent, path_of, server_state, settled, stop_intent

pytestmark = pytest.mark.integration

S = OrderState


def resumed(tap) -> list[VenueStreamStatus]:
    return [s for s in tap.of(VenueStreamStatus) if s.resumed]


def facts(tap, cid: str, **match) -> list[VenueOrderFact]:
    return tap.of(VenueOrderFact, client_order_id=cid, source="venue_stream", **match)


async def stream_up(bus, venue_stream_factory, **overrides):
    svc = await venue_stream_factory(**overrides)
    await bus.tap.wait_for(lambda: resumed(bus.tap))
    return svc


async def test_a_resting_entry_filled_by_a_price_move_gets_its_stop_from_the_pushed_fill(
    bus, sim, router_factory, entry_factory, venue_stream_factory
):
    await router_factory()
    await entry_factory()
    await stream_up(bus, venue_stream_factory)
    sig = Signal(
        signal_id="rest1",
        symbol=BTC,
        side="buy",
        qty=0.01,
        order_type="limit",
        price=49_000.0,
        stop_loss_price=45_000.0,
    )
    await bus.publish(sig)
    d = await bus.tap.wait_for(lambda: next(iter(bus.tap.of(SignalDecision, signal_id="rest1")), None))
    assert d.accepted, d.reason
    entry = await bus.tap.wait_for(
        lambda: next(iter(bus.tap.of(OrderIntent, correlation_id=d.correlation_id)), None)
    )
    await bus.tap.wait_for(lambda: settled(bus.tap, entry, S.ACKED))
    assert not [i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1"]

    sim.set_price(BTC_ID, 48_900.0)  # the limit fills at the venue; only the stream says so
    filled = await bus.tap.wait_for(lambda: settled(bus.tap, entry, S.FILLED))
    assert (filled.filled_qty, filled.avg_price) == (0.01, 49_000.0) and "venue_stream" in filled.reason
    stop = await bus.tap.wait_for(
        lambda: next((i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1"), None)
    )
    assert stop.bucket is Bucket.SL and stop.stop_price == 45_000.0
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))
    assert path_of(bus.tap, entry) == ["CREATED", "SUBMITTING", "ACKED", "FILLED"]


async def test_a_stop_triggered_on_the_venue_is_journaled_filled_from_the_stream(
    bus, sim, router_factory, venue_stream_factory
):
    await router_factory()
    await stream_up(bus, venue_stream_factory)
    entry = make_intent()
    await bus.publish(entry)
    await bus.tap.wait_for(lambda: settled(bus.tap, entry, S.FILLED))
    stop = stop_intent("sell", 45_000.0, qty=0.01)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))

    sim.set_price(BTC_ID, 44_000.0)
    done = await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.FILLED))
    assert done.filled_qty == 0.01 and done.avg_price and "venue_stream" in done.reason
    assert path_of(bus.tap, stop) == ["CREATED", "SUBMITTING", "ACKED", "FILLED"]
    # the algo's own updates (TRIGGERING, TRIGGERED, FINISHED) came too, and changed nothing more
    await bus.tap.wait_for(lambda: facts(bus.tap, stop.client_order_id, status="FINISHED"))
    assert path_of(bus.tap, stop) == ["CREATED", "SUBMITTING", "ACKED", "FILLED"]


async def test_a_late_fill_after_a_cancel_and_an_orphan_are_told_apart(
    bus, sim, router_factory, venue_stream_factory
):
    router = await router_factory()
    await stream_up(bus, venue_stream_factory)
    rest = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(rest)
    await bus.tap.wait_for(lambda: settled(bus.tap, rest, S.ACKED))
    sim.cancel_behind_back(BTC_ID, rest.client_order_id)
    await bus.tap.wait_for(lambda: settled(bus.tap, rest, S.CANCELED))
    assert "venue_stream" in settled(bus.tap, rest, S.CANCELED).reason

    from libs.venue.client import make_exchange

    ex = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret")
    try:
        await ex.create_order(BTC, "limit", "buy", 0.01, 48_500.0, {"clientOrderId": "manual1"})
    finally:
        await ex.close()
    await bus.tap.wait_for(lambda: facts(bus.tap, "manual1"))
    await bus.tap.wait_for(lambda: router.counts.get("venue_fact_orphan"))
    assert not bus.tap.of(OrderTransition, client_order_id="manual1")  # never adopted


async def test_a_dropped_stream_reconnects_and_says_it_resumed(
    bus, sim, router_factory, venue_stream_factory
):
    await router_factory()
    svc = await stream_up(bus, venue_stream_factory)
    sim.add_fault(kind="stream_drop")
    down = await bus.tap.wait_for(
        lambda: [s for s in bus.tap.of(VenueStreamStatus) if s.state == "down" and s.connects == 1]
    )
    assert down[0].reason == "connection_lost"
    await bus.tap.wait_for(lambda: len(resumed(bus.tap)) == 2)
    assert svc.stream.sessions == 2
    # and the new connection carries updates
    rest = make_intent(order_type="limit", price=49_000.0)
    await bus.publish(rest)
    await bus.tap.wait_for(lambda: settled(bus.tap, rest, S.ACKED))
    sim.set_price(BTC_ID, 48_900.0)
    await bus.tap.wait_for(lambda: settled(bus.tap, rest, S.FILLED))


async def test_an_expired_key_and_a_stalled_stream_are_recovered(bus, sim, venue_stream_factory):
    svc = await stream_up(bus, venue_stream_factory, silence_sec=1.0)
    old = sim.stream_state()["listenKey"]
    sim.add_fault(kind="listen_key_expire")
    await bus.tap.wait_for(lambda: len(resumed(bus.tap)) == 2)
    assert sim.stream_state()["listenKey"] != old  # a new key: ccxt's dead one was dropped
    assert svc.counts.get("ended_listen_key_expired") or svc.counts.get("ended_connection_lost")
    sim.add_fault(kind="stream_stall")  # pings answered, nothing sent: only silence tells
    await bus.tap.wait_for(lambda: len(resumed(bus.tap)) == 3)
    assert svc.counts.get("ended_silent")


async def test_a_replayed_update_is_journaled_once_and_applied_once(
    bus, sim, router_factory, venue_stream_factory
):
    router = await router_factory()
    svc = await stream_up(bus, venue_stream_factory)
    rest = make_intent(order_type="limit", price=49_000.0)
    await bus.publish(rest)
    await bus.tap.wait_for(lambda: settled(bus.tap, rest, S.ACKED))
    sim.set_price(BTC_ID, 48_900.0)
    await bus.tap.wait_for(lambda: settled(bus.tap, rest, S.FILLED))
    fill = facts(bus.tap, rest.client_order_id, status="FILLED")[0]
    # the venue (or a reconnect) pushes the same update again: one journal entry
    from libs.venue.parsing import VenueOrder
    from libs.venue.stream_events import StreamOrderUpdate

    again = StreamOrderUpdate(
        VenueOrder(
            client_order_id=fill.client_order_id,
            exchange_order_id=fill.exchange_order_id,
            state=S.FILLED,
            venue_status="FILLED",
            filled=fill.filled_qty or 0,
            amount=0.01,
            average=fill.avg_price,
            symbol=BTC,
        ),
        fill.event_ms,
        True,
    )
    await svc.on_order(again)
    assert svc.counts.get("duplicate") == 1
    # an older update (the NEW, published again as a new message) is refused by the router
    new = facts(bus.tap, rest.client_order_id, status="NEW")[0]
    await bus.publish(new)
    await bus.tap.wait_for(lambda: len(facts(bus.tap, rest.client_order_id, status="NEW")) == 2)
    before = len(facts(bus.tap, rest.client_order_id, status="FILLED"))
    await bus.publish(fill)
    await bus.tap.wait_for(lambda: len(facts(bus.tap, rest.client_order_id, status="FILLED")) > before)
    marker = make_intent(order_type="limit", price=48_000.0)  # same symbol: handled after the facts
    await bus.publish(marker)
    await bus.tap.wait_for(lambda: settled(bus.tap, marker, S.ACKED))
    assert path_of(bus.tap, rest) == ["CREATED", "SUBMITTING", "ACKED", "FILLED"]
    assert router.counts.get("venue_fact_stale") and router.counts.get("venue_fact_same")


async def test_the_reconciler_polls_slowly_while_the_stream_is_up_and_reads_at_once_on_a_resume(
    bus, sim, reconciler_factory, venue_stream_factory
):
    rec = await reconciler_factory(stream_up_interval_sec=60.0)  # 0.2 s ticks otherwise
    await stream_up(bus, venue_stream_factory)

    async def up() -> bool:
        return rec.stream_up()

    await server_state(up, bool)
    with pytest.raises(TimeoutError):  # five ticks at the fast cadence; one at most (the resume's) now
        await rec.wait_ticks(2, within_sec=1.0)

    sim.add_fault(kind="stream_drop")  # down (faster cadence), then resumed: a tick at once
    await rec.wait_ticks(1, within_sec=5.0)
    await bus.tap.wait_for(lambda: len(resumed(bus.tap)) == 2)
    await rec.wait_ticks(1, within_sec=5.0)


async def test_with_the_stream_up_a_stop_that_ends_is_repaired_at_once_not_after_the_slow_cadence(
    bus, sim, router_factory, reconciler_factory, venue_stream_factory
):
    """CI's commit seed: with the stream up the reconciler ticked every 10 s even with a gap open, and a
    position went 34 s without its stop. A stop that ends wakes it, and an open gap keeps it fast."""
    sim.set_position(BTC_ID, 0.02)
    await router_factory()
    rec = await reconciler_factory(stream_up_interval_sec=60.0, repair_cooldown_sec=0.2)
    await stream_up(bus, venue_stream_factory)

    async def up() -> bool:
        return rec.stream_up()

    await server_state(up, bool)
    stop = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))
    sim.cancel_behind_back(BTC_ID, stop.client_order_id)  # pushed by the stream; no REST tick for 60 s
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.CANCELED))
    repair = await bus.tap.wait_for(
        lambda: [r for r in bus.tap.of(RepairAction) if r.action == "place_stop"], within=10.0
    )
    assert repair[0].symbol == BTC
    live = [a for a in sim.state()["algo_orders"] if a["algoStatus"] == "NEW"]
    await bus.tap.wait_for(lambda: not rec.state.gaps.gaps, within=10.0)
    assert len(live) <= 1


def order_reads(sim) -> list[str]:
    """The symbol of every open-orders read since the log was cleared ("" = every symbol at once)."""
    paths = ("/fapi/v1/openOrders", "/fapi/v1/openAlgoOrders")
    return [r["params"].get("symbol", "") for r in sim.requests_log() if r["path"] in paths]


async def test_with_the_stream_trusted_ticks_read_only_the_symbols_something_happened_on(
    bus, sim, router_factory, reconciler_factory, venue_stream_factory
):
    """Issue 10's REST budget: with 50 positions the 10 s backstop read every symbol's orders (22% of the
    venue's weight). Pushed changes say which symbols to read; every symbol waits for the slow sweep."""
    eth, eth_id = "ETH/USDT:USDT", "ETHUSDT"
    sim.set_position(BTC_ID, 0.02)
    sim.set_position(eth_id, 0.5)
    await router_factory()
    stops = [
        stop_intent("sell", 45_000.0, qty=None),
        stop_intent("sell", sim.price(eth_id) * 0.95, qty=None, symbol=eth),
    ]
    for stop in stops:
        await bus.publish(stop)
    for stop in stops:
        await bus.tap.wait_for(lambda stop=stop: settled(bus.tap, stop, S.ACKED))
    rec = await reconciler_factory(stream_up_interval_sec=0.2, stream_up_sweep_sec=600.0)
    await stream_up(bus, venue_stream_factory)

    async def trusted() -> bool:
        return rec.stream_trusted

    await server_state(trusted, bool)
    await rec.wait_ticks(2)  # the ticks that read what settled while trust was being established
    sim.clear_requests()
    await rec.wait_ticks(3)
    assert order_reads(sim) == []  # nothing happened: positions only

    sim.cancel_behind_back(eth_id, stops[1].client_order_id)  # pushed: read ETH, and repair it
    repair = await bus.tap.wait_for(
        lambda: [r for r in bus.tap.of(RepairAction) if r.action == "place_stop"], within=10.0
    )
    assert repair[0].symbol == eth
    await bus.tap.wait_for(lambda: not rec.state.gaps.gaps, within=10.0)
    reads = order_reads(sim)
    assert eth_id in reads and BTC_ID not in reads and "" not in reads

    sim.add_fault(kind="stream_drop")  # not trusted until a full read after the resume
    await bus.tap.wait_for(lambda: len(resumed(bus.tap)) == 2)
    await server_state(trusted, bool)
    assert "" in order_reads(sim)


async def test_a_stream_that_stalls_while_it_looks_up_loses_the_reconcilers_trust(
    bus, sim, router_factory, reconciler_factory, venue_stream_factory
):
    """A stalled stream still answers pings: only an order of ours it never pushes gives it away. The
    reconciler then reads every symbol (at once, and each tick) until the stream pushes again."""
    sim.set_position(BTC_ID, 0.02)
    await router_factory()
    rec = await reconciler_factory(
        stream_up_interval_sec=0.2, stream_up_sweep_sec=600.0, stream_confirm_sec=0.5
    )
    await stream_up(bus, venue_stream_factory)  # its silence check (120 s) stays out of this test

    async def trusted() -> bool:
        return rec.stream_trusted

    await server_state(trusted, bool)
    sim.add_fault(kind="stream_stall")  # for good: events from now on are lost
    sim.clear_requests()
    stop = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))

    async def distrusted() -> int:
        return rec.trust.unconfirmed

    # at least the test's stop (a repair of the bare position placed after the stall counts as well)
    await server_state(distrusted, lambda n: n >= 1)
    await rec.wait_ticks(2)
    assert not rec.stream_trusted and rec.stream_up()
    reads = order_reads(sim)
    assert "" in reads  # every symbol at once when it happened
    assert reads.count(BTC_ID) >= 2  # and the watched ones each tick while it stays silent
    assert not facts(bus.tap, stop.client_order_id)


async def test_a_position_opened_behind_our_back_is_protected_at_once_from_its_pushed_update(
    bus, sim, router_factory, reconciler_factory, venue_stream_factory
):
    """ACCOUNT_UPDATE: a position opened without an order of ours (a manual trade) is pushed; the
    reconciler checks it at once instead of at its slow cadence (60 s here)."""
    await router_factory()
    rec = await reconciler_factory(stream_up_interval_sec=60.0, repair_cooldown_sec=0.2)
    await stream_up(bus, venue_stream_factory)

    async def trusted() -> bool:
        return rec.stream_trusted

    await server_state(trusted, bool)
    sim.set_position(BTC_ID, 0.02)
    pushed = await bus.tap.wait_for(lambda: bus.tap.of(VenuePositionFact, symbol=BTC))
    assert pushed[-1].qty == pytest.approx(0.02) and pushed[-1].source_service == "venue_stream"
    repair = await bus.tap.wait_for(
        lambda: [r for r in bus.tap.of(RepairAction) if r.action == "place_stop"], within=10.0
    )
    assert repair[0].symbol == BTC
    await bus.tap.wait_for(lambda: not rec.state.gaps.gaps, within=10.0)
    live = [a for a in sim.state()["algo_orders"] if a["algoStatus"] == "NEW" and a["symbol"] == BTC_ID]
    assert len(live) == 1


async def test_a_stall_that_hid_a_cancel_is_caught_by_the_trusted_sweep_which_then_ends_the_trust(
    bus, sim, router_factory, reconciler_factory, venue_stream_factory
):
    """A stalled stream and nothing of ours placed to give it away: the stop cancelled behind our back is
    found by the trusted stream's sweep (2 s here, 60 s by default), repaired, and the stream, which never
    pushed that ending, is no longer trusted."""
    sim.set_position(BTC_ID, 0.02)
    await router_factory()
    stop = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))
    rec = await reconciler_factory(
        stream_up_interval_sec=0.2, stream_up_sweep_sec=2.0, stream_confirm_sec=0.5, repair_cooldown_sec=0.2
    )
    await stream_up(bus, venue_stream_factory)

    async def trusted() -> bool:
        return rec.stream_trusted

    await server_state(trusted, bool)
    sim.add_fault(kind="stream_stall")
    sim.cancel_behind_back(BTC_ID, stop.client_order_id)
    repair = await bus.tap.wait_for(
        lambda: [r for r in bus.tap.of(RepairAction) if r.action == "place_stop"], within=10.0
    )
    assert repair[0].symbol == BTC
    assert not facts(bus.tap, stop.client_order_id, status="CANCELED")

    async def unconfirmed() -> int:
        return rec.trust.unconfirmed

    await server_state(unconfirmed, lambda n: n >= 1)
    assert not rec.stream_trusted
