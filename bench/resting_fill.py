"""Benchmark: a resting limit entry filled by a price move -> its stage-1 stop acknowledged by the venue.

nats-server, the simulator (its user data stream on), the router, the entry and the venue-stream
service run as separate processes as in ``make run``; no reconciler runs, so nothing but the pushed
fill can tell the router (and through its FILLED transition, entry) that the order filled. Each round:
a limit buy rests below the mark; the driver moves the price through it (the clock starts just before
that call); the stream pushes the fill; the router journals FILLED; entry asks for the stop; the router
places it. Reported: price move -> FILLED seen on the bus, and price move -> stop ACKED (the issue's
target: p99 < 50 ms). Between rounds the stop is cancelled behind the bot's back and the price reset.

    python -m bench.resting_fill [--n 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

from nats.aio.msg import Msg

from bench.common import dist, machine, start_stack
from libs.common.bus import Publisher, connect_nats
from libs.common.config import NatsSettings
from libs.common.ids import Bucket, make_client_order_id, make_intent_id
from libs.common.messages import OrderTransition, Signal, decode
from libs.common.state_machine import OrderState
from services.simulator.testing import SimControl
from tools.stack import ENTRY, ROUTER, VENUE_STREAM, LocalStack

BTC, BTC_ID = "BTC/USDT:USDT", "BTCUSDT"
MARK, LIMIT, THROUGH = 50_000.0, 49_900.0, 49_850.0


async def drive(nats_url: str, sim_url: str, n: int, warmup: int) -> dict:
    settings = NatsSettings(url=nats_url)
    nc = await connect_nats(settings, "bench", fail_fast=True)
    pub = Publisher(nc.jetstream(), settings, "bench")
    sim = SimControl(sim_url)
    loop = asyncio.get_running_loop()
    waiters: dict[tuple[str, OrderState], asyncio.Future] = {}

    async def on_transition(m: Msg) -> None:
        t = decode(settings.subject_prefix, m.subject, m.data)
        if isinstance(t, OrderTransition):
            f = waiters.pop((t.client_order_id, t.to_state), None)
            if f is not None and not f.done():
                f.set_result(time.perf_counter())

    await nc.subscribe(f"{settings.subject_prefix}.order.transition.>", cb=on_transition)
    to_fill: list[float] = []
    to_stop: list[float] = []
    for i in range(warmup + n):
        sid = uuid.uuid4().hex
        entry_intent = make_intent_id("signal", sid, Bucket.ENTRY)
        cid = make_client_order_id(entry_intent, Bucket.ENTRY)
        stop_cid = make_client_order_id(make_intent_id("stage1", entry_intent, Bucket.SL), Bucket.SL)
        acked, filled, stop = loop.create_future(), loop.create_future(), loop.create_future()
        waiters[(cid, OrderState.ACKED)] = acked
        waiters[(cid, OrderState.FILLED)] = filled
        waiters[(stop_cid, OrderState.ACKED)] = stop
        await pub.publish(
            Signal(
                signal_id=sid,
                symbol=BTC,
                side="buy",
                qty=0.001,
                order_type="limit",
                price=LIMIT,
                stop_loss_price=45_000.0,
            ),
            sid,
        )
        await asyncio.wait_for(acked, 10)  # resting on the venue
        t0 = time.perf_counter()
        await asyncio.to_thread(sim.set_price, BTC_ID, THROUGH)  # the move that fills it
        t_fill = await asyncio.wait_for(filled, 10)
        t_stop = await asyncio.wait_for(stop, 10)
        if i >= warmup:
            to_fill.append((t_fill - t0) * 1000)
            to_stop.append((t_stop - t0) * 1000)
        # make room for the next round (outside the measurements): one close-position stop per side
        await asyncio.to_thread(sim.cancel_behind_back, BTC_ID, stop_cid)
        await asyncio.to_thread(sim.set_price, BTC_ID, MARK)
    await nc.close()
    sim.close()
    return {
        "price_move_to_filled_ms": dist(to_fill),
        "price_move_to_stage1_stop_acked_ms": dist(to_stop),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="erl-bench-"))
    stack = LocalStack(
        run_dir,
        extra_env={
            "SIM_TICK_MS": "0",
            "SIM_START_BALANCE": "1000000000",
            "SIM_RATE_LIMITS": "false",  # this bench isolates the push path, not the venue's limits
            "RISK_ENTRY_COOLDOWN_SEC": "0",
            "GUARD_REQUIRE_KNOBS": "0",
        },
    )
    services = (ROUTER, ENTRY, VENUE_STREAM)
    try:
        nats, sim, baseline = start_stack(stack, services)
        result = asyncio.run(drive(nats.url, sim.url, a.n, a.warmup))
    finally:
        stack.stop()
    print(
        json.dumps(
            {
                "benchmark": "resting_fill",
                "machine": machine(),
                "baseline_js_acked_publish_ms": baseline,
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
