"""Never placed twice, never replaced blind (issue 8, items 1-3 and 9), against the strict simulator.

Each scenario is one that broke before: a create delayed in transit past the HTTP timeout and
then executed; a filled exit published again after a router restart; a replace whose cancel
could not be verified.
"""

from __future__ import annotations

import pytest

from libs.common.ids import Bucket
from libs.common.messages import CancelReplaceGiveup, CancelResult, OrderTransition
from libs.common.state_machine import OrderState, ReplaceState
from tests.integration.helpers import (
    BTC_ID,
    cancel_for,
    creates,
    make_intent,
    path_of,
    replace_for,
    retries,
    settled,
    stop_intent,
)

pytestmark = pytest.mark.integration

S = OrderState


def venue_orders(sim, cid: str) -> list[dict]:
    st = sim.state()
    return [o for o in st["orders"] if o["clientOrderId"] == cid] + [
        a for a in st["algo_orders"] if a["clientAlgoId"] == cid
    ]


# ----------------------------------------------------------------------------- 1. ambiguity ends at the deadline


async def test_create_delayed_past_the_http_timeout_is_found_not_resent(bus, sim, router_factory):
    """The request arrives after the client gave up, inside its recvWindow: the venue executes it.
    Lookups answer -2013 meanwhile; the router must keep looking, not resend."""
    await router_factory(timeout_ms=300)
    sim.add_fault(kind="latency", method="POST", path="/fapi/v1/order", count=1, delay_ms=800)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.UNKNOWN, S.REJECTED))
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED))
    assert t.to_state is S.FILLED and t.reason == "found_by_client_id"
    assert len(venue_orders(sim, intent.client_order_id)) == 1
    assert len(creates(sim, intent.client_order_id)) == 1  # never resent
    assert sim.position(BTC_ID) == pytest.approx(0.01)
    not_yet = [r for r in retries(bus.tap, intent, "fetch") if r.reason == "not_found_yet"]
    assert not_yet, "the -2013 answers before the delayed create landed were 'not found yet'"


async def test_accepted_order_hidden_by_query_lag_is_not_resent(bus, sim, router_factory):
    """Timeout after the venue accepted, and lookups answer -2013 for a while (query lag)."""
    await router_factory(timeout_ms=300)
    sim.add_fault(kind="timeout_after_accept", method="POST", path="/fapi/v1/order", count=1, delay_ms=600)
    sim.add_fault(kind="query_lag", method="POST", path="/fapi/v1/order", count=1, delay_ms=1_000)
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED, S.FAILED, S.FILLED))
    assert t.to_state is S.ACKED and t.reason == "found_by_client_id"
    assert len(venue_orders(sim, intent.client_order_id)) == 1
    assert len(creates(sim, intent.client_order_id)) == 1


async def test_a_create_that_never_arrived_is_sent_again_only_after_its_window(bus, sim, router_factory):
    """A 503 before handling: absent, but only provably so once the request is void; then one resend."""
    router = await router_factory()
    sim.add_fault(kind="http_error", method="POST", path="/fapi/v1/order", count=1, status=503)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED))
    assert t.to_state is S.FILLED
    posts = creates(sim, intent.client_order_id)
    assert len(posts) == 2 and len(venue_orders(sim, intent.client_order_id)) == 1
    # measured from the first request's signed timestamp, as the venue judges it (not from when the
    # simulator received it: on a loaded machine that can be later, and the test would flake)
    gap_sec = posts[1]["ts"] - int(posts[0]["params"]["timestamp"]) / 1000
    window_sec = (
        router.exchange_settings.recv_window_ms + router.exchange_settings.ambiguity_margin_ms
    ) / 1000
    # the resend waited until the first request could no longer land (50 ms: the measured clock offset)
    assert gap_sec >= window_sec - 0.05


# ----------------------------------------------------------------------------- 2. the intent ledger


async def test_filled_exit_published_again_after_a_restart_is_not_sent(bus, sim, router_factory):
    sim.set_position(BTC_ID, 0.02)
    first = await router_factory()
    exit_ = make_intent(Bucket.EXIT, side="sell", qty=0.01)
    await bus.publish(exit_)
    await bus.tap.wait_for(lambda: settled(bus.tap, exit_, S.FILLED))
    await first.stop()
    second = await router_factory()
    await bus.publish(exit_)  # same intent, new message id
    await bus.publish(exit_)
    await second.consumer.wait_until(lambda: second.counts.get("not_resent_settled", 0) == 2)
    assert len(creates(sim, exit_.client_order_id)) == 1
    assert sim.position(BTC_ID) == pytest.approx(0.01)  # sold once


async def test_republished_in_the_same_process_is_not_sent(bus, sim, router_factory):
    router = await router_factory()
    intent = make_intent()
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))
    await bus.publish(intent)
    await router.consumer.wait_until(lambda: router.counts.get("duplicate_delivery", 0) == 1)
    assert len(creates(sim, intent.client_order_id)) == 1


async def test_resting_order_republished_after_restart_is_tracked_not_sent(bus, sim, router_factory):
    first = await router_factory()
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    await first.stop()
    second = await router_factory()
    await bus.publish(intent)
    # known from the boot replay as resting: handled as a duplicate, never sent
    await second.consumer.wait_until(
        lambda: second.counts.get("not_resent_open", 0) + second.counts.get("duplicate_delivery", 0) == 1
    )
    assert second.orders[intent.client_order_id].state is S.ACKED  # a cancel will find it
    assert len(creates(sim, intent.client_order_id)) == 1


async def test_a_replace_delivered_again_does_not_place_its_stop_twice(bus, sim, router_factory):
    sim.set_position(BTC_ID, 0.02)
    router = await router_factory()
    old = stop_intent("sell", 45_000.0)
    await bus.publish(old)
    await bus.tap.wait_for(lambda: settled(bus.tap, old, S.ACKED))
    new = stop_intent("sell", 46_000.0)
    rep = replace_for(old, new)
    await bus.publish(rep)
    await bus.tap.wait_for(lambda: settled(bus.tap, new, S.ACKED))
    sim.fill(BTC_ID, new.client_order_id)  # the new stop triggers and fills
    await bus.publish(rep)  # delivered again (new message id)
    await router.consumer.wait_until(lambda: router.counts.get("replace_not_repeated", 0) == 1)
    assert len(creates(sim, new.client_order_id, "/fapi/v1/algoOrder")) == 1


# ----------------------------------------------------------------------------- 3. replace only after the fate is known


async def test_unverifiable_cancel_gives_up_the_replace_without_a_second_stop(bus, sim, router_factory):
    """The cancel answers -2011 while every lookup answers 503: the old stop may still rest."""
    sim.set_position(BTC_ID, 0.02)
    await router_factory(cancel_replace_max_attempts=2)
    old = stop_intent("sell", 45_000.0)
    await bus.publish(old)
    await bus.tap.wait_for(lambda: settled(bus.tap, old, S.ACKED))
    sim.add_fault(
        kind="binance_error",
        method="DELETE",
        path="/fapi/v1/algoOrder",
        count=None,
        code=-2011,
        msg="Unknown order sent.",
    )
    sim.add_fault(kind="http_error", method="GET", path="/fapi/v1/algoOrder", count=None, status=503)
    new = stop_intent("sell", 46_000.0)
    await bus.publish(replace_for(old, new))
    g = await bus.tap.wait_for(
        lambda: bus.tap.of(CancelReplaceGiveup, old_client_order_id=old.client_order_id)
    )
    assert g[0].state is ReplaceState.CANCEL_SENT_UNKNOWN
    assert creates(sim, new.client_order_id, "/fapi/v1/algoOrder") == []  # never placed
    sim.clear_faults()
    live = [a for a in sim.state()["algo_orders"] if a["algoStatus"] == "NEW"]
    assert [a["clientAlgoId"] for a in live] == [old.client_order_id]  # one stop, the old one
    outcomes = [r.outcome for r in bus.tap.of(CancelResult, client_order_id=old.client_order_id)]
    assert outcomes and set(outcomes) == {"unknown"}


async def test_cancel_of_an_order_hidden_by_query_lag_is_not_reported_gone(bus, sim, router_factory):
    """-2011 from the cancel and -2013 from the lookup while the order we placed still rests."""
    router = await router_factory(retry_max_elapsed_sec=1.0)
    sim.add_fault(kind="query_lag", method="POST", path="/fapi/v1/order", count=1, delay_ms=60_000)
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    await bus.publish(cancel_for(intent))
    r = await bus.tap.wait_for(lambda: bus.tap.of(CancelResult, client_order_id=intent.client_order_id))
    assert r[0].outcome == "unknown"  # not "already_gone": the venue still holds it
    assert r[0].order_correlation_id == intent.correlation_id
    await bus.tap.wait_for(lambda: path_of(bus.tap, intent)[-1] == "UNKNOWN")
    assert intent.client_order_id in router.unknown  # the resolver keeps asking
    assert venue_orders(sim, intent.client_order_id)[0]["status"] == "NEW"


async def test_bare_ack_of_an_algo_cancel_is_cross_checked(bus, sim, router_factory):
    """Binance answers an algo cancel with a bare ack; the fetch after it shows the stop filled first."""
    sim.set_position(BTC_ID, 0.02)
    await router_factory()
    stop = stop_intent("sell", 45_000.0)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))
    sim.add_fault(kind="fill_after_cancel_ack", method="DELETE", path="/fapi/v1/algoOrder", count=1)
    await bus.publish(cancel_for(stop))
    r = await bus.tap.wait_for(lambda: bus.tap.of(CancelResult, client_order_id=stop.client_order_id))
    assert (r[0].outcome, r[0].reason) == ("filled", "venue_ack+fetch")
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.FILLED))


# ----------------------------------------------------------------------------- 9. leftovers


async def test_cancel_result_carries_the_orders_correlation_id(bus, sim, router_factory):
    await router_factory()
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    cancel = cancel_for(intent).model_copy(update={"correlation_id": "operatorcancel1"})
    await bus.publish(cancel)
    r = await bus.tap.wait_for(lambda: bus.tap.of(CancelResult, client_order_id=intent.client_order_id))
    assert (r[0].correlation_id, r[0].order_correlation_id) == ("operatorcancel1", intent.correlation_id)


async def test_minus_1021_resyncs_the_clock_then_sends(bus, sim, router_factory):
    await router_factory()
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path="/fapi/v1/order",
        count=1,
        code=-1021,
        msg="Timestamp for this request is outside of the recvWindow.",
    )
    intent = make_intent()
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))
    log = sim.requests_log()
    refused = next(i for i, r in enumerate(log) if r["code"] == -1021)
    assert any(r["path"] == "/fapi/v1/time" for r in log[refused:]), "no clock resync after -1021"
    assert [r.reason for r in retries(bus.tap, intent, "create")] == ["timestamp_outside_recv_window"]


class _ListSink:
    """A journal that keeps its events in a list (an EventSink)."""

    def __init__(self) -> None:
        self.events: list = []

    async def emit(self, msg) -> None:
        self.events.append(msg)

    async def flush(self, within_sec: float = 10.0) -> None:
        return None


async def test_replace_transitions_strict_mode_raises_on_an_invalid_sequence():
    from libs.common.state_machine import TransitionError
    from services.router.replace import ReplaceMachine

    m = ReplaceMachine(replace_for(stop_intent("sell", 1.0), stop_intent("sell", 2.0)), _ListSink())
    await m.move(ReplaceState.DONE)
    with pytest.raises(TransitionError):
        await m.move(ReplaceState.REPLACE_RACE)  # nothing leaves DONE
    lax = ReplaceMachine(
        replace_for(stop_intent("sell", 1.0), stop_intent("sell", 2.0)), _ListSink(), strict=False
    )
    await lax.move(ReplaceState.DONE)
    await lax.move(ReplaceState.REPLACE_RACE)  # logged, not raised
    assert lax.state is ReplaceState.REPLACE_RACE


# ----------------------------------------------------------------------------- 4. late truth


async def test_fill_after_cancel_ack_is_journaled_canceled_then_filled(bus, sim, router_factory):
    router = await router_factory(cancel_verify_after_sec=0.2, resolve_every_sec=0.2)
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    sim.add_fault(kind="fill_after_cancel_ack", method="DELETE", path="/fapi/v1/order", count=1)
    await bus.publish(cancel_for(intent))
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.CANCELED))
    late = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))
    assert path_of(bus.tap, intent)[-2:] == ["CANCELED", "FILLED"]
    assert late.filled_qty == pytest.approx(0.01) and late.avg_price == pytest.approx(48_000.0)
    assert router.counts.get("late_truth_FILLED") == 1


async def test_a_stop_that_triggers_at_the_venue_ends_filled_with_the_orders_fill(
    bus, sim, router_factory, reconciler_factory
):
    sim.set_position(BTC_ID, 0.02)
    await router_factory(resolve_every_sec=0.2)
    stop = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))
    rec = await reconciler_factory()
    await rec.wait_ticks(1)
    sim.set_price(BTC_ID, 44_900.0)  # the stop triggers: a market order closes the position
    t = await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.FILLED, S.EXPIRED))
    assert t.to_state is S.FILLED and path_of(bus.tap, stop)[-2:] == ["ACKED", "FILLED"]
    made = next(o for o in sim.state()["orders"] if o["clientOrderId"] == stop.client_order_id)
    assert t.exchange_order_id == str(made["orderId"])  # the order the trigger created, with its fill
    assert t.filled_qty == pytest.approx(0.02) and t.avg_price == pytest.approx(float(made["avgPrice"]))


async def test_trailing_stop_whose_activation_was_reached_tracks_from_now_not_a_market_close(
    bus, sim, router_factory
):
    """-2021 for a trailing stop means its activation price is already through: resend it without one.
    Turning it into a market exit (as for a crossed stop-loss) would close the position."""
    sim.set_position(BTC_ID, 0.02)
    await router_factory()
    px = sim.price(BTC_ID)
    trail = make_intent(
        Bucket.SL,
        side="sell",
        order_type="trailing_stop_market",
        qty=0.02,
        callback_rate=1.0,
        activation_price=round(px * 0.99, 1),  # a sell trailing stop activates on a rise: already reached
    )
    await bus.publish(trail)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, trail))
    assert t.to_state is S.ACKED
    assert sim.position(BTC_ID) == pytest.approx(0.02)  # nothing closed
    posts = creates(sim, trail.client_order_id, "/fapi/v1/algoOrder")
    assert len(posts) == 2 and "activatePrice" not in posts[1]["params"]


# ----------------------------------------------------------------------------- 5. a new stop-loss takes the old one's place


async def test_a_new_stop_loss_replaces_a_stale_close_position_stop_instead_of_going_moot(
    bus, sim, router_factory
):
    """-4130: a close-position stop from a closed position (far below) still rests; the user's new
    stop-loss must take its place, not end MOOT and leave the stale one as 'protection'."""
    sim.set_position(BTC_ID, 0.02)
    await router_factory()
    stale = stop_intent("sell", 25_000.0, qty=None)
    await bus.publish(stale)
    await bus.tap.wait_for(lambda: settled(bus.tap, stale, S.ACKED))
    wanted = stop_intent("sell", 48_000.0, qty=None)
    await bus.publish(wanted)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, wanted, S.ACKED, S.MOOT, S.REJECTED))
    assert t.to_state is S.ACKED
    live = [a for a in sim.state()["algo_orders"] if a["algoStatus"] == "NEW"]
    assert [(a["clientAlgoId"], float(a["triggerPrice"])) for a in live] == [
        (wanted.client_order_id, 48_000.0)
    ]


async def test_the_same_stop_loss_again_is_moot(bus, sim, router_factory):
    sim.set_position(BTC_ID, 0.02)
    await router_factory()
    first = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(first)
    await bus.tap.wait_for(lambda: settled(bus.tap, first, S.ACKED))
    again = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(again)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, again, S.ACKED, S.MOOT, S.REJECTED))
    assert t.to_state is S.MOOT and t.code == -4130
    live = [a for a in sim.state()["algo_orders"] if a["algoStatus"] == "NEW"]
    assert [a["clientAlgoId"] for a in live] == [first.client_order_id]


# ----------------------------------------------------------------------------- found by the soak


async def test_an_order_that_ended_while_the_reconciler_was_down_is_journaled(
    bus, sim, router_factory, reconciler_factory
):
    """Soak seed 3: orders that filled while the reconciler was killed stayed ACKED in the journal. The
    rebuild now believes every journal-open order; the first tick finds it gone and reports it."""
    await router_factory(resolve_every_sec=0.2)
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    sim.fill(BTC_ID, intent.client_order_id)  # the market came to it while nobody watched
    await reconciler_factory()
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))
    assert path_of(bus.tap, intent)[-2:] == ["ACKED", "FILLED"]
    assert t.filled_qty == pytest.approx(0.01)


async def test_a_venue_fact_whose_lookup_fails_is_asked_again(bus, sim, router_factory):
    """Soak seed 3: the router's one lookup for a reported fill got a 502 and the fill was never
    journaled. The resolver now keeps asking."""
    from libs.common.messages import VenueOrderFact

    router = await router_factory(resolve_every_sec=0.2)
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    sim.fill(BTC_ID, intent.client_order_id)
    sim.add_fault(kind="http_error", method="GET", path="/fapi/v1/order", count=1, status=502)
    await bus.publish(
        VenueOrderFact(client_order_id=intent.client_order_id, symbol=intent.symbol, status="filled")
    )
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))
    assert router.counts.get("late_truth_FILLED") == 1


async def test_a_service_whose_start_up_fails_on_the_venue_retries_until_ready(sim, reconciler_factory):
    """Soak seeds 1, 2, 4: one 429 on exchangeInfo at start left the reconciler up but never ready (a
    zombie nobody restarts). Start-up work is now retried, loudly."""
    sim.add_fault(kind="http_error", method="GET", path="/fapi/v1/exchangeInfo", count=1, status=429)
    rec = await reconciler_factory()  # returns once ready
    s = await rec.wait_ticks(1)
    assert s.ok
    assert [r["status"] for r in sim.requests_log() if r["path"] == "/fapi/v1/exchangeInfo"][:2] == [429, 200]


async def test_a_replace_journaled_while_the_router_was_down_is_carried_out(bus, sim, router_factory):
    """Soak seed 6: a replace published while the router was down was counted 'maybe sent' by the boot
    ledger (journaled, no transition) and skipped as 'not repeated': the stop was never moved. It is
    looked up instead, and carried out once proven never placed."""
    sim.set_position(BTC_ID, 0.02)
    first = await router_factory()
    old = stop_intent("sell", 25_000.0, qty=None)
    await bus.publish(old)
    await bus.tap.wait_for(lambda: settled(bus.tap, old, S.ACKED))
    await first.stop()
    new = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(replace_for(old, new))  # journaled while nobody routes
    await router_factory()
    await bus.tap.wait_for(lambda: settled(bus.tap, new, S.ACKED, S.FAILED, S.REJECTED))
    live = [a for a in sim.state()["algo_orders"] if a["algoStatus"] == "NEW"]
    assert [a["clientAlgoId"] for a in live] == [new.client_order_id]
    assert len(creates(sim, new.client_order_id, "/fapi/v1/algoOrder")) == 1


async def test_a_stop_the_venue_does_not_list_yet_is_not_forgotten_and_its_ending_is_journaled(
    bus, sim, router_factory, reconciler_factory
):
    """Soak seed 11: the reconciler looked up a fresh stop during query lag, forgot it on -2013, and
    the stop's expiry a moment later was never reported: the journal kept it ACKED for good."""
    sim.set_position(BTC_ID, 0.01)
    await router_factory()
    await reconciler_factory()
    sim.add_fault(kind="query_lag", method="POST", path="/fapi/v1/algoOrder", count=1, delay_ms=4_000)
    stop = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(stop)
    await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.ACKED))

    def unknown_to_lookup() -> bool:  # the reconciler asked and the venue said it does not know the order
        return any(
            r["method"] == "GET"
            and r["path"] == "/fapi/v1/algoOrder"
            and (r.get("params") or {}).get("clientAlgoId") == stop.client_order_id
            and r.get("code") == -2013
            for r in sim.requests_log()
        )

    await bus.tap.wait_for(unknown_to_lookup)
    sim.set_position(BTC_ID, 0.0)  # the close-position stop expires with its position
    assert venue_orders(sim, stop.client_order_id)[0]["algoStatus"] == "EXPIRED"
    t = await bus.tap.wait_for(lambda: settled(bus.tap, stop, S.EXPIRED))
    assert t.to_state is S.EXPIRED


async def test_a_router_restarted_right_after_a_cancel_ack_still_finds_the_fill_that_raced_it(
    bus, sim, router_factory
):
    """Soak seed 13: the router died 0.2 s after a cancel ack whose order the venue had filled; the check
    for a racing fill lived only in its memory, so the journal kept the entry CANCELED for good."""
    first = await router_factory(cancel_verify_after_sec=30.0, resolve_every_sec=0.2)
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    sim.add_fault(kind="fill_after_cancel_ack", method="DELETE", path="/fapi/v1/order", count=1)
    await bus.publish(cancel_for(intent))
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.CANCELED))
    await first.crash()  # before its check was due: the check dies with the process
    await router_factory(cancel_verify_after_sec=0.2, resolve_every_sec=0.2)
    late = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED))
    assert path_of(bus.tap, intent)[-2:] == ["CANCELED", "FILLED"]
    assert late.filled_qty == pytest.approx(0.01)


async def test_a_replacement_proven_never_placed_and_not_needed_ends_moot_not_unknown(
    bus, sim, router_factory
):
    """Soak seed 13: a router died while carrying out a replace (its new stop journaled SUBMITTING). Its
    successor proved the new stop never placed and did not place it (the old stop had filled), yet left
    it UNKNOWN in the journal, and the reconciler held its repairs off for a stop 'still in flight' while
    the position went unprotected."""
    sim.set_position(BTC_ID, 0.02)
    first = await router_factory()
    old = stop_intent("sell", 45_000.0, qty=None)
    await bus.publish(old)
    await bus.tap.wait_for(lambda: settled(bus.tap, old, S.ACKED))
    await first.stop()
    sim.set_price(BTC_ID, 44_900.0)  # the old stop triggers and closes the position meanwhile
    new = stop_intent("sell", 44_000.0, qty=None)
    # as the reconciler builds it: the replace carries its new order's correlation id
    await bus.publish(replace_for(old, new).model_copy(update={"correlation_id": new.correlation_id}))
    # what the dead predecessor journaled just before it died: the new stop on its way out
    await bus.publish(
        OrderTransition(
            correlation_id=new.correlation_id,
            intent_id=new.intent_id,
            client_order_id=new.client_order_id,
            symbol=new.symbol,
            bucket=new.bucket,
            from_state=S.CREATED,
            to_state=S.SUBMITTING,
            reason="attempt 1",
        )
    )
    await router_factory()
    t = await bus.tap.wait_for(lambda: settled(bus.tap, new, S.MOOT, S.ACKED, S.FAILED, S.REJECTED))
    assert t.to_state is S.MOOT and t.reason == "not replaced: filled_after_cancel"
    assert path_of(bus.tap, new)[-2:] == ["UNKNOWN", "MOOT"]
    assert creates(sim, new.client_order_id, "/fapi/v1/algoOrder") == []
