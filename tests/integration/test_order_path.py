"""The order path against real NATS JetStream + the Binance-wire simulator + real ccxt.

Each test drives one fault through the whole router and asserts the seed's
invariants: bounded retries, exactly one order.retry per retry, no duplicate
order after an ambiguous failure, idempotent cancel, non-growing client ids.
"""

from __future__ import annotations

import pytest

from libs.common.ids import CLIENT_ORDER_ID_LEN, Bucket
from libs.common.messages import OrderTransition, Signal
from libs.common.state_machine import OrderState
from tests.integration.helpers import BTC, BTC_ID, creates, make_intent, path_of, retries, settled

pytestmark = pytest.mark.integration

S = OrderState
ORDER_PATH = "/fapi/v1/order"


async def test_signal_to_filled_order_end_to_end(bus, sim, router_factory, entry_service):
    await router_factory()
    sig = Signal(signal_id="sig-e2e-1", symbol=BTC, side="buy", qty=0.01, confidence=0.9)
    await bus.publish(sig, "sig-e2e-1")
    t = await bus.tap.wait_for(lambda: next(iter(bus.tap.of(OrderTransition, to_state=S.FILLED)), None))
    assert t.bucket is Bucket.ENTRY and t.symbol == BTC
    assert len(t.client_order_id) == CLIENT_ORDER_ID_LEN and t.client_order_id.startswith("ENTRY")
    assert [r["params"]["newClientOrderId"] for r in sim.requests_log() if r["path"] == ORDER_PATH] == [
        t.client_order_id
    ]
    ts = bus.tap.of(OrderTransition, client_order_id=t.client_order_id)
    assert [x.to_state for x in ts] == [S.SUBMITTING, S.FILLED]
    assert all(x.correlation_id == t.correlation_id for x in ts)


async def test_timeout_after_accept_never_duplicates(bus, sim, router_factory):
    await router_factory(timeout_ms=400)
    sim.add_fault(kind="timeout_after_accept", method="POST", path=ORDER_PATH, count=1, delay_ms=1500)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED and t.reason == "found_by_client_id"
    assert path_of(bus.tap, intent) == ["CREATED", "SUBMITTING", "UNKNOWN", "FILLED"]
    unknown = next(
        x
        for x in bus.tap.of(OrderTransition, client_order_id=intent.client_order_id)
        if x.to_state is S.UNKNOWN
    )
    assert unknown.error_class == "RequestTimeout"
    assert len(creates(sim, intent.client_order_id)) == 1  # looked up, not resent
    assert retries(bus.tap, intent, "create") == []


async def test_unknown_status_1007_after_accept_never_duplicates(bus, sim, router_factory):
    await router_factory()
    sim.add_fault(kind="unknown_after_accept", method="POST", path=ORDER_PATH, count=1)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED
    assert len(creates(sim, intent.client_order_id)) == 1
    unknown = [
        x
        for x in bus.tap.of(OrderTransition, client_order_id=intent.client_order_id)
        if x.to_state is S.UNKNOWN
    ]
    assert unknown[0].code == -1007


@pytest.mark.parametrize(
    "status,error_class",
    [
        (500, "ExchangeNotAvailable"),
        (502, "ExchangeNotAvailable"),
        (503, "ExchangeNotAvailable"),
        (504, "RequestTimeout"),
    ],
)
async def test_5xx_before_accept_retries_once_per_failure_with_lookup(
    bus, sim, router_factory, status, error_class
):
    await router_factory()
    sim.add_fault(kind="http_error", method="POST", path=ORDER_PATH, count=2, status=status)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED
    rs = retries(bus.tap, intent, "create")
    assert [(r.tries, r.attempt) for r in rs] == [(1, 2), (2, 3)]
    assert {r.error_class for r in rs} == {error_class}
    assert all(r.correlation_id == intent.correlation_id for r in rs)
    sent = creates(sim, intent.client_order_id)
    assert len(sent) == 3
    # the same, non-growing client id on every attempt
    assert {r["params"]["newClientOrderId"] for r in sent} == {intent.client_order_id}
    # an ambiguous failure is always followed by a lookup, never by a blind resend
    assert path_of(bus.tap, intent) == [
        "CREATED",
        "SUBMITTING",
        "UNKNOWN",
        "RETRY_WAIT",
        "SUBMITTING",
        "UNKNOWN",
        "RETRY_WAIT",
        "SUBMITTING",
        "FILLED",
    ]


@pytest.mark.parametrize("status", [429, 418])
async def test_rate_limits_are_retried_with_one_event_per_retry(bus, sim, router_factory, status):
    await router_factory()
    sim.add_fault(kind="http_error", method="POST", path=ORDER_PATH, count=2, status=status)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED
    rs = retries(bus.tap, intent)
    assert len(rs) == 2 and {r.policy for r in rs} == {"retryable"}
    assert {r.error_class for r in rs} <= {"DDoSProtection", "RateLimitExceeded"}
    assert len(creates(sim, intent.client_order_id)) == 3


OVERLOADED = dict(kind="binance_error", code=-1008, msg="Server is currently overloaded with other requests.")


async def test_retries_bounded_by_attempts(bus, sim, router_factory):
    # (429s and bans are bounded by the elapsed cap only: tests/integration/test_venue_limits.py)
    await router_factory(retry_max_attempts=4)
    sim.add_fault(method="POST", path=ORDER_PATH, count=None, **OVERLOADED)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FAILED and t.reason.startswith("retries_exhausted")
    assert len(creates(sim, intent.client_order_id)) == 4
    assert [r.attempt for r in retries(bus.tap, intent)] == [2, 3, 4]


async def test_retries_bounded_by_elapsed_cap(bus, sim, router_factory):
    await router_factory(
        retry_max_attempts=50, retry_max_elapsed_sec=0.6, retry_base_delay_sec=0.1, retry_max_delay_sec=0.1
    )
    sim.add_fault(method="POST", path=ORDER_PATH, count=None, **OVERLOADED)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FAILED, S.FILLED))
    assert t.to_state is S.FAILED
    rs = retries(bus.tap, intent)
    assert 1 <= len(rs) < 10
    assert all(r.elapsed_sec + r.delay_sec <= 0.6 + 1e-6 for r in rs)


async def test_insufficient_margin_is_fatal_without_retry(bus, sim, router_factory):
    await router_factory()
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path=ORDER_PATH,
        count=1,
        code=-2019,
        msg="Margin is insufficient.",
    )
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent))
    assert (t.to_state, t.reason, t.code, t.error_class) == (
        S.REJECTED,
        "insufficient_margin",
        -2019,
        "InsufficientFunds",
    )
    assert retries(bus.tap, intent) == []
    assert len(creates(sim, intent.client_order_id)) == 1


async def test_duplicate_client_id_4116_is_resolved_by_lookup(bus, sim, router_factory):
    """The venue already holds an open order with this client id (placed by an earlier deployment whose
    journal is gone): the natural -4116 leads to a lookup, never to a second order."""
    from libs.venue.client import make_exchange

    intent = make_intent(order_type="limit", price=48_000.0)  # far below the market: rests
    ex = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret")
    try:
        await ex.create_order(BTC, "limit", "buy", 0.01, 48_000.0, {"clientOrderId": intent.client_order_id})
    finally:
        await ex.close()
    await router_factory()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED, S.FAILED, S.REJECTED))
    assert t.to_state is S.ACKED and t.reason == "found_by_client_id"
    assert path_of(bus.tap, intent) == ["CREATED", "SUBMITTING", "UNKNOWN", "ACKED"]
    unknown = [
        x
        for x in bus.tap.of(OrderTransition, client_order_id=intent.client_order_id)
        if x.to_state is S.UNKNOWN
    ]
    assert (unknown[0].code, unknown[0].reason) == (-4116, "duplicate_client_order_id")
    assert len([o for o in sim.state()["orders"] if o["clientOrderId"] == intent.client_order_id]) == 1


async def test_restarted_router_recognises_open_orders_from_the_journal(bus, sim, router_factory):
    """A second delivery of an intent after a restart: the journal says it is live, nothing is sent."""
    first = await router_factory()
    intent = make_intent(order_type="limit", price=48_000.0)
    await bus.publish(intent, "first")
    await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.ACKED))
    await first.stop()
    second = await router_factory()
    assert second.orders[intent.client_order_id].state is S.ACKED  # rebuilt from the journal
    sim.clear_requests()
    await bus.publish(intent, "second")  # a different msg id defeats bus dedup on purpose
    await second.consumer.wait_handled(1)
    assert second.counts.get("duplicate_delivery") == 1
    assert creates(sim, intent.client_order_id) == []
    assert len([o for o in sim.state()["orders"] if o["clientOrderId"] == intent.client_order_id]) == 1


async def test_injected_4116_without_an_order_is_retried_after_lookup(bus, sim, router_factory):
    await router_factory()
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path=ORDER_PATH,
        count=1,
        code=-4116,
        msg="ClientOrderId is duplicated.",
    )
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED
    assert len(retries(bus.tap, intent, "create")) == 1
    assert len(creates(sim, intent.client_order_id)) == 2


async def test_reduce_only_exit_without_position_is_moot(bus, sim, router_factory):
    await router_factory()
    exit_ = make_intent(Bucket.EXIT, side="sell")
    await bus.publish(exit_)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, exit_))
    assert t.to_state is S.MOOT and "no_position_to_reduce" in t.reason


@pytest.mark.parametrize(
    "code,msg",
    [
        (-2022, "ReduceOnly Order is rejected."),
        (-4118, "ReduceOnly Order Failed. Please check your existing position and open orders."),
    ],
)
async def test_reduce_only_rejected_is_resized_to_the_position(bus, sim, router_factory, code, msg):
    await router_factory()
    sim.set_position(BTC_ID, amount=0.005, entry_price=sim.price(BTC_ID))
    sim.add_fault(kind="binance_error", method="POST", path=ORDER_PATH, count=1, code=code, msg=msg)
    exit_ = make_intent(Bucket.EXIT, side="sell", qty=0.01)
    await bus.publish(exit_)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, exit_, S.FILLED, S.FAILED, S.REJECTED, S.MOOT))
    assert t.to_state is S.FILLED
    sent = creates(sim, exit_.client_order_id)
    assert [float(r["params"]["quantity"]) for r in sent] == [0.01, 0.005]
    assert retries(bus.tap, exit_)[0].policy == "retryable_with_modification"


async def test_stop_through_the_market_becomes_a_market_exit(bus, sim, router_factory):
    await router_factory()
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, amount=0.01, entry_price=px)
    # a sell stop above the market would trigger immediately: -2021
    sl = make_intent(Bucket.SL, side="sell", order_type="stop_market", stop_price=px * 1.05, qty=0.01)
    await bus.publish(sl)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, sl, S.FILLED, S.FAILED, S.REJECTED, S.MOOT))
    assert t.to_state is S.FILLED
    assert abs(sim.position(BTC_ID)) < 1e-12


async def test_clock_drift_1021_resyncs_and_retries(bus, sim, router_factory):
    await router_factory()
    sim.add_fault(
        kind="binance_error",
        method="POST",
        path=ORDER_PATH,
        count=1,
        code=-1021,
        msg="Timestamp for this request is outside of the recvWindow.",
    )
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED
    (r,) = retries(bus.tap, intent)
    assert (r.code, r.reason, r.policy) == (
        -1021,
        "timestamp_outside_recv_window",
        "retryable_with_modification",
    )


async def test_latency_is_tolerated_without_retry(bus, sim, router_factory):
    await router_factory(timeout_ms=2000)
    sim.add_fault(kind="latency", method="POST", path=ORDER_PATH, count=1, delay_ms=300)
    intent = make_intent()
    await bus.publish(intent)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED, S.REJECTED))
    assert t.to_state is S.FILLED and retries(bus.tap, intent) == []
