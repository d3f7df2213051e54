"""Benchmark: a crash under the venue's default order limits, while entries keep arriving.

The full stack (nats-server, the simulator with Binance's default limits: 300 orders per 10 s and
1,200 per minute, risk, router and reconciler as processes, as ``make run`` starts them). 50 positions
are opened behind the stack's back and the reconciler gives each its stop (as in ``bench.rest_budget``).
Meanwhile a driver publishes entry intents at ``--entry-rate`` per second on 10 other symbols (resting
limit buys 3% under the market: they never fill, so they change no position), far more than the entry
share of the order budget (``ROUTER_ENTRY_ORDER_SHARE``, default 50%) lets through.

Phase "replace": every stop is cancelled behind the stack's back at once (the simulator's operator
cancel, pushed to the stack by the venue stream). That is what makes every stop need replacing in this
code: the reconciler repairs a position whose stop is missing as soon as it knows
(``services/reconciler/repairs.py``: place_stop); a mark move does not (a stop the reconciler asked
for stays where it was while it is on the protective side, and a mark through it triggers it, which
closes the position at the venue without any order of ours). Phase "exit": one market exit per position, all published at once (as ``erl close`` would).

The risk service's belief controller would halt entries two evaluations into the gaps; that second
line is held off (``RISK_TIGHTEN_AFTER``) unless ``--risk-halts``, so entries keep arriving throughout.

Reported per phase: protective orders acked (of 50), the time from the crash to the last one acked,
each one's intent -> acked latency (the router's part); over the run: entries sent, BLOCKED
``order_budget``, refused by the venue, and every -1015 in the simulator's request log (there must be
none).

    python -m bench.crash [--positions 50] [--entry-rate 100] [--warm-sec 5] [--entry-share 0.5]
        [--no-stream] [--risk-halts]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from nats.aio.msg import Msg

from bench.common import dist, machine, start_stack
from libs.common.bus import Publisher, connect_nats
from libs.common.config import NatsSettings, RouterSettings
from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderIntent, OrderTransition, ReplaceIntent, decode
from libs.common.protection import market_exit
from libs.common.state_machine import OrderState
from services.simulator.testing import SimControl
from tools.stack import RECONCILER, RISK, ROUTER, VENUE_STREAM, LocalStack

ENTRY_SYMBOLS = 10
REQUEST_LOG = 500_000  # every request of the run stays in the simulator's log (the -1015 count)
PHASE_TIMEOUT_SEC = 120.0


def unified(venue_id: str) -> str:
    return f"{venue_id.removesuffix('USDT')}/USDT:USDT"


def protected(sim: SimControl, symbols: list[str]) -> bool:
    stops = {a["symbol"] for a in sim.state(open_only=True)["algo_orders"] if a["algoStatus"] == "NEW"}
    return all(s in stops for s in symbols)


def refused_1015(sim: SimControl) -> int:
    return sum(1 for r in sim.requests_log() if r["code"] == -1015)


class Watch:
    """Order transitions seen on the bus: the protective orders of a phase, and the entries' outcomes."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.entries: Counter[str] = Counter()
        # protective orders acked (or filled): client id -> (when, symbol, bucket)
        self.acked: dict[str, tuple[float, str, Bucket]] = {}
        self.asked: dict[str, float] = {}  # protective order's client id -> when its intent was seen
        self.protective: Counter[str] = Counter()  # protective outcomes (state: reason)

    async def on_msg(self, m: Msg) -> None:
        t = decode(self.prefix, m.subject, m.data)
        intent = t.new_order if isinstance(t, ReplaceIntent) else t
        if isinstance(intent, OrderIntent) and intent.bucket is not Bucket.ENTRY:
            self.asked.setdefault(intent.client_order_id, time.time())
        if not isinstance(t, OrderTransition):
            return
        if t.bucket is Bucket.ENTRY:
            if t.to_state is OrderState.BLOCKED:
                self.entries[f"BLOCKED {t.reason.split(':', 1)[0]}"] += 1
            elif t.to_state in (OrderState.ACKED, OrderState.FILLED, OrderState.REJECTED, OrderState.FAILED):
                self.entries[
                    f"{t.to_state.value} {t.reason}" if t.reason != "venue" else t.to_state.value
                ] += 1
            return
        if t.to_state in (OrderState.ACKED, OrderState.FILLED):
            self.acked[t.client_order_id] = (time.time(), t.symbol, t.bucket)
        if t.to_state not in (OrderState.SUBMITTING, OrderState.CREATED, OrderState.RETRY_WAIT):
            self.protective[f"{t.bucket.value} {t.to_state.value}"] += 1


async def entry_flood(pub: Publisher, prices: dict[str, float], rate: float, stop: asyncio.Event) -> int:
    """Resting limit buys at ``rate`` per second, round-robin over ``prices``' symbols, until ``stop``."""
    symbols = list(prices)
    sent, t0 = 0, time.monotonic()
    while not stop.is_set():
        venue_id = symbols[sent % len(symbols)]
        px = prices[venue_id]
        intent_id = make_intent_id("bench.crash", f"{t0}:{sent}", Bucket.ENTRY)
        intent = OrderIntent(
            intent_id=intent_id,
            correlation_id=make_correlation_id(intent_id),
            client_order_id=make_client_order_id(intent_id, Bucket.ENTRY),
            bucket=Bucket.ENTRY,
            symbol=unified(venue_id),
            side="buy",
            order_type="limit",
            price=float(f"{px * 0.97:.5g}"),
            qty=float(f"{50 / px:.3g}"),
            source="bench",
        )
        await pub.publish(intent, intent_id)
        sent += 1
        delay = t0 + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent


def acked_since(watch: Watch, since: float, kind: Bucket) -> dict[str, float]:
    """Symbol -> seconds from ``since`` to its last protective order of ``kind`` acked after it."""
    out: dict[str, float] = {}
    for at, symbol, bucket in watch.acked.values():
        if at >= since and bucket is kind:
            out[symbol] = max(out.get(symbol, 0.0), at - since)
    return out


async def wait_acked(watch: Watch, since: float, symbols: set[str], kind: Bucket) -> float | None:
    """Seconds from ``since`` until a protective order of ``kind`` is acked for every symbol, or None."""
    deadline = time.monotonic() + PHASE_TIMEOUT_SEC
    while time.monotonic() < deadline:
        done = acked_since(watch, since, kind)
        if set(done) >= symbols:
            return max(done.values())
        await asyncio.sleep(0.05)
    return None


async def drive(nats_url: str, sim: SimControl, a: argparse.Namespace) -> dict:
    settings = NatsSettings(url=nats_url)
    nc = await connect_nats(settings, "bench", fail_fast=True)
    pub = Publisher(nc.jetstream(), settings, "bench")
    watch = Watch(settings.subject_prefix)
    await nc.subscribe(f"{settings.subject_prefix}.order.transition.>", cb=watch.on_msg)
    await nc.subscribe(f"{settings.subject_prefix}.intent.>", cb=watch.on_msg)
    prices: dict[str, float] = sim.state()["prices"]
    venue_ids = list(prices)
    held, flood_on = venue_ids[: a.positions], venue_ids[a.positions : a.positions + ENTRY_SYMBOLS]
    positions = {s: 1.0 if prices[s] < 1000 else 0.01 for s in held}
    for s, qty in positions.items():
        sim.set_position(s, qty)
    t0 = time.monotonic()
    while not protected(sim, held):
        assert time.monotonic() - t0 < PHASE_TIMEOUT_SEC, "positions not all protected"
        await asyncio.sleep(0.5)
    result: dict = {"setup_all_protected_after_sec": round(time.monotonic() - t0, 1)}

    stop_flood = asyncio.Event()
    flood = asyncio.create_task(entry_flood(pub, {s: prices[s] for s in flood_on}, a.entry_rate, stop_flood))
    await asyncio.sleep(a.warm_sec)  # the entries have taken their share of the budget by now

    # phase "replace": every stop gone at once; the reconciler repairs them through the router
    before = sim.limits()
    stops = [o for o in sim.state(open_only=True)["algo_orders"] if o["symbol"] in positions]
    crash = time.time()
    for o in stops:
        await asyncio.to_thread(sim.cancel_behind_back, o["symbol"], o["clientAlgoId"])
    last = await wait_acked(watch, crash, {unified(s) for s in held}, Bucket.SL)
    result["replace"] = phase_report(watch, crash, Bucket.SL, last, before, len(stops))

    # phase "exit": every position closed at market at once
    await asyncio.sleep(a.warm_sec)
    before = sim.limits()
    crash = time.time()
    exits = [
        market_exit(
            symbol=unified(s), position_qty=q, source="bench", id_scope="bench.crash.exit", key=f"{s}:{crash}"
        )
        for s, q in positions.items()
    ]
    await asyncio.gather(*(pub.publish(x, x.intent_id) for x in exits))
    last = await wait_acked(watch, crash, {unified(s) for s in held}, Bucket.EXIT)
    result["exit"] = phase_report(watch, crash, Bucket.EXIT, last, before, len(exits))

    stop_flood.set()
    sent = await flood
    await asyncio.sleep(2)  # the last entries settle
    log = sim.requests_log()
    result.update(
        {
            "entries_offered": sent,
            "entries_offered_per_sec": a.entry_rate,
            "entry_outcomes": dict(watch.entries),
            "protective_outcomes": dict(watch.protective),
            "venue_order_refusals_1015": refused_1015(sim),
            "venue_refusals_429_418": sum(1 for r in log if r["status"] in (418, 429)),
            "request_log_complete": len(log) < REQUEST_LOG,
        }
    )
    await nc.close()
    return result


def phase_report(watch: Watch, crash: float, kind: Bucket, last: float | None, before: dict, n: int) -> dict:
    acked = {cid: at for cid, (at, _, bucket) in watch.acked.items() if at >= crash and bucket is kind}
    lat = [at - crash for at in acked.values()]
    path = [at - watch.asked[cid] for cid, at in acked.items() if cid in watch.asked]
    return {
        "protective_orders": n,
        "acked": len(lat),
        "all_acked": last is not None,
        "crash_to_last_acked_sec": round(last, 3) if last is not None else None,
        "crash_to_acked_sec": dist(lat),
        "intent_to_acked_sec": dist(path),
        "venue_order_count_at_crash": {"10s": before["order_count_10s"], "1m": before["order_count_1m"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=50)
    ap.add_argument("--entry-rate", type=float, default=100.0, help="entry intents offered per second")
    ap.add_argument("--warm-sec", type=float, default=5.0, help="entries alone before each crash")
    ap.add_argument(
        "--entry-share", type=float, default=None, help="ROUTER_ENTRY_ORDER_SHARE (default: the setting's)"
    )
    ap.add_argument(
        "--no-stream", action="store_true", help="without the venue stream: cancels seen by REST sweeps only"
    )
    ap.add_argument(
        "--risk-halts",
        action="store_true",
        help="let the risk service halt entries on the gaps (off: only the order budget holds them)",
    )
    a = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="erl-bench-"))
    stack = LocalStack(
        run_dir,
        extra_env={
            "SIM_TICK_MS": "0",
            "SIM_SYMBOLS": str(a.positions + ENTRY_SYMBOLS),
            "SIM_START_BALANCE": "1000000000",
            "SIM_REQUEST_LOG_SIZE": str(REQUEST_LOG),
            "RISK_HALT_TOKEN": "bench",
            # the belief controller halts entries two evaluations into a crash's gaps: a second line of
            # defence, held off by default so the entries keep coming and the order budget alone is measured
            **({} if a.risk_halts else {"RISK_TIGHTEN_AFTER": "1000000"}),
            **({} if a.entry_share is None else {"ROUTER_ENTRY_ORDER_SHARE": str(a.entry_share)}),
        },
    )
    services = (RISK, ROUTER, RECONCILER, *(() if a.no_stream else (VENUE_STREAM,)))
    result: dict = {"benchmark": "crash", "machine": machine()}
    try:
        nats, sim_child, result["baseline_js_acked_publish_ms"] = start_stack(stack, services)
        sim = SimControl(sim_child.url)
        lim = sim.limits()
        result["venue_order_limits"] = {"10s": lim["orders_limit_10s"], "1m": lim["orders_limit_1m"]}
        result["venue_stream"], result["risk_halts_entries"] = not a.no_stream, a.risk_halts
        result["entry_order_share"] = a.entry_share or RouterSettings().entry_order_share
        result.update(asyncio.run(drive(nats.url, sim, a)))
    finally:
        stack.stop()
    result["run_dir"] = str(run_dir)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
