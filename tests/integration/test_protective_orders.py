"""Protective orders end to end: a trailing stop asked for on the command line rides stage-1 protection
through the router and real ccxt to the venue, beside the stop-loss, and closes the position on a retrace."""

from __future__ import annotations

import pytest

from libs.common.messages import OrderIntent, Stage1GapAssertion
from libs.common.state_machine import OrderState
from services.entry.cli import parse_args, signal_from_args
from tests.integration.helpers import BTC, BTC_ID, settled

pytestmark = pytest.mark.integration

S = OrderState


async def test_cli_trailing_stop_rides_stage1_to_the_venue_and_closes_on_a_retrace(
    bus, sim, router_factory, entry_factory
):
    await router_factory()
    entry = await entry_factory()
    px = sim.price(BTC_ID)
    activation, stop = round(px * 1.02, 1), round(px * 0.97, 1)
    signal = signal_from_args(
        parse_args(
            [
                *("--symbol", BTC, "--side", "buy", "--qty", "0.01"),
                *("--stop-loss", str(stop), "--trailing-callback", "1.5"),
                *("--trailing-activation", str(activation)),
            ]
        )
    )
    assert (signal.trailing_callback_rate, signal.trailing_activation_price) == (1.5, activation)
    await bus.publish(signal)
    sl, trail = await bus.tap.wait_for(
        lambda: (
            (x := [i for i in bus.tap.of(OrderIntent) if i.source == "entry.stage1"]) and len(x) == 2 and x
        )
    )
    assert (sl.order_type, sl.stop_price, sl.close_position) == ("stop_market", stop, True)
    assert (trail.order_type, trail.qty, trail.reduce_only) == ("trailing_stop_market", 0.01, True)
    assert (trail.callback_rate, trail.activation_price) == (1.5, activation)
    await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.ACKED) and settled(bus.tap, trail, S.ACKED))
    resting = {a["clientAlgoId"]: a for a in sim.state()["algo_orders"] if a["algoStatus"] == "NEW"}
    assert resting[sl.client_order_id]["orderType"] == "STOP_MARKET"
    t = resting[trail.client_order_id]
    assert (t["orderType"], t["reduceOnly"], t["callbackRate"]) == ("TRAILING_STOP_MARKET", True, "1.5")
    assert float(t["activatePrice"]) == activation

    high = round(px * 1.03, 1)
    sim.set_price(BTC_ID, high)  # past the activation: tracking from here
    sim.set_price(BTC_ID, round(high * 0.99, 1))  # -1 %: not yet
    assert sim.position(BTC_ID) == pytest.approx(0.01)
    sim.set_price(BTC_ID, round(high * 0.984, 1))  # -1.6 % from the high
    assert sim.position(BTC_ID) == 0
    states = {a["clientAlgoId"]: a["algoStatus"] for a in sim.state()["algo_orders"]}
    assert states[trail.client_order_id] == "FINISHED"
    assert states[sl.client_order_id] == "EXPIRED"  # the venue expires a close-position stop on flat
    await entry.fills.wait_until(lambda: not entry.stops)
    assert bus.tap.of(Stage1GapAssertion) == []
