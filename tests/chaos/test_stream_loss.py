"""Chaos: the venue's user data stream lost (cut, stalled, its key expired, its service killed) while
orders of ours change on the venue. Whatever the stream missed is found over REST, the entry that
filled meanwhile gets exactly one stop, and a long outage stops new entries until the stream is back.

The whole stack runs as processes (as in ``make run``) with the reconciler's stream-up cadence at 3 s.
"""

from __future__ import annotations

import asyncio

import pytest

from libs.common.ids import Bucket
from libs.common.messages import (
    KillSwitchEvent,
    OrderTransition,
    SignalDecision,
    VenueOrderFact,
    VenueStreamStatus,
)
from libs.common.state_machine import OrderState
from tests.chaos.harness import (
    ChaosStack,
    assert_no_duplicates,
    entry_cid,
    running,
    send_signal,
    trades_again,
    wait_entries_allowed,
    wait_entry,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

STREAM_ENV = {
    "VENUE_STREAM_SILENCE_SEC": "3",
    "VENUE_STREAM_BACKOFF_BASE_SEC": "0.1",
    "VENUE_STREAM_BACKOFF_MAX_SEC": "1",
    "VENUE_STREAM_STATUS_EVERY_SEC": "0.5",
    # slow enough that a pushed change visibly beats it, and under KILL_STALE_DATA_SEC, so the only
    # stale-data trip is the stream's own outage
    "RECONCILE_STREAM_UP_INTERVAL_SEC": "3",
    "KILL_STALE_DATA_SEC": "8",
    "RECONCILE_STREAM_STATUS_STALE_SEC": "2",
    "KILL_STREAM_DOWN_SEC": "3",
}
LISTEN_KEY = "/fapi/v1/listenKey"


@pytest.fixture
async def chaos():
    async with running(ChaosStack(**STREAM_ENV)) as c:
        await c.tap.wait_for(lambda: resumed(c))  # the stream's first session is open
        yield c


def resumed(c: ChaosStack) -> list[VenueStreamStatus]:
    return [s for s in c.tap.of(VenueStreamStatus) if s.resumed]


def ended(c: ChaosStack, reason: str) -> list[VenueStreamStatus]:
    return [s for s in c.tap.of(VenueStreamStatus) if s.state == "down" and s.reason == reason]


async def resting_entry(c: ChaosStack, signal_id: str) -> str:
    """A limit buy resting below the mark (50,000); its client id."""
    await send_signal(c, signal_id, order_type="limit", price=48_000.0, stop_loss_price=45_000.0)
    await wait_entry(c, signal_id, OrderState.ACKED)
    return entry_cid(signal_id)


async def fill_and_check_its_stop(c: ChaosStack, signal_id: str) -> None:
    """The price moves through the resting entry; it is journaled FILLED and gets exactly one stop."""
    c.sim.set_price("BTCUSDT", 47_900.0)
    await wait_entry(c, signal_id, OrderState.FILLED)
    await c.tap.wait_for(
        lambda: any(t.to_state is OrderState.ACKED for t in c.tap.of(OrderTransition, bucket=Bucket.SL))
    )
    stops = [a for a in c.sim.state()["algo_orders"] if a["algoStatus"] == "NEW" and a["symbol"] == "BTCUSDT"]
    assert len(stops) == 1, stops
    assert_no_duplicates(c)


def filled_by(c: ChaosStack, cid: str) -> set[str]:
    """Who told the router that the order filled: venue_stream (pushed) or reconciler (found by REST)."""
    return {
        f.source for f in c.tap.of(VenueOrderFact, client_order_id=cid) if f.status in ("FILLED", "filled")
    }


async def test_a_fill_while_the_stream_is_cut_and_cannot_reconnect_is_found_over_rest(chaos: ChaosStack):
    c = chaos
    cid = await resting_entry(c, "drop1")
    rule = c.sim.add_fault(kind="http_error", status=503, method="POST", path=LISTEN_KEY, count=None)
    c.sim.add_fault(kind="stream_drop")
    await c.tap.wait_for(lambda: [s for s in c.tap.of(VenueStreamStatus) if s.state == "down"])
    # down: the reconciler is back at its fast cadence and finds the fill the stream cannot push
    await fill_and_check_its_stop(c, "drop1")
    assert filled_by(c, cid) == {"reconciler"}
    assert len(resumed(c)) == 1  # all of it happened with the stream still down
    c.sim.remove_fault(rule)
    await c.tap.wait_for(lambda: len(resumed(c)) == 2)  # reconnected with backoff once the venue let it


async def test_a_fill_lost_in_a_stalled_stream_is_found_once_the_silence_ends_the_session(chaos: ChaosStack):
    c = chaos
    cid = await resting_entry(c, "stall1")
    c.sim.add_fault(kind="stream_stall")  # pings still answered; every event from now on is lost
    c.sim.set_price("BTCUSDT", 47_900.0)
    await c.tap.wait_for(lambda: ended(c, "silent"))  # VENUE_STREAM_SILENCE_SEC, then a new session
    await c.tap.wait_for(lambda: len(resumed(c)) == 2)
    await fill_and_check_its_stop(c, "stall1")  # the resume's full read found it
    assert filled_by(c, cid) == {"reconciler"}


async def test_an_expired_listen_key_is_replaced_and_the_next_fill_is_pushed(chaos: ChaosStack):
    c = chaos
    cid = await resting_entry(c, "expire1")
    c.sim.add_fault(kind="listen_key_expire")
    await c.tap.wait_for(lambda: ended(c, "listen_key_expired"))
    await c.tap.wait_for(lambda: len(resumed(c)) == 2)
    await fill_and_check_its_stop(c, "expire1")
    assert filled_by(c, cid) == {"venue_stream"}  # the new key's session pushed it


async def test_a_long_stream_outage_stops_entries_until_the_stream_is_back(chaos: ChaosStack):
    c = chaos
    await asyncio.to_thread(c.kill, "venue_stream")  # kill -9: no "down" status, just silence
    trip = await c.tap.wait_for(
        lambda: [k for k in c.tap.of(KillSwitchEvent) if "stale_data" in k.newly_tripped]
    )
    assert trip
    # the knobs reach entry through KV, a moment after the trip is journaled
    await wait_entries_allowed(c, within=10, allowed=False)
    await send_signal(c, "while-stream-down")
    refused = await c.tap.wait_for(
        lambda: [d for d in c.tap.of(SignalDecision, signal_id="while-stream-down") if not d.accepted]
    )
    assert refused
    await asyncio.to_thread(c.restart, "venue_stream")
    await c.tap.wait_for(lambda: [k for k in c.tap.of(KillSwitchEvent) if "stale_data" in k.released])
    await trades_again(c, "after-stream-back", within=30)
    assert c.sim.position("BTCUSDT") == pytest.approx(0.01)
