"""`erl signal` and `erl close`: publish, then wait for what the stack did with it and say so."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from libs.common.bus import Publisher
from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderIntent, OrderTransition, SignalDecision, transition_subjects
from libs.common.protection import market_exit
from libs.common.state_machine import OrderState
from tools.erl import fmt
from tools.erl.args import UsageError, build_signal, check_known
from tools.erl.bus import Watch, connected
from tools.erl.endpoints import Endpoints, http, venue_markets

OK, NOT_FOUND, USAGE, REFUSED, NO_ANSWER = 0, 1, 2, 3, 4


def entry_ids(signal_id: str) -> tuple[str, str]:
    """The correlation id and client order id entry gives this signal's intent (pure, as entry does)."""
    intent_id = make_intent_id("signal", signal_id, Bucket.ENTRY)
    return make_correlation_id(intent_id), make_client_order_id(intent_id, Bucket.ENTRY)


async def wait_order(w: Watch, deadline: float) -> OrderTransition | None:
    """The last transition seen by ``deadline``, stopping early once it is final or resting."""
    last: OrderTransition | None = None
    while True:
        m = await w.next(deadline - time.monotonic())
        if m is None:
            return last
        if isinstance(m, OrderTransition):
            last = m
            print(fmt.transition_line(m), flush=True)
            if fmt.settled_enough(m.to_state):
                return last


def order_exit_code(last: OrderTransition | None, waited: float) -> int:
    if last is None:
        print(f"order     no transition journaled within {waited:g}s (the router may be down: erl status)")
        return NO_ANSWER
    if last.to_state in fmt.BAD_STATES:
        return REFUSED
    if not fmt.settled_enough(last.to_state):
        print(f"order     still {last.to_state.value} after {waited:g}s")
        return NO_ANSWER
    return OK


async def cmd_signal(a: argparse.Namespace, ep: Endpoints) -> int:
    signal = build_signal(a, a.signal_id or uuid.uuid4().hex[:16])
    check_known(signal.symbol, venue_markets(ep.venue_url))
    cid, coid = entry_ids(signal.signal_id)
    prefix = ep.nats.subject_prefix
    async with connected(ep.nats) as nc:
        decisions = await Watch(nc, ep.nats, f"{prefix}.entry.decision.{signal.signal_id}").start()
        orders = await Watch(nc, ep.nats, transition_subjects(prefix, cid)[0]).start()
        ack = await Publisher(nc.jetstream(), ep.nats, "erl-cli").publish(
            signal, f"signal.{signal.signal_id}"
        )
        print(
            f"signal    {signal.signal_id}  {signal.side} {signal.qty:g} {signal.symbol}  journal seq {ack.seq}"
        )
        if a.wait <= 0:
            print(f"          not waiting; see: erl replay {signal.signal_id}")
            return OK
        deadline = time.monotonic() + a.wait
        decision = None
        while decision is None:
            m = await decisions.next(deadline - time.monotonic())
            if m is None:
                print(f"decision  none within {a.wait:g}s (is entry running? erl status)")
                return NO_ANSWER
            if isinstance(m, SignalDecision):
                decision = m
        print(fmt.decision_line(decision))
        if not decision.accepted:
            return REFUSED
        print(f"          correlation id {cid}  client order id {coid}")
        last = await wait_order(orders, deadline)
        code = order_exit_code(last, a.wait)
        print(f"replay    erl replay {signal.signal_id}")
        return code


async def cmd_close(a: argparse.Namespace, ep: Endpoints) -> int:
    check_known(a.symbol, venue_markets(ep.venue_url))
    recon = ep.services["reconciler"]
    http("POST", f"{recon}/reconcile", timeout=10.0)  # a fresh read of the venue, not the last tick's
    position = (http("GET", f"{recon}/status").get("positions") or {}).get(a.symbol)
    if not position or not position.get("qty"):
        print(f"no open position in {a.symbol}: nothing to close")
        return NOT_FOUND
    held = float(position["qty"])
    if a.qty is not None and a.qty > abs(held) + 1e-12:
        raise UsageError(f"--qty {a.qty:g} exceeds the position ({held:+g} {a.symbol})")
    qty = abs(held) if a.qty is None else a.qty
    intent: OrderIntent = market_exit(
        symbol=a.symbol,
        position_qty=qty if held > 0 else -qty,
        source="cli",
        id_scope="cli-close",
        key=a.close_id or uuid.uuid4().hex,
    )
    prefix = ep.nats.subject_prefix
    async with connected(ep.nats) as nc:
        orders = await Watch(nc, ep.nats, transition_subjects(prefix, intent.correlation_id)[0]).start()
        ack = await Publisher(nc.jetstream(), ep.nats, "erl-cli").publish(intent, intent.intent_id)
        print(
            f"close     {intent.side} {qty:g} {a.symbol} reduce-only at market (position {held:+g})  "
            f"journal seq {ack.seq}"
        )
        print(f"          correlation id {intent.correlation_id}  client order id {intent.client_order_id}")
        if a.wait <= 0:
            return OK
        deadline = time.monotonic() + a.wait
        last = await wait_order(orders, deadline)
        code = order_exit_code(last, a.wait)
        if code != OK or last is None or last.to_state is not OrderState.FILLED or a.qty is not None:
            return code
    return await wait_protection_gone(recon, a.symbol, deadline)


async def wait_protection_gone(recon: str, symbol: str, deadline: float) -> int:
    """After a full close: the position's stops and take-profits leave (the venue expires close-position
    ones; the reconciler cancels what is left on a flat symbol)."""
    left: list[dict] = []
    while True:
        # off the event loop: the bus connection keeps being served meanwhile
        await asyncio.to_thread(http, "POST", f"{recon}/reconcile", None, None, 10.0)
        st = await asyncio.to_thread(http, "GET", f"{recon}/status")
        flat = symbol not in (st.get("positions") or {})
        left = [
            o
            for o in st.get("open_orders") or []
            if o["symbol"] == symbol and (o.get("reduce_only") or o.get("close_position"))
        ]
        if flat and not left:
            print(f"position  {symbol} flat; no protective order left")
            return OK
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.5)
    for line in fmt.orders_table(left):
        print(f"          {line}")
    print(
        f"position  {symbol}: protective orders still resting (the reconciler cancels them once the symbol is quiet)"
    )
    return NO_ANSWER
