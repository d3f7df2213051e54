"""Benchmark: signal -> order acknowledged by the simulator, through real processes.

nats-server, the simulator (latency 0), the entry and the router run as separate
processes exactly as in ``make run``. For each signal we measure end-to-end
time (signal publish -> FILLED transition seen on the bus) and subtract the
venue call the router itself timed (``venue_ms`` on the transition): what is
left is our internal overhead (bus hops, decoding, policy, journaling).

Every fill makes the entry service send a stage-1 stop, which the router handles
in the same per-symbol queue. The next signal is sent only once that stop rests
on the venue, so each signal is measured on a quiet system; the stop's own
latency (fill seen -> stop acknowledged by the venue: the unprotected window of
a fresh position) is reported separately. Signals are buys that grow one
position; between signals the driver cancels the stop on the simulator (the
venue allows one close-position stop per side), so every stage-1 stop is a
real placement.

CPU per signal: utime + stime of each process (/proc/<pid>/stat) over the measured signals, divided by
their number; the driver's own removal of each stop (a REST call to the simulator) is in the simulator's
share. ``--profile DIR`` runs the router and the entry under cProfile (``ERL_PROFILE``, .prof files in DIR).

    python -m bench.order_path [--n 1000] [--warmup 100] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bench.common import RAISED_VENUE_LIMITS, dist, jetstream_baseline, machine
from libs.common.bus import Publisher, connect_nats
from libs.common.config import NatsSettings
from libs.common.ids import Bucket, make_client_order_id, make_intent_id
from libs.common.messages import OrderIntent, OrderTransition, Signal, decode
from libs.common.state_machine import OrderState
from services.simulator.testing import SimControl
from tools.stack import ENTRY, ROUTER, SIMULATOR, LocalStack

SETTLED = (OrderState.FILLED, OrderState.ACKED, OrderState.MOOT, OrderState.REJECTED, OrderState.FAILED)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (its threads included), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(nats_url: str, sim_url: str, n: int, warmup: int, pids: dict[str, int]) -> dict:
    settings = NatsSettings(url=nats_url)
    nc = await connect_nats(settings, "bench", fail_fast=True)
    pub = Publisher(nc.jetstream(), settings, "bench")
    sim = SimControl(sim_url)
    waiters: dict[str, asyncio.Future] = {}

    async def on_transition(m: Msg) -> None:
        t = decode(settings.subject_prefix, m.subject, m.data)
        if isinstance(t, OrderTransition) and t.to_state in SETTLED:
            f = waiters.pop(t.client_order_id, None)
            if f is not None and not f.done():
                f.set_result((time.perf_counter(), t.venue_ms or 0.0, t.to_state))

    await nc.subscribe(f"{settings.subject_prefix}.order.transition.>", cb=on_transition)
    e2e: list[float] = []
    overhead: list[float] = []
    venue: list[float] = []
    stage1: list[float] = []
    stage1_outcomes: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    cpu_before: dict[str, float] = {}
    for i in range(warmup + n):
        if i == warmup:
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        sid = uuid.uuid4().hex
        entry_intent = make_intent_id("signal", sid, Bucket.ENTRY)
        cid = make_client_order_id(entry_intent, Bucket.ENTRY)
        stop_cid = make_client_order_id(make_intent_id("stage1", entry_intent, Bucket.SL), Bucket.SL)
        fut, stop = loop.create_future(), loop.create_future()
        waiters[cid], waiters[stop_cid] = fut, stop
        t0 = time.perf_counter()
        await pub.publish(Signal(signal_id=sid, symbol="BTC/USDT:USDT", side="buy", qty=0.001), sid)
        t1, venue_ms, _ = await asyncio.wait_for(fut, 10)
        t2, _, stop_state = await asyncio.wait_for(stop, 10)
        if stop_state is OrderState.ACKED:  # make room for the next one (outside the measurements)
            await asyncio.to_thread(sim.cancel_behind_back, "BTCUSDT", stop_cid)
        if i >= warmup:
            total = (t1 - t0) * 1000
            e2e.append(total)
            venue.append(venue_ms)
            overhead.append(total - venue_ms)
            stage1.append((t2 - t1) * 1000)
            stage1_outcomes[stop_state.value] += 1
    cpu_ms = {name: round((cpu_seconds(pid) - cpu_before[name]) * 1000 / n, 3) for name, pid in pids.items()}
    breakdown = await hop_breakdown(nc, settings)
    await nc.close()
    sim.close()
    return {
        "end_to_end_ms": dist(e2e),
        "venue_call_ms": dist(venue),
        "internal_overhead_ms": dist(overhead),
        "fill_to_stage1_stop_acked_ms": {**dist(stage1), "outcomes": dict(stage1_outcomes)},
        "hops_ms (server store times)": breakdown,
        "cpu_ms_per_signal": {**cpu_ms, "total": round(sum(cpu_ms.values()), 3)},
    }


async def hop_breakdown(nc: NatsClient, settings: NatsSettings) -> dict:
    """Where the time goes, from JetStream's own store timestamps of each message of a chain."""
    stored: dict[tuple[str, str], float] = {}
    families: Counter[str] = Counter()
    signal_of: dict[str, str] = {}  # client order id -> signal id
    sub = await nc.jetstream().subscribe(f"{settings.subject_prefix}.>", ordered_consumer=True)
    info = await sub.consumer_info()
    for _ in range(info.num_pending or 0):
        m = await sub.next_msg(timeout=5)
        msg = decode(settings.subject_prefix, m.subject, m.data)
        families[f"{msg.family} {getattr(msg, 'to_state', None) or ''}".strip()] += 1
        ts = m.metadata.timestamp.timestamp()
        if isinstance(msg, Signal):
            stored[("signal", msg.signal_id)] = ts
        elif isinstance(msg, OrderIntent):
            stored[("intent", msg.signal_id or "")] = ts
            signal_of[msg.client_order_id] = msg.signal_id or ""
        elif isinstance(msg, OrderTransition) and msg.to_state in (OrderState.SUBMITTING, OrderState.FILLED):
            stored[(msg.to_state.value, msg.client_order_id)] = ts
    await sub.unsubscribe()
    hops: dict[str, list[float]] = {
        "signal->intent (entry)": [],
        "intent->SUBMITTING (router)": [],
        "SUBMITTING->FILLED (venue+router)": [],
    }
    for cid, sid in signal_of.items():
        try:
            t_sig, t_int = stored[("signal", sid)], stored[("intent", sid)]
            t_sub, t_fill = stored[("SUBMITTING", cid)], stored[("FILLED", cid)]
        except KeyError:
            continue
        hops["signal->intent (entry)"].append((t_int - t_sig) * 1000)
        hops["intent->SUBMITTING (router)"].append((t_sub - t_int) * 1000)
        hops["SUBMITTING->FILLED (venue+router)"].append((t_fill - t_sub) * 1000)
    signals = families["signal"] or 1
    return {
        **{k: dist(v) for k, v in hops.items()},
        "journal_messages_per_signal": {k: round(c / signals, 2) for k, c in sorted(families.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--profile", metavar="DIR", help="cProfile the router and the entry into DIR")
    a = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="erl-bench-"))
    # back-to-back orders far beyond the venue's 300 per 10 s: this bench isolates our own overhead. The
    # limits are raised, not switched off: the router gives entries a share of the limits exchangeInfo
    # states (ROUTER_ENTRY_ORDER_SHARE), and a venue without enforcement still states Binance's
    stack = LocalStack(
        run_dir,
        extra_env={
            "SIM_TICK_MS": "0",
            "SIM_START_BALANCE": "1000000000",
            **RAISED_VENUE_LIMITS,
        },
    )
    try:
        nats = stack.start_nats()
        baseline = asyncio.run(jetstream_baseline(nats.url))
        sim = stack.add(SIMULATOR)
        sim.wait_ready()
        profile = {"ERL_PROFILE": str(Path(a.profile).resolve())} if a.profile else {}
        for spec in (ROUTER, ENTRY):
            stack.add(spec, env=profile)
        for spec in (ROUTER, ENTRY):
            assert stack[spec.name].wait_ready(), f"{spec.name} not ready, see {run_dir}/logs"
        procs = {name: stack[name].proc for name in ("router", "entry", "simulator")} | {
            "nats-server": nats.proc
        }
        pids = {name: p.pid for name, p in procs.items() if p is not None}
        result = asyncio.run(drive(nats.url, sim.url, a.n, a.warmup, pids))
    finally:
        stack.stop()
    result = {
        "benchmark": "signal_to_ack",
        "machine": machine(),
        "baseline_js_acked_publish_ms": baseline,
        **result,
        "overhead_p50_over_baseline_p50": round(result["internal_overhead_ms"]["p50"] / baseline["p50"], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
