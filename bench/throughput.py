"""Benchmark: the full stack under open-loop signals, rate by rate (issue 14).

nats-server, the simulator and every service (risk, router, reconciler, entry, venue stream) run as
processes, as ``make run`` starts them (tools/stack.py LocalStack; an open bus on free ports, like
the other benches). A driver publishes Signals at a fixed rate whatever happens to them (open loop),
round robin over ``--symbols`` synthetic symbols, for ``--seconds`` per rate; it then waits for the
rate's backlog to drain (``--drain``) and for risk's posture to be back to normal (at most 60 s,
reported as ``posture_at_start``) before the next rate. Per rate it reports, from what the
services publish on the bus (core subscriptions, the bench's own clock):

- entry decisions (``entry.decision``: accepted / refused by reason, the guard mode they saw), the
  router's BLOCKED / REJECTED / FAILED entries by reason, fills and settled entries per second;
- signal -> FILLED (publish started -> the entry's FILLED transition seen) and fill -> stage-1
  stop ACKED (that FILLED seen -> the stop's ACKED seen), p50/p99;
- what became of every fill's stage-1 stop: acked, or refused by the venue / the router (with the
  reason and venue code: a refused stop is counted as such, never as protection), or unsettled;
- CPU seconds of every process (``/proc/<pid>/stat``; nats-server and the bench's own process
  included) during the sending window, and CPU ms per signal over window + drain (the whole
  cost of the rate's signals), with and without what the idle stack burns (measured for 10 s
  after the warm-up: reconcile ticks, risk evaluations, heartbeats);
- the backlog left at the window's end and how long it took to drain;

and at the end the highest rate whose signal -> FILLED p99 is under 50 ms with at least 99% of its
signals filled (bench/throughput_report.py ``highest_sustainable``). The driver's own lateness
against its schedule is reported too: when the bench process itself falls behind on a loaded
machine, the rate it claims is not the rate it sent.

The signal mix, and why every fill gets a real stop placement (bench/signal_mix.py): the venue
allows one close-position stop per side per symbol (-4130), and each stage-1 stop is one. Each
signal is sized to flip its symbol's position (long p: sell p + q; short: buy; flat: buy q), and the
venue itself expires the previous close-position stop when its position flips (as Binance does), so
each fill's stop is a fresh placement on a fresh position, and nothing is changed behind the stack's
back (the reconciler sees only what a real venue does). A signal that will not fill is taken out of
the expected position as soon as its refusal is seen. When the stack falls behind, a stop can reach
the venue after the next entry already flipped the position: the venue refuses it (-2022 nothing to
reduce, or -4130) and the bench counts it as refused. The warm-up pass (one signal per symbol, not
measured) opens every position and has the router set each symbol's leverage once.

Settings the bench changes, and why (everything else is ``make run``'s default):
- SIM_TICK_MS=0: prices stand still, so no stop triggers and no fill moves the mark mid-run;
- SIM_START_BALANCE=1e9: margin never refuses an entry;
- SIM_WEIGHT_LIMIT_1M, SIM_ORDERS_LIMIT_10S, SIM_ORDERS_LIMIT_1M raised to 10^8 (enforcement stays
  on, so a 429 would still show): the venue's order and weight limits (300 orders per 10 s) are not
  what is measured. The reconciler still paces itself to the default 2,400 weight.
- GUARD_REQUIRE_KNOBS=1 as in ``make run``; RISK_MAX_NOTIONAL_USDT=1e9, RISK_MAX_OPEN_ORDERS=10^6,
  RISK_ENTRY_COOLDOWN_SEC=0: the strategy caps (notional, open entries, per-symbol interval) would
  refuse the bench's signals by design; the confidence floor stays (signals carry 1.0);
- KILL_API_ERROR_MAX=10^6: stage-1 stops refused because the bench's own flips overtook them count
  as API errors, and 20 a minute would halt entries and end the measurement; the bench counts those
  refusals itself. The belief controller is left alone: if it tightens, ``guard_modes_seen`` and
  the refusal reasons show it (with the reconciler's events and its summaries' debt inputs);
  ``--no-mismatch-halt`` sets only KILL_RECONCILE_MISMATCH_STREAK_MAX=10^6: the flips' own race (a
  close-position stop expired by a flip, looked up before its transition arrived, under the next
  position) is a missing order to the reconciler, and a latched halt would end every later rate;
  ``--hold-posture`` sets RISK_TIGHTEN_AFTER=10^6 (it never tightens) and
  KILL_RECONCILE_MISMATCH_STREAK_MAX=10^6 (a mismatch storm never halts), to measure the order path
  apart from the posture (the debt it would have acted on is still reported).

``--kill-nats``: one rate (the first of ``--rates``); half-way through its window nats-server is
killed (SIGKILL) and started again on the same port and store after ``--outage`` seconds. Then,
from the journal (not the live subscription, which misses the outage) and the venue's state: every
signal the bus acked has a decision, every accepted entry settled, every filled entry has a stage-1
stop that reached ACKED (a fill whose stop reached the venue only after a later entry had flipped
the position is listed by the stop's state: refused, never counted as protection), every client
order id was placed once, every open position on the venue rests with a stop at the end; and the
time from the kill to the first FILLED seen after the restart.

``--rss-minutes M``: one rate for M minutes; the RSS (``/proc/<pid>/status`` VmRSS) of every process
each minute, and its growth from the first sample after a warm-up minute to the last.

Every run prints the same-run JetStream acked publish baseline and the machine, as JSON.

    python -m bench.throughput [--rates 20,40,60,80] [--seconds 30] [--symbols 10]
    python -m bench.throughput --kill-nats [--rates 30] [--seconds 20]
    python -m bench.throughput --rss-minutes 10 [--rates 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bench.common import RAISED_VENUE_LIMITS, dist, machine, start_stack
from bench.procstat import CpuMeter, cpu_delta, read_rss_kib
from bench.signal_mix import SignalMix
from bench.throughput_report import (
    ENTRY_SETTLED,
    SignalRecord,
    highest_sustainable,
    per_signal_ms,
    rate_summary,
    rss_growth,
    unprotected_positions,
)
from libs.common.bus import Publisher, connect_nats
from libs.common.config import NatsSettings
from libs.common.guard import GuardView
from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderTransition, Signal, SignalDecision
from libs.common.replay import IntentTimeline, load_journal, order_subjects, replay_timelines
from libs.common.state_machine import TERMINAL_ORDER_STATES, OrderState
from services.simulator.testing import SimControl
from tools.natsd import NatsServer
from tools.stack import SERVICES, SIMULATOR, LocalStack

P99_TARGET_MS = 50.0
CALM_WITHIN_SEC = 60.0
IDLE_SEC = 10.0
# the reconcile summary's belief-debt inputs (services/risk/belief_controller.py DebtInputs)
SUMMARY_DEBT = ("mismatch_streak", "open_gaps", "gap_breaches", "orphans", "unknown_orders")
BENCH_ENV = {
    "SIM_TICK_MS": "0",
    "SIM_START_BALANCE": "1000000000",
    **RAISED_VENUE_LIMITS,
    "GUARD_REQUIRE_KNOBS": "1",
    "RISK_MAX_NOTIONAL_USDT": "1000000000",
    "RISK_MAX_OPEN_ORDERS": "1000000",
    "RISK_ENTRY_COOLDOWN_SEC": "0",
    "KILL_API_ERROR_MAX": "1000000",
}
HOLD_POSTURE = {"RISK_TIGHTEN_AFTER": "1000000", "KILL_RECONCILE_MISMATCH_STREAK_MAX": "1000000"}
# the posture reacts (load shedding, the belief controller), but the flips' mismatch storm never latches a halt
NO_MISMATCH_HALT = {"KILL_RECONCILE_MISMATCH_STREAK_MAX": "1000000"}


# ---------------------------------------------------------------------------- the signal mix


def base_quantities(sim_url: str, symbols: int) -> dict[str, float]:
    """The first ``symbols`` synthetic symbols (unified names) with a quantity worth about 10 USDT
    (at least twice the venue's minimum notional), on the venue's step."""
    info = httpx.get(sim_url + "/fapi/v1/exchangeInfo", timeout=10).json()
    prices = SimControl(sim_url).state()["prices"]
    out: dict[str, float] = {}
    for s in info["symbols"]:
        if not (s["symbol"].startswith("S") and s["symbol"][1:4].isdigit()):
            continue  # BTC, ETH, SOL: the synthetic ones are alike
        f = {x["filterType"]: x for x in s["filters"]}
        step = float(f["LOT_SIZE"]["stepSize"])
        notional = max(10.0, 2 * float(f["MIN_NOTIONAL"]["notional"]))
        steps = math.ceil(notional / prices[s["symbol"]] / step)
        out[f"{s['baseAsset']}/USDT:USDT"] = round(steps * step, 8)
        if len(out) == symbols:
            break
    if len(out) < symbols:
        raise SystemExit(f"--symbols {symbols}: the simulator lists only {len(out)} synthetic symbols")
    return out


# ---------------------------------------------------------------------------- what the bus says


def stop_client_order_id(signal_id: str) -> str:
    """The stage-1 stop the entry service derives from a signal's entry (libs.common.protection)."""
    entry_intent = make_intent_id("signal", signal_id, Bucket.ENTRY)
    return make_client_order_id(make_intent_id("stage1", entry_intent, Bucket.SL), Bucket.SL)


def entry_client_order_id(signal_id: str) -> str:
    return make_client_order_id(make_intent_id("signal", signal_id, Bucket.ENTRY), Bucket.ENTRY)


class Observer:
    """Core subscriptions to decisions and transitions, folded into each signal's record.

    Parsed as plain JSON, not the pydantic models: the bench shares two cores with the stack."""

    def __init__(self, prefix: str, mix: SignalMix) -> None:
        self.prefix, self.mix = prefix, mix
        self.records: dict[str, SignalRecord] = {}
        self.by_entry: dict[str, SignalRecord] = {}
        self.by_stop: dict[str, SignalRecord] = {}
        self.fill_times: list[float] = []
        self.other_protective: Counter[str] = Counter()  # stops/exits not a known stage-1 (repairs)
        # what the reconciler said meanwhile: why the guard posture moved, if it did
        self.reconcile: Counter[str] = Counter()
        self.summary_max: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}  # a few details of each kind of reconciler event

    def track(self, signal: Signal) -> SignalRecord:
        r = SignalRecord(signal.signal_id, signal.symbol)
        self.records[r.signal_id] = r
        self.by_entry[entry_client_order_id(r.signal_id)] = r
        self.by_stop[stop_client_order_id(r.signal_id)] = r
        return r

    async def subscribe(self, nc: NatsClient) -> None:
        await nc.subscribe(f"{self.prefix}.{OrderTransition.family}.>", cb=self.on_transition)
        await nc.subscribe(f"{self.prefix}.{SignalDecision.family}.>", cb=self.on_decision)
        await nc.subscribe(f"{self.prefix}.reconcile.>", cb=self.on_reconcile)
        await nc.flush()

    async def on_decision(self, m: Msg) -> None:
        d = json.loads(m.data)
        r = self.records.get(d.get("signal_id", ""))
        if r is not None and not r.decided:
            r.decided, r.accepted = True, bool(d.get("accepted"))
            r.refusal, r.guard_mode = d.get("reason", ""), d.get("guard_mode")
            if not r.accepted:
                self.mix.settled(r.signal_id, filled=False)

    async def on_reconcile(self, m: Msg) -> None:
        d = json.loads(m.data)
        kind = d.get("kind", "")
        if kind == "reconcile.summary":
            for k in SUMMARY_DEBT:
                self.summary_max[k] = max(self.summary_max[k], int(d.get(k) or 0))
            return
        if kind == "reconcile.mismatch":
            key, detail = f"mismatch:{d.get('mismatch')}", d.get("detail", "")
        elif kind == "reconcile.repair":
            key, detail = f"repair:{d.get('action')}", d.get("reason", "")
        elif kind == "reconcile.gap":
            key, detail = f"gap:{d.get('state')}", d.get("reason", "")
        else:
            return
        self.reconcile[key] += 1
        seen = self.examples.setdefault(key, [])
        if len(seen) < 3:
            seen.append(f"{d.get('symbol')}: {detail}")

    async def on_transition(self, m: Msg) -> None:
        now = time.perf_counter()
        t = json.loads(m.data)
        cid, state = t.get("client_order_id", ""), t.get("to_state", "")
        if (r := self.by_entry.get(cid)) is not None:
            if r.entry_state in ENTRY_SETTLED:
                return
            r.entry_state, r.entry_reason, r.entry_code = state, t.get("reason", ""), t.get("code")
            if state == "FILLED":
                r.filled_at, r.filled_ms = now, t.get("ts_ms")
                self.fill_times.append(now)
            if state in ENTRY_SETTLED:
                r.settled_at = now
                self.mix.settled(r.signal_id, filled=state == "FILLED")
        elif (r := self.by_stop.get(cid)) is not None:
            r.stop_state, r.stop_reason, r.stop_code = state, t.get("reason", ""), t.get("code")
            if state == "SUBMITTING":
                r.stop_submitting_ms = t.get("ts_ms")
            if state == "ACKED" and r.stop_acked_at is None:
                r.stop_acked_at, r.stop_acked_ms = now, t.get("ts_ms")
        elif t.get("bucket") in ("SL", "TP", "EXIT"):
            self.other_protective[f"{t.get('bucket')}:{state}"] += 1


# ---------------------------------------------------------------------------- one rate


async def send(
    pub: Publisher,
    mix: SignalMix,
    obs: Observer,
    rate: float,
    seconds: float,
    at_half: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> tuple[list[SignalRecord], tuple[float, float], list[float]]:
    """Publish ``rate`` signals a second for ``seconds`` on a fixed schedule (open loop: never waiting
    for the previous ones). Returns the records, the (start, end) window and the driver's lateness."""
    n = max(1, round(rate * seconds))
    records: list[SignalRecord] = []
    late: list[float] = []
    tasks: set[asyncio.Task] = set()

    async def one(signal: Signal, r: SignalRecord) -> None:
        t0 = time.perf_counter()
        try:
            await pub.publish(signal, signal.signal_id)
        except Exception:  # BusUnavailable, or the bus refused: not sent, counted as publish_failed
            mix.settled(signal.signal_id, filled=False)
            return
        r.published_at = t0

    side_task: asyncio.Task | None = None
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        late.append((time.perf_counter() - due) * 1000)
        if at_half is not None and side_task is None and i >= n // 2:
            side_task = asyncio.create_task(at_half())
        signal = mix.next()
        r = obs.track(signal)
        records.append(r)
        task = asyncio.create_task(one(signal, r))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    end = start + n / rate
    if (wait := end - time.perf_counter()) > 0:
        await asyncio.sleep(wait)
    end = time.perf_counter()
    if side_task is not None:
        await side_task
    if tasks:
        await asyncio.gather(*tasks)
    return records, (start, end), late


async def drain(records: list[SignalRecord], within: float) -> tuple[bool, float]:
    """Until every record is done (see SignalRecord.done), at most ``within`` s."""
    t0 = time.perf_counter()
    while not all(r.done for r in records):
        if time.perf_counter() - t0 > within:
            return False, round(time.perf_counter() - t0, 1)
        await asyncio.sleep(0.1)
    return True, round(time.perf_counter() - t0, 1)


def venue_refusals(sim: SimControl) -> int:
    """429 / 418 answers among the simulator's recent requests (its log keeps the last 10,000)."""
    return sum(1 for r in sim.requests_log() if r["status"] in (418, 429))


async def run_rate(
    ctx: Bench,
    rate: float,
    seconds: float,
    at_half: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> dict:
    posture = await ctx.calm()
    ctx.obs.summary_max.clear()
    reconcile_before = Counter(ctx.obs.reconcile)
    bus_before = await ctx.bus_counts()
    before = ctx.cpu.sample()
    records, window, late = await send(ctx.pub, ctx.mix, ctx.obs, rate, seconds, at_half)
    in_window = ctx.cpu.sample()
    drained, drain_sec = await drain(records, ctx.drain_sec)
    after = ctx.cpu.sample()
    bus_after = await ctx.bus_counts()
    total = cpu_delta(before, after)
    spent = time.perf_counter() - window[0]
    above_idle = {k: v - ctx.idle_cpu.get(k, 0.0) * spent for k, v in total.items()}
    return {
        "rate": rate,
        "seconds": round(window[1] - window[0], 2),
        "posture_at_start": posture,
        **rate_summary(records, window),
        "driver_late_ms": {k: v for k, v in dist(late).items() if k in ("p50", "p99", "max")},
        "drained": drained,
        "drain_sec": drain_sec,
        "cpu_s_window": cpu_delta(before, in_window),
        "cpu_s_window_and_drain": total,
        "cpu_ms_per_signal": per_signal_ms(total, len(records)),
        "cpu_ms_per_signal_above_idle": per_signal_ms(above_idle, len(records)),
        "bus_per_signal": {
            k: round((bus_after.get(k, 0) - bus_before.get(k, 0)) / max(len(records), 1), 2)
            for k in sorted(bus_after)
        },
        "venue_429_418_recent": await asyncio.to_thread(venue_refusals, ctx.sim),
        "reconciler_events": dict(ctx.obs.reconcile - reconcile_before),
        "reconcile_summary_max": dict(ctx.obs.summary_max),
    }


# ---------------------------------------------------------------------------- modes


class Bench:
    def __init__(
        self, stack: LocalStack, nc: NatsClient, settings: NatsSettings, mix: SignalMix, drain_sec: float
    ) -> None:
        self.stack, self.nc, self.settings, self.mix = stack, nc, settings, mix
        self.pub = Publisher(nc.jetstream(), settings, "bench")
        self.obs = Observer(settings.subject_prefix, mix)
        self.sim = SimControl(stack[SIMULATOR.name].url)
        self.drain_sec = drain_sec
        self.cpu = CpuMeter(self.pids)
        self.idle_cpu: dict[str, float] = {}  # CPU seconds per second of each process, idle
        self.guard = GuardView(nc, settings.kv_bucket, require_knobs=True)
        self.stop = asyncio.Event()
        self.guard_task = asyncio.create_task(self.guard.run(self.stop))

    async def calm(self, within: float = CALM_WITHIN_SEC) -> dict:
        """Until risk's posture is back to normal (a rate starts from a calm stack, not from the last
        rate's or the warm-up's tightened caps), at most ``within`` s; the wait is reported."""
        t0 = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await self.guard.wait_until(lambda k: k is not None and k.mode == "normal", within)
        knobs = self.guard.current()
        return {"mode": knobs.mode if knobs else None, "waited_sec": round(time.perf_counter() - t0, 1)}

    async def close(self) -> None:
        self.stop.set()
        await self.guard_task
        self.sim.close()

    def pids(self) -> dict[str, int]:
        out = {"bench": os.getpid()}
        if isinstance(self.stack.nats, NatsServer) and self.stack.nats.proc is not None:
            out["nats-server"] = self.stack.nats.proc.pid
        for name, child in self.stack.children.items():
            if child.proc is not None:
                out[name] = child.proc.pid
        return out

    async def bus_counts(self) -> dict[str, int]:
        """Messages stored in the journal and deliveries to each durable consumer so far: per signal,
        what the bus does for one (nats-server's CPU follows these counts)."""
        js = self.nc.jetstream()
        info = await js.stream_info(self.settings.stream)
        out = {"stored": info.state.messages}
        for c in await js.consumers_info(self.settings.stream):
            if c.name and c.delivered is not None:
                out[f"delivered:{c.name}"] = c.delivered.consumer_seq or 0
        return out

    def rss_mib(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            kib = read_rss_kib(pid)
            if kib is not None:
                out[name] = round(kib / 1024, 1)
        return out

    async def warm_up(self) -> dict:
        """One signal per symbol, slowly (opens every position, sets every symbol's leverage)."""
        records, _, _ = await send(self.pub, self.mix, self.obs, 20.0, len(self.mix.symbols) / 20.0)
        drained, _ = await drain(records, self.drain_sec)
        return {
            "signals": len(records),
            "filled": sum(r.filled_at is not None for r in records),
            "drained": drained,
        }

    async def measure_idle(self, seconds: float = IDLE_SEC) -> dict[str, float]:
        """What the stack burns with no signals (reconcile ticks, risk evaluations, heartbeats), in CPU
        ms per second: taken out of ``cpu_ms_per_signal_above_idle``."""
        await self.calm()
        before, t0 = self.cpu.sample(), time.perf_counter()
        await asyncio.sleep(seconds)
        used = cpu_delta(before, self.cpu.sample())
        self.idle_cpu = {k: v / (time.perf_counter() - t0) for k, v in used.items()}
        return {k: round(v * 1000, 1) for k, v in self.idle_cpu.items()}


async def rates_mode(b: Bench, rates: list[float], seconds: float) -> dict:
    results = []
    for rate in rates:
        res = await run_rate(b, rate, seconds)
        print(
            f"[throughput] rate {rate:g}/s: filled {res['filled']}/{res['signals']}, "
            f"p99 signal->FILLED {res['signal_to_filled_ms']['p99']} ms, "
            f"p99 fill->stop {res['fill_to_stage1_stop_acked_ms']['p99']} ms, drained {res['drained']}",
            file=sys.stderr,
            flush=True,
        )
        results.append(res)
    return {
        "rates": results,
        "highest_rate_p99_signal_to_filled_under_50ms": highest_sustainable(results, P99_TARGET_MS),
    }


async def kill_nats_mode(b: Bench, rate: float, seconds: float, outage: float) -> dict:
    nats = b.stack.nats
    assert isinstance(nats, NatsServer)
    marks: dict[str, float] = {}

    async def kill_and_restart() -> None:
        b.cpu.sample()  # carry nats-server's CPU until now over its restart
        marks["kill"] = time.perf_counter()
        await asyncio.to_thread(nats.kill)
        await asyncio.sleep(outage)
        await asyncio.to_thread(nats.start)  # same port, same store
        marks["restart"] = time.perf_counter()

    res = await run_rate(b, rate, seconds, kill_and_restart)
    first = next((t for t in b.obs.fill_times if t > marks["restart"]), None)
    res["kill_to_first_fill_after_restart_sec"] = round(first - marks["kill"], 2) if first else None
    res["restart_to_first_fill_sec"] = round(first - marks["restart"], 2) if first else None
    res["checks"] = await journal_checks(b, [r for r in b.obs.records.values() if r.published_at is not None])
    return res


async def journal_checks(b: Bench, published: list[SignalRecord]) -> dict:
    """Lost intents and duplicate venue orders, from the journal and the venue (the durable truth)."""
    prefix = b.settings.subject_prefix
    nc = await connect_nats(b.settings, "bench-check", fail_fast=True)
    try:
        js = nc.jetstream()
        decisions = {
            e.msg.signal_id: e.msg
            for e in await load_journal(js, b.settings.stream, prefix, [f"{prefix}.entry.decision.>"])
            if isinstance(e.msg, SignalDecision)
        }
        timelines, _ = await replay_timelines(js, b.settings.stream, prefix, order_subjects(prefix))
    finally:
        await nc.close()

    def timeline_of(intent_id: str) -> IntentTimeline | None:
        return timelines.get(make_correlation_id(intent_id))

    no_decision, unsettled, unprotected = [], [], Counter[str]()
    accepted = filled = 0
    for r in published:
        d = decisions.get(r.signal_id)
        if d is None:
            no_decision.append(r.signal_id)
            continue
        if not d.accepted:
            continue
        accepted += 1
        entry_intent = make_intent_id("signal", r.signal_id, Bucket.ENTRY)
        t = timeline_of(entry_intent)
        if t is None or t.state not in TERMINAL_ORDER_STATES:
            unsettled.append(r.signal_id)
            continue
        if t.state is not OrderState.FILLED:
            continue
        filled += 1
        stop = timeline_of(make_intent_id("stage1", entry_intent, Bucket.SL))
        states = [e.msg.to_state for e in stop.entries if isinstance(e.msg, OrderTransition)] if stop else []
        if OrderState.ACKED not in states:
            unprotected[states[-1].value if states else "no_stop_intent"] += 1
    st = await asyncio.to_thread(b.sim.state)
    placed = Counter(o["clientOrderId"] for o in st["orders"]) + Counter(
        a["clientAlgoId"] for a in st["algo_orders"]
    )
    duplicates = {cid: n for cid, n in placed.items() if n > 1}
    return {
        "published_signals (warm-up included)": len(published),
        "without_decision": len(no_decision),
        "accepted": accepted,
        "accepted_not_settled": len(unsettled),
        "filled": filled,
        "filled_without_acked_stop (by the stop's last state)": dict(unprotected),
        "venue_client_ids_placed_twice": duplicates,
        "venue_positions_without_stop_at_end": unprotected_positions(st),
        "no_lost_intent_no_duplicate": not no_decision and not unsettled and not duplicates,
        "every_fill_got_an_acked_stop": not unprotected,
    }


async def rss_mode(b: Bench, rate: float, minutes: int) -> dict:
    series: list[dict[str, float]] = []

    async def sampler() -> None:
        for _ in range(minutes + 1):
            series.append(b.rss_mib())
            await asyncio.sleep(60.0)

    task = asyncio.create_task(sampler())
    res = await run_rate(b, rate, minutes * 60.0)
    task.cancel()
    if len(series) < minutes + 1:
        series.append(b.rss_mib())
    return {
        "rate": res,
        "rss_mib_per_minute": series,
        "rss_growth_mib_after_first_minute": rss_growth(series, warmup_samples=1),
    }


# ---------------------------------------------------------------------------- main


async def drive(stack: LocalStack, a: argparse.Namespace, rates: list[float]) -> dict:
    assert stack.nats is not None
    # the driver rides out a nats-server outage: reconnect forever, retry each publish (same msg id)
    settings = NatsSettings(url=stack.nats.url, publish_attempts=30 if a.kill_nats else 5)
    nc = await connect_nats(settings, "bench")
    mix = SignalMix(await asyncio.to_thread(base_quantities, stack[SIMULATOR.name].url, a.symbols))
    b = Bench(stack, nc, settings, mix, a.drain)
    await b.obs.subscribe(nc)
    out: dict[str, Any] = {"warm_up": await b.warm_up()}
    out["idle_cpu_ms_per_sec"] = await b.measure_idle()
    if a.kill_nats:
        out["kill_nats"] = await kill_nats_mode(b, rates[0], a.seconds, a.outage)
    elif a.rss_minutes:
        out["rss"] = await rss_mode(b, rates[0], a.rss_minutes)
    else:
        out.update(await rates_mode(b, rates, a.seconds))
    out["protective_orders_not_stage1 (reconciler repairs, exits)"] = dict(b.obs.other_protective)
    out["reconciler_event_examples"] = b.obs.examples
    await b.close()
    await nc.close()
    return out


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--rates {text!r}: a comma list of signals per second, e.g. 20,40,60") from None
    if not rates or any(r <= 0 for r in rates):
        raise SystemExit(f"--rates {text!r}: every rate must be a positive number of signals per second")
    return rates


def parse_settings(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise SystemExit(f"--set {item!r}: NAME=VALUE, e.g. RISK_MAX_OPEN_ORDERS=10")
        out[name.strip()] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rates", default="20,40,60,80", help="signals per second, a comma list")
    ap.add_argument("--seconds", type=float, default=30.0, help="sending time per rate")
    ap.add_argument("--symbols", type=int, default=10, help="synthetic symbols the signals spread over")
    ap.add_argument("--drain", type=float, default=120.0, help="longest wait for a rate's backlog")
    ap.add_argument("--kill-nats", action="store_true", help="kill -9 nats-server mid-run (first rate)")
    ap.add_argument("--outage", type=float, default=2.0, help="--kill-nats: seconds nats-server stays down")
    ap.add_argument(
        "--hold-posture",
        action="store_true",
        help="the belief controller never tightens, mismatch storms never halt (the debt is still reported)",
    )
    ap.add_argument(
        "--no-mismatch-halt",
        action="store_true",
        help="everything reacts as by default (load shedding included), but a mismatch storm never latches a halt",
    )
    ap.add_argument("--rss-minutes", type=int, default=0, help="one rate for this long, RSS each minute")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service, over the bench's own (repeatable; e.g. RISK_MAX_OPEN_ORDERS=10)",
    )
    a = ap.parse_args()
    rates = parse_rates(a.rates)
    if a.symbols < 1:
        raise SystemExit("--symbols must be at least 1")
    if a.seconds <= 0:
        raise SystemExit("--seconds must be positive")
    if a.kill_nats and a.rss_minutes:
        raise SystemExit("--kill-nats and --rss-minutes are separate runs: give one")
    run_dir = Path(tempfile.mkdtemp(prefix="erl-bench-"))
    env = {
        **BENCH_ENV,
        **(HOLD_POSTURE if a.hold_posture else {}),
        **(NO_MISMATCH_HALT if a.no_mismatch_halt else {}),
        **parse_settings(a.set),
    }
    stack = LocalStack(run_dir, extra_env={**env, "SIM_SYMBOLS": str(a.symbols)})
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "machine": machine(),
        "symbols": a.symbols,
        "settings_changed": env,
    }
    try:
        _, _, result["baseline_js_acked_publish_ms"] = start_stack(stack, SERVICES)
        result.update(asyncio.run(drive(stack, a, rates)))
    finally:
        stack.stop()
    result["logs"] = str(run_dir / "logs")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
