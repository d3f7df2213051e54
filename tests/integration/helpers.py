"""Intent builders and journal predicates shared by the integration tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import CancelIntent, OrderIntent, OrderRetry, OrderTransition, ReplaceIntent
from libs.common.state_machine import OrderState

T = TypeVar("T")

BTC = "BTC/USDT:USDT"
BTC_ID = "BTCUSDT"


def make_intent(
    bucket: Bucket = Bucket.ENTRY, *, generation: int = 0, key: str | None = None, **kw: Any
) -> OrderIntent:
    key = key or uuid.uuid4().hex
    iid = make_intent_id("test", key, bucket)
    fields: dict[str, Any] = dict(
        intent_id=iid,
        correlation_id=make_correlation_id(iid),
        client_order_id=make_client_order_id(iid, bucket, generation),
        bucket=bucket,
        symbol=BTC,
        side="buy",
        order_type="market",
        qty=0.01,
        source="test",
    )
    if bucket is not Bucket.ENTRY and "close_position" not in kw:
        fields["reduce_only"] = True
    fields.update(kw)
    return OrderIntent(**fields)


def stop_intent(side: str, stop_price: float, qty: float | None = 0.01, **kw: Any) -> OrderIntent:
    if qty is None:
        kw.setdefault("close_position", True)
    return make_intent(Bucket.SL, side=side, order_type="stop_market", stop_price=stop_price, qty=qty, **kw)


def cancel_for(intent: OrderIntent, reason: str = "test") -> CancelIntent:
    return CancelIntent(
        correlation_id=intent.correlation_id,
        client_order_id=intent.client_order_id,
        symbol=intent.symbol,
        is_trigger=intent.is_trigger,
        reason=reason,
    )


def replace_for(old: OrderIntent, new: OrderIntent) -> ReplaceIntent:
    return ReplaceIntent(
        correlation_id=old.correlation_id,
        old_client_order_id=old.client_order_id,
        old_is_trigger=old.is_trigger,
        new_order=new,
        reason="test refresh",
    )


def transitions(tap: Any, intent: OrderIntent) -> list[OrderTransition]:
    return tap.of(OrderTransition, client_order_id=intent.client_order_id)


def path_of(tap: Any, intent: OrderIntent) -> list[str]:
    ts = transitions(tap, intent)
    return [ts[0].from_state.value, *(t.to_state.value for t in ts)] if ts else []


def retries(tap: Any, intent: OrderIntent, operation: str | None = None) -> list[OrderRetry]:
    out = tap.of(OrderRetry, client_order_id=intent.client_order_id)
    return [r for r in out if operation is None or r.operation == operation]


def creates(sim: Any, client_order_id: str, path: str = "/fapi/v1/order") -> list[dict]:
    """POSTs that tried to create this client id (the venue saw each one); conditional orders go to
    ``/fapi/v1/algoOrder`` with the id as ``clientAlgoId``."""
    return [
        r
        for r in sim.requests_log()
        if r["method"] == "POST"
        and r["path"] == path
        and client_order_id in (r["params"].get("newClientOrderId"), r["params"].get("clientAlgoId"))
    ]


def settled(tap: Any, intent: OrderIntent, *states: OrderState) -> OrderTransition | None:
    """The first transition of ``intent`` into one of ``states`` (default: any settled state)."""
    wanted = set(states) or {
        OrderState.ACKED,
        OrderState.FILLED,
        OrderState.REJECTED,
        OrderState.FAILED,
        OrderState.BLOCKED,
        OrderState.MOOT,
        OrderState.EXPIRED,
        OrderState.CANCELED,
    }
    for t in transitions(tap, intent):
        if t.to_state in wanted:
            return t
    return None


async def server_state(
    read: Callable[[], Awaitable[T]], until: Callable[[T], bool], within: float = 10.0
) -> T:
    """Re-read server-side state (consumer or stream info) until ``until`` holds, for at most ``within``
    seconds. An ack is a fire-and-forget publish: the client has sent it, the server may not have
    counted it yet (seen on a loaded machine), so state the server reports after an event is polled."""
    deadline = time.monotonic() + within
    while True:
        value = await read()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"the server's state never got there in {within}s: {value}")
        await asyncio.sleep(0.05)


async def protection_goes_through(bus: Any, sim: Any) -> None:
    """With entries refused, a stop and an exit on a fresh BTC position still reach the venue."""
    px = sim.price(BTC_ID)
    sim.set_position(BTC_ID, amount=0.02, entry_price=px)
    sl = stop_intent("sell", round(px * 0.9, 1), qty=0.02)
    exit_ = make_intent(Bucket.EXIT, side="sell", qty=0.01)
    await bus.publish(sl)
    await bus.publish(exit_)
    await bus.tap.wait_for(
        lambda: settled(bus.tap, sl, OrderState.ACKED) and settled(bus.tap, exit_, OrderState.FILLED)
    )
