"""Seeded fault soak: the real stack, one seed's fault schedule, invariants checked on the history.

    python -m tools.soak --seed 1 --seconds 120         # make soak SEED=1 SECONDS=120
    python -m tools.soak --seed 1 --seconds 120 --schedule-only

Starts the stack as ``make run`` does (nats-server, simulator, risk, router, reconciler, entry, venue_stream as
processes; free ports, a temp run dir; the simulator with its rate limits on and prices that move
only when the schedule moves them). One ``random.Random(seed)`` generates the whole schedule up
front (time offset, action, parameters: printed, saved as ``schedule.json``): a strategy's entry
signals (market and limit, stop-loss / take-profit / trailing stops, bad ones), exits, opposite
signals and cancels; price paths; venue faults alone and overlapping; orders, stops and positions
changed behind the bot's back; kill -9 and restart of every service and of nats-server; operator
halts and resumes. Actions whose effect depends on the venue (an exit's size, which stop to cancel)
resolve their parameters against the venue when they run; the schedule is the same for the same
seed. After the schedule: faults cleared, everything up, a bounded quiet period until the reconciler
reports no open gaps; then the journal, the venue state, its request log and the limiter samples are
saved (``history/``) and checked by ``tools/soak_invariants.py``. Exit 1 on any violation;
``python -m tools.soak_invariants <run dir>`` checks a saved run again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from libs.common.aio import wait_event
from libs.common.bus import MSG_ID_HEADER, Publisher, connect_nats
from libs.common.config import (
    ExchangeSettings,
    NatsSettings,
    ReconcilerSettings,
    RouterSettings,
    VenueStreamSettings,
)
from libs.common.ids import Bucket, bucket_of_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import CancelIntent, Signal
from libs.common.protection import market_exit
from libs.common.replay import load_journal
from services.simulator.config import SimulatorSettings
from services.simulator.engine import Engine
from services.simulator.testing import SimControl
from tools.natsd import NatsServer
from tools.soak_invariants import (
    STOP_TYPES,
    CheckConfig,
    History,
    check,
    render,
    report_json,
    save_history,
    venue_symbol,
    violations,
)
from tools.stack import SERVICES, SIMULATOR, LocalStack

SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
SERVICE_NAMES = tuple(s.name for s in SERVICES)  # risk, router, reconciler, entry, venue_stream
NATS = "nats"
ADMIN_TOKEN = "soak-admin-token"
SIM_KEY, SIM_SECRET = "sim-key", "sim-secret"  # the simulator's dev credentials (SIM_API_KEY/SECRET)
WARMUP_SEC = 6.0  # no faults in the first seconds: positions to protect exist before the storm
CALM_TAIL_SEC = 6.0  # nor in the last ones: the settle period follows
PROTECTION_FIELDS = (
    "clientAlgoId",
    "symbol",
    "side",
    "orderType",
    "triggerPrice",
    "quantity",
    "closePosition",
    "reduceOnly",
)

# how the stack runs under the soak (on top of every setting's default)
SOAK_ENV = {
    "SIM_SYMBOLS": ",".join(venue_symbol(s) for s in SYMBOLS),
    "SIM_TICK_MS": "0",  # prices move only through the schedule
    "SIM_RATE_LIMITS": "true",
    "SIM_START_BALANCE": "1000000",
    "SIM_REQUEST_LOG_SIZE": "2000000",
    "EXCHANGE_TIMEOUT_MS": "2000",  # latency faults of 2.3-4.5 s outlast the HTTP timeout, not recvWindow
    "GUARD_REQUIRE_KNOBS": "1",
    "RISK_ADMIN_TOKEN": ADMIN_TOKEN,
    "RISK_MIN_ENTRY_CONF": "0.5",
    "RISK_ENTRY_COOLDOWN_SEC": "0",
    "RISK_MAX_OPEN_ORDERS": "60",
    "RISK_MAX_NOTIONAL_USDT": "20000",
    "KILL_API_ERROR_MAX": "150",
    "KILL_RECONCILE_MISMATCH_HALT_SEC": "20",
    "RECONCILE_REPAIR_COOLDOWN_SEC": "3",
    "VENUE_STREAM_SILENCE_SEC": "30",  # a stall ends in a recycle within a soak's span (default 120 s)
    "LOG_LEVEL": "INFO",
}

# venue faults: (weight, kind) -> rule builder; paths as Binance USD-M has them
ORDER, ALGO = "/fapi/v1/order", "/fapi/v1/algoOrder"
CREATES = [("POST", ORDER), ("POST", ALGO)]
CANCELS = [("DELETE", ORDER), ("DELETE", ALGO)]
LOOKUPS = [("GET", ORDER), ("GET", ALGO)]


@dataclass(frozen=True)
class Event:
    at: float  # seconds after the start of the schedule
    action: str
    params: dict[str, Any]


# ----------------------------------------------------------------------------- the schedule (pure)


def markets() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Start price, tick and step per unified symbol, as the simulator will have them."""
    e = Engine([venue_symbol(s) for s in SYMBOLS])
    return (
        {s: e.prices[venue_symbol(s)] for s in SYMBOLS},
        {s: e.markets[venue_symbol(s)].tick for s in SYMBOLS},
        {s: e.markets[venue_symbol(s)].step for s in SYMBOLS},
    )


def on_grid(x: float, step: float) -> float:
    return round(round(x / step) * step, 10)


def _times(rng: random.Random, start: float, end: float, mean_gap: float) -> list[float]:
    out: list[float] = []
    t = start
    while True:
        t += rng.expovariate(1 / mean_gap)
        if t >= end:
            return out
        out.append(round(t, 3))


def _windows(
    rng: random.Random, n: int, start: float, end: float, lo: float, hi: float
) -> list[tuple[float, float]]:
    """``n`` non-overlapping (from, to) windows of lo..hi seconds inside [start, end]."""
    out: list[tuple[float, float]] = []
    for _ in range(n * 4):
        if len(out) == n:
            break
        t = rng.uniform(start, end - hi)
        d = rng.uniform(lo, hi)
        if all(t + d + 2 < a or t > b + 2 for a, b in out):
            out.append((round(t, 3), round(t + d, 3)))
    return sorted(out)


def _prices(rng: random.Random, seconds: float, events: list[Event]) -> None:
    start, tick, _ = markets()
    for s in SYMBOLS:
        px = start[s]
        for t in _times(rng, 0.5, seconds - 1, 1.6):
            if rng.random() < 0.12:  # a jump through the stops / take-profits of 2-4 %
                move = rng.choice((-1, 1)) * rng.uniform(0.022, 0.04)
            else:
                move = rng.gauss(0, 0.003)
            px = px * (1 + move)
            px += 0.08 * (start[s] - px)  # pulled back towards where it started
            px = min(max(px, start[s] * 0.85), start[s] * 1.15)
            events.append(Event(t, "price", {"symbol": s, "price": on_grid(px, tick[s])}))


def _strategy(rng: random.Random, seed: int, seconds: float, events: list[Event]) -> None:
    start, _, step = markets()
    n = 0
    for t in _times(rng, 0.5, seconds - 3, 1.0):
        n += 1
        symbol = rng.choice(SYMBOLS)
        r = rng.random()
        if r < 0.65:
            opposite = r >= 0.55  # reverse the position if there is one (an opposite signal)
            limit = rng.random() < 0.4
            notional = rng.uniform(200, 3000)
            events.append(
                Event(
                    t,
                    "signal",
                    {
                        "signal_id": f"soak{seed}s{n}",
                        "symbol": symbol,
                        "side": "opposite" if opposite else rng.choice(("buy", "sell")),
                        "fallback_side": rng.choice(("buy", "sell")),
                        "qty": max(on_grid(notional / start[symbol], step[symbol]), step[symbol]),
                        "order_type": "limit" if limit else "market",
                        # limit: fraction below the mark for a buy (above for a sell); < 0 is marketable
                        "offset": (
                            rng.uniform(0.002, 0.03) if rng.random() < 0.7 else -rng.uniform(0.0005, 0.01)
                        )
                        if limit
                        else None,
                        "sl_pct": rng.uniform(0.008, 0.03) if rng.random() < 0.7 else None,
                        "tp_pct": rng.uniform(0.01, 0.05) if rng.random() < 0.5 else None,
                        "trailing": round(rng.uniform(0.5, 2.0), 1) if rng.random() < 0.15 else None,
                        # mostly above the defensive floor (0.85): refusals for confidence stay the exception
                        "confidence": round(
                            rng.uniform(0.86, 1.0) if rng.random() < 0.8 else rng.uniform(0.7, 0.86), 2
                        ),
                        "leverage": rng.choice((None, 3, 5, 10, 30)),
                    },
                )
            )
        elif r < 0.80:
            events.append(
                Event(
                    t,
                    "exit",
                    {
                        "exit_id": f"soak{seed}x{n}",
                        "symbol": symbol,
                        "fraction": rng.choice((1.0, 1.0, 0.5, rng.uniform(0.2, 0.9))),
                        "flat_side": rng.choice(("buy", "sell")),
                    },
                )
            )
        elif r < 0.92:
            events.append(
                Event(
                    t,
                    "cancel_entry",
                    {"cancel_id": f"soak{seed}c{n}", "symbol": symbol, "pick": rng.random()},
                )
            )
        else:
            events.append(
                Event(
                    t,
                    "bad_signal",
                    {
                        "signal_id": f"soak{seed}b{n}",
                        "symbol": symbol,
                        "kind": rng.choice(
                            ("schema", "limit_without_price", "low_confidence", "too_big", "unknown_symbol")
                        ),
                        "qty": max(on_grid(100_000 / start[symbol], step[symbol]), step[symbol]),
                    },
                )
            )


def _latency(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice(CREATES + CANCELS + LOOKUPS)
    return {
        "kind": "latency",
        "method": method,
        "path": path,
        "delay_ms": rng.randint(2300, 4500),
        "count": rng.randint(1, 3),
    }


def _latency_past_recv_window(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice(CREATES)
    return {
        "kind": "latency",
        "method": method,
        "path": path,
        "delay_ms": rng.randint(5500, 7000),
        "count": 1,
    }


def _timeout_after_accept(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice(CREATES)
    return {
        "kind": "timeout_after_accept",
        "method": method,
        "path": path,
        "delay_ms": rng.randint(2300, 3500),
        "count": rng.randint(1, 2),
    }


def _http_5xx(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice([*CREATES, *CANCELS, *LOOKUPS, (None, None)])  # None: any request
    return {
        "kind": "http_error",
        "status": rng.choice((500, 502, 503, 504)),
        "method": method,
        "path": path,
        "count": rng.randint(1, 4),
    }


def _unknown_after_accept(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice(CREATES)
    return {"kind": "unknown_after_accept", "method": method, "path": path, "count": rng.randint(1, 2)}


def _query_lag(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice(CREATES)
    return {
        "kind": "query_lag",
        "method": method,
        "path": path,
        "delay_ms": rng.randint(1000, 6000),
        "count": rng.randint(1, 3),
    }


def _unknown_order_while_open(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice(CANCELS)
    return {
        "kind": "binance_error",
        "code": -2011,
        "msg": "Unknown order sent.",
        "method": method,
        "path": path,
        "count": rng.randint(1, 2),
    }


def _cancel_race(kind: str) -> Callable[[random.Random], dict[str, Any]]:
    def rule(rng: random.Random) -> dict[str, Any]:
        method, path = rng.choice(CANCELS)
        return {"kind": kind, "method": method, "path": path, "count": 1}

    return rule


# fault kind -> (weight, its rule drawn from the schedule's generator); the order is the schedule's:
# a new kind goes last, or every seed's schedule changes
FAULT_KINDS: dict[str, tuple[float, Callable[[random.Random], dict[str, Any]]]] = {
    "latency": (3.0, _latency),
    "latency_past_recv_window": (1.0, _latency_past_recv_window),
    "timeout_after_accept": (3.0, _timeout_after_accept),
    "http_5xx": (3.0, _http_5xx),
    "unknown_after_accept": (2.0, _unknown_after_accept),
    "burst_429": (2.0, lambda rng: {"kind": "http_error", "status": 429, "count": rng.randint(2, 8)}),
    "burst_418": (1.0, lambda rng: {"kind": "http_error", "status": 418, "count": rng.randint(1, 2)}),
    "query_lag": (2.0, _query_lag),
    "unknown_order_while_open": (2.0, _unknown_order_while_open),
    "fill_on_cancel": (1.5, _cancel_race("fill_on_cancel")),
    "fill_after_cancel_ack": (1.5, _cancel_race("fill_after_cancel_ack")),
    # the venue keeps a closed position's protective orders (its symbol drawn below when none was)
    "keep_protection": (1.0, lambda rng: {"kind": "keep_protection", "count": 1}),
    # -1008 for a while (armed 2-6 s, drawn below); reduce-only and close-position orders pass
    "overload": (1.5, lambda rng: {"kind": "overload", "method": "POST", "path": ORDER, "count": None}),
    # the user data stream: cut, stalled (pings answered, events lost; 0 = until the silence recycle),
    # each event held back, the listenKey expired
    "stream_drop": (1.0, lambda rng: {"kind": "stream_drop", "count": 1}),
    "stream_stall": (
        1.0,
        lambda rng: {
            "kind": "stream_stall",
            "count": 1,
            "delay_ms": rng.choice((0, rng.randint(2_000, 20_000))),
        },
    ),
    "stream_delay": (
        1.0,
        lambda rng: {"kind": "stream_delay", "count": None, "delay_ms": rng.randint(200, 3_000)},
    ),
    "listen_key_expire": (0.5, lambda rng: {"kind": "listen_key_expire", "count": 1}),
}
STREAM_FAULTS = ("stream_drop", "stream_stall", "stream_delay", "listen_key_expire")


def _fault_rule(rng: random.Random) -> tuple[dict[str, Any], float]:
    """One venue fault rule and how long it may stay armed (seconds)."""
    kind = rng.choices(list(FAULT_KINDS), weights=[w for w, _ in FAULT_KINDS.values()])[0]
    armed = rng.uniform(5, 20)
    symbol = venue_symbol(rng.choice(SYMBOLS)) if rng.random() < 0.3 else None
    rule = FAULT_KINDS[kind][1](rng)
    if kind == "keep_protection":
        symbol = symbol or venue_symbol(rng.choice(SYMBOLS))
    elif kind == "overload":
        armed = rng.uniform(2, 6)
    if symbol and kind not in ("burst_429", "burst_418", *STREAM_FAULTS):
        rule["symbol"] = symbol
    return {k: v for k, v in rule.items() if v is not None or k == "count"}, round(armed, 3)


def _venue_faults(rng: random.Random, seconds: float, events: list[Event]) -> None:
    for n, t in enumerate(_times(rng, WARMUP_SEC, seconds - CALM_TAIL_SEC, 3.5), 1):
        rule, armed = _fault_rule(rng)
        events.append(Event(t, "fault_add", {"fault_id": n, "rule": rule}))
        events.append(Event(round(min(t + armed, seconds - 1), 3), "fault_clear", {"fault_id": n}))


def _behind_back(rng: random.Random, seed: int, seconds: float, events: list[Event]) -> None:
    for t in _times(rng, WARMUP_SEC, seconds - CALM_TAIL_SEC, 14):
        events.append(Event(t, "cancel_behind_back", {"symbol": rng.choice(SYMBOLS), "pick": rng.random()}))
    for t in _times(rng, WARMUP_SEC, seconds - CALM_TAIL_SEC, 30):
        events.append(
            Event(
                t,
                "set_position",
                {
                    "symbol": rng.choice(SYMBOLS),
                    "mode": rng.choice(("scale", "scale", "flip", "zero", "open")),
                    "factor": rng.choice((0.5, 1.5, 2.0)),
                    "open_notional": rng.uniform(300, 2000),
                    "open_side": rng.choice(("buy", "sell")),
                },
            )
        )
    for n, t in enumerate(_times(rng, WARMUP_SEC, seconds - CALM_TAIL_SEC, 40), 1):
        life = rng.uniform(3, 7)
        params = {
            "client_id": f"soakforeign{seed}n{n}",
            "symbol": rng.choice(SYMBOLS),
            "side": rng.choice(("buy", "sell")),
            "offset": rng.uniform(0.01, 0.03),
            "notional": rng.uniform(200, 1000),
        }
        events.append(Event(t, "foreign_order", params))
        events.append(
            Event(
                round(t + life, 3),
                "foreign_cancel",
                {"client_id": params["client_id"], "symbol": params["symbol"]},
            )
        )


def _processes(rng: random.Random, seconds: float, events: list[Event]) -> None:
    start, end = 8.0, seconds - 10.0
    for name in SERVICE_NAMES:
        for a, b in _windows(rng, max(1, round(seconds / 70)), start, end, 0.5, 8.0):
            events.append(Event(a, "kill", {"process": name}))
            events.append(Event(b, "start", {"process": name}))
    for a, b in _windows(rng, max(1, round(seconds / 150)), start, end, 1.0, 6.0):
        events.append(Event(a, "kill", {"process": NATS}))
        events.append(Event(b, "start", {"process": NATS}))


def _operator(rng: random.Random, seconds: float, events: list[Event]) -> None:
    for n, (a, b) in enumerate(_windows(rng, max(1, round(seconds / 45)), 5.0, seconds - 8, 4.0, 15.0), 1):
        events.append(Event(a, "halt", {"reason": f"soak operator halt {n}"}))
        events.append(Event(b, "resume", {"reason": f"soak operator resume {n}"}))
        if rng.random() < 0.5:  # risk dies while halted: the halt must hold across its restart
            down = round(rng.uniform(a + 0.5, a + (b - a) / 2), 3)
            events.append(Event(down, "kill", {"process": "risk"}))
            events.append(
                Event(round(min(down + rng.uniform(0.5, 3.0), b - 0.5), 3), "start", {"process": "risk"})
            )


def build_schedule(seed: int, seconds: float) -> dict[str, Any]:
    """The whole run, from one ``random.Random(seed)``: the same seed is the same schedule."""
    rng = random.Random(seed)
    events: list[Event] = []
    _prices(rng, seconds, events)
    _strategy(rng, seed, seconds, events)
    _venue_faults(rng, seconds, events)
    _behind_back(rng, seed, seconds, events)
    _processes(rng, seconds, events)
    _operator(rng, seconds, events)
    events = [e for _, e in sorted(enumerate(events), key=lambda p: (p[1].at, p[0]))]
    start, _, _ = markets()
    return {
        "seed": seed,
        "seconds": seconds,
        "symbols": list(SYMBOLS),
        "start_prices": start,
        "env": SOAK_ENV,
        "events": [asdict(e) for e in events],
    }


def schedule_lines(schedule: dict[str, Any]) -> list[str]:
    counts = Counter(e["action"] for e in schedule["events"])
    head = [
        f"soak schedule: seed {schedule['seed']}, {schedule['seconds']:g}s, {len(schedule['events'])} events ("
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + ")"
    ]
    return head + [
        f"  +{e['at']:8.3f}  {e['action']:<18} {json.dumps(e['params'], sort_keys=True)}"
        for e in schedule["events"]
    ]


# ----------------------------------------------------------------------------- running it


def check_config() -> CheckConfig:
    """The router's, the reconciler's and the venue's settings under the soak, for the checker."""
    saved = dict(os.environ)
    os.environ.update(SOAK_ENV)  # the settings classes read the environment the stack runs with
    try:
        return CheckConfig.of(
            RouterSettings(),
            ExchangeSettings(),
            ReconcilerSettings(),
            SimulatorSettings(),
            VenueStreamSettings(),
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Soak:
    def __init__(self, schedule: dict[str, Any], run_dir: Path, *, settle_max_sec: float = 120.0) -> None:
        self.schedule = schedule
        self.seed = schedule["seed"]
        self.run_dir = run_dir
        self.settle_max_sec = settle_max_sec
        self.stack = LocalStack(run_dir, extra_env=dict(SOAK_ENV))
        self.sim = SimControl()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="soak-sim")  # one control client, one thread
        self.http: httpx.AsyncClient | None = None
        self.nc: Any = None
        self.publisher: Publisher | None = None
        self.prices, self.ticks, self.steps = markets()
        self.rule_ids: dict[int, int] = {}  # schedule fault id -> simulator rule id
        self.rule_hits: dict[int, tuple[int | None, int]] = {}  # simulator rule id -> (http status, hits)
        self.limit_samples: list[dict] = []
        self.ready_samples: list[dict] = []
        self.protection_samples: list[dict] = []
        self.process_events: list[dict] = []
        self.bad_signals: dict[str, dict] = {}
        self.foreign: list[str] = []
        self.behind_back: dict[str, float] = {}
        self.stream_faults: dict[int, list[float]] = {}  # fault id -> [added, cleared] (unix s)
        self.down: set[str] = set()
        self.operator_halted = False
        self.counts: Counter[str] = Counter()
        self._state: tuple[float, dict] | None = None
        self._log = open(run_dir / "actions.jsonl", "a")  # closed in close()
        self.t0 = 0.0

    # ------------------------------------------------------------------ plumbing

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A SimControl call, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kw))

    def note(self, event: dict, result: Any) -> None:
        row = {"at": event["at"], "ran": round(time.time() - self.t0, 3), "action": event["action"]}
        self._log.write(json.dumps({**row, "params": event["params"], "result": result}, default=str) + "\n")
        self._log.flush()

    async def venue_state(self, max_age: float = 0.5) -> dict:
        if self._state is None or time.monotonic() - self._state[0] > max_age:
            self._state = (time.monotonic(), await self.call(self.sim.state))
        return self._state[1]

    async def position(self, symbol: str) -> float:
        for p in (await self.venue_state())["positions"]:
            if p["symbol"] == venue_symbol(symbol):
                return float(p["positionAmt"])
        return 0.0

    async def publish(self, msg: Any, msg_id: str) -> None:
        assert self.publisher is not None
        await self.publisher.publish(msg, msg_id)

    async def signed(self, method: str, path: str, params: dict[str, Any]) -> dict:
        """A signed /fapi request of our own (an order behind the bot's back)."""
        assert self.http is not None
        q = urlencode({**params, "timestamp": int(time.time() * 1000), "recvWindow": 5000})
        sig = hmac.new(SIM_SECRET.encode(), q.encode(), hashlib.sha256).hexdigest()
        body = f"{q}&signature={sig}"
        headers = {"X-MBX-APIKEY": SIM_KEY}
        url = self.sim.base_url + path
        if method == "POST":
            r = await self.http.post(
                url, content=body, headers={**headers, "content-type": "application/x-www-form-urlencoded"}
            )
        else:
            r = await self.http.request(method, f"{url}?{body}", headers=headers)
        return {"status": r.status_code, "body": r.text[:300]}

    # ------------------------------------------------------------------ the stack

    def start_stack(self) -> None:
        nats = self.stack.start_nats()
        print(f"[soak] nats-server {nats.url}; logs in {self.run_dir / 'logs'}", flush=True)
        sim = self.stack.add(SIMULATOR)
        if not sim.wait_ready():
            raise RuntimeError("simulator not ready")
        self.sim.base_url = sim.url
        for spec in SERVICES:
            self.stack.add(spec)
        for spec in SERVICES:
            if not self.stack[spec.name].wait_ready(60):
                raise RuntimeError(f"{spec.name} not ready: see {self.run_dir / 'logs'}")
        print(
            "[soak] stack ready: " + ", ".join(f"{n} {c.url}" for n, c in self.stack.children.items()),
            flush=True,
        )

    @property
    def nats_server(self) -> NatsServer:
        """The soak's one nats-server (started by start_stack)."""
        if not isinstance(self.stack.nats, NatsServer):
            raise RuntimeError("nats-server not started")
        return self.stack.nats

    @property
    def nats_settings(self) -> NatsSettings:
        return NatsSettings(url=self.nats_server.url, publish_timeout_sec=1.5, publish_attempts=3)

    async def connect(self) -> None:
        self.http = httpx.AsyncClient(timeout=5.0)
        self.nc = await connect_nats(self.nats_settings, "soak")
        self.publisher = Publisher(self.nc.jetstream(), self.nats_settings, "soak")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.nc is not None:
                await self.nc.close()
        if self.http is not None:
            await self.http.aclose()
        self.sim.close()
        self.pool.shutdown(wait=False)
        self._log.close()

    # ------------------------------------------------------------------ actions

    async def a_price(self, symbol: str, price: float) -> Any:
        self.prices[symbol] = price
        r = await self.call(self.sim.set_price, venue_symbol(symbol), price)
        return {"touched": len(r.get("touched") or [])}

    async def a_signal(self, **p: Any) -> Any:
        symbol = p["symbol"]
        side = p["side"]
        if side == "opposite":
            pos = await self.position(symbol)
            side = "sell" if pos > 0 else "buy" if pos < 0 else p["fallback_side"]
        px, tick = self.prices[symbol], self.ticks[symbol]
        sign = 1 if side == "buy" else -1
        price = on_grid(px * (1 - sign * p["offset"]), tick) if p["order_type"] == "limit" else None
        sl = on_grid(px * (1 - sign * p["sl_pct"]), tick) if p["sl_pct"] else None
        tp = on_grid(px * (1 + sign * p["tp_pct"]), tick) if p["tp_pct"] else None
        sig = Signal(
            signal_id=p["signal_id"],
            symbol=symbol,
            side=side,
            qty=p["qty"],
            confidence=p["confidence"],
            leverage=p["leverage"],
            order_type=p["order_type"],
            price=price,
            stop_loss_price=sl,
            take_profit_price=tp,
            trailing_callback_rate=p["trailing"],
            source="soak",
        )
        await self.publish(sig, f"signal.{sig.signal_id}")
        self.counts["signals"] += 1
        return {"side": side, "price": price, "sl": sl, "tp": tp}

    async def a_bad_signal(self, signal_id: str, symbol: str, kind: str, qty: float) -> Any:
        self.bad_signals[signal_id] = {"kind": kind, "published": False}
        base = {"kind": "signal", "v": 1, "signal_id": signal_id, "symbol": symbol, "side": "buy", "qty": qty}
        if kind in ("schema", "limit_without_price"):  # what the schema refuses: dead-lettered by entry
            raw = {**base, "qty": -1} if kind == "schema" else {**base, "order_type": "limit"}
            assert self.nc is not None
            await self.nc.jetstream().publish(
                f"erl.signal.{signal_id}",
                json.dumps(raw).encode(),
                headers={MSG_ID_HEADER: f"signal.{signal_id}"},
            )
        else:  # valid on the wire, refused by the entry gate
            fields: dict[str, Any] = {"signal_id": signal_id, "symbol": symbol, "side": "buy", "qty": qty}
            if kind == "low_confidence":
                fields.update(
                    confidence=0.1, qty=on_grid(qty / 100, self.steps[symbol]) or self.steps[symbol]
                )
            elif kind == "unknown_symbol":
                fields.update(symbol="XRP/USDT:USDT", qty=100.0)
            await self.publish(Signal(**fields, source="soak"), f"signal.{signal_id}")
        self.bad_signals[signal_id]["published"] = True
        self.counts["bad_signals"] += 1
        return {"kind": kind}

    async def a_exit(self, exit_id: str, symbol: str, fraction: float, flat_side: str) -> Any:
        pos = await self.position(symbol)
        step = self.steps[symbol]
        if pos:
            qty = on_grid(abs(pos) * fraction, step) or abs(pos)
            signed = math.copysign(qty, pos)
        else:  # nothing to close: the router must end it MOOT, never open a position
            signed = step * 10 if flat_side == "sell" else -step * 10
        intent = market_exit(
            symbol=symbol, position_qty=signed, source="soak", id_scope="soak.exit", key=exit_id
        )
        await self.publish(intent, intent.intent_id)
        self.counts["exits"] += 1
        return {
            "position": pos,
            "qty": intent.qty,
            "side": intent.side,
            "client_order_id": intent.client_order_id,
        }

    async def a_cancel_entry(self, cancel_id: str, symbol: str, pick: float) -> Any:
        st = await self.venue_state()
        resting = sorted(
            o["clientOrderId"]
            for o in st["orders"]
            if o["symbol"] == venue_symbol(symbol)
            and o["status"] == "NEW"
            and bucket_of_client_order_id(o["clientOrderId"]) is Bucket.ENTRY
        )
        if not resting:
            return "no resting entry"
        cid = resting[int(pick * len(resting))]
        corr = make_correlation_id(make_intent_id("soak.cancel", cancel_id, Bucket.ENTRY))
        msg = CancelIntent(
            correlation_id=corr, client_order_id=cid, symbol=symbol, reason="strategy cancel", source="soak"
        )
        await self.publish(msg, f"cancel.{corr}")
        self.counts["cancels"] += 1
        return {"client_order_id": cid}

    async def a_fault_add(self, fault_id: int, rule: dict) -> Any:
        rid = await self.call(self.sim.add_fault, **rule)
        self.rule_ids[fault_id] = rid
        self.rule_hits[rid] = (rule.get("status") if rule["kind"] == "http_error" else None, 0)
        self.counts["faults"] += 1
        if rule["kind"] in STREAM_FAULTS:
            self.stream_faults[fault_id] = [time.time(), math.inf]
        return {"rule": rid}

    async def record_hits(self) -> None:
        for r in await self.call(self.sim.faults):
            if r["id"] in self.rule_hits:
                self.rule_hits[r["id"]] = (self.rule_hits[r["id"]][0], int(r["hits"]))

    async def a_fault_clear(self, fault_id: int) -> Any:
        rid = self.rule_ids.get(fault_id)
        if rid is None:
            return "never added"
        await self.record_hits()
        with contextlib.suppress(RuntimeError):  # already gone (cleared with the rest)
            await self.call(self.sim.remove_fault, rid)
        if fault_id in self.stream_faults:
            self.stream_faults[fault_id][1] = time.time()
        return {"rule": rid, "hits": self.rule_hits[rid][1]}

    async def a_cancel_behind_back(self, symbol: str, pick: float) -> Any:
        st = await self.venue_state(max_age=0)
        vs = venue_symbol(symbol)
        stops = sorted(
            a["clientAlgoId"] for a in st["algo_orders"] if a["symbol"] == vs and a["algoStatus"] == "NEW"
        )
        if not stops:
            return "nothing resting"
        cid = stops[int(pick * len(stops))]
        self.behind_back[cid] = time.time()
        await self.call(self.sim.cancel_behind_back, vs, cid)
        self.counts["behind_back"] += 1
        return {"client_order_id": cid}

    async def a_set_position(
        self, symbol: str, mode: str, factor: float, open_notional: float, open_side: str
    ) -> Any:
        pos = await self.position(symbol)
        step = self.steps[symbol]
        if pos == 0 or mode == "open":
            amount = on_grid(open_notional / self.prices[symbol], step) * (1 if open_side == "buy" else -1)
        elif mode == "scale":
            amount = on_grid(pos * factor, step)
        elif mode == "flip":
            amount = -pos
        else:
            amount = 0.0
        await self.call(self.sim.set_position, venue_symbol(symbol), amount)
        self._state = None
        self.counts["behind_back"] += 1
        return {"from": pos, "to": amount}

    async def a_foreign_order(
        self, client_id: str, symbol: str, side: str, offset: float, notional: float
    ) -> Any:
        px = self.prices[symbol]
        price = on_grid(px * (1 - offset) if side == "buy" else px * (1 + offset), self.ticks[symbol])
        qty = max(on_grid(notional / px, self.steps[symbol]), self.steps[symbol])
        self.foreign.append(client_id)
        params = {
            "symbol": venue_symbol(symbol),
            "side": side.upper(),
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": qty,
            "price": price,
            "newClientOrderId": client_id,
        }
        self.counts["behind_back"] += 1
        return await self.signed("POST", ORDER, params)

    async def a_foreign_cancel(self, client_id: str, symbol: str) -> Any:
        return await self.signed(
            "DELETE", ORDER, {"symbol": venue_symbol(symbol), "origClientOrderId": client_id}
        )

    async def a_kill(self, process: str) -> Any:
        if process in self.down:
            return "already down"
        if process == NATS:
            self.nats_server.kill()
        else:
            self.stack[process].kill()
        self.process_events.append({"ts": time.time(), "process": process, "up": False})
        self.down.add(process)
        self.counts["kills"] += 1
        return "killed"

    async def a_start(self, process: str) -> Any:
        if process not in self.down:
            return "not down"
        if process == NATS:
            # in this thread: a child dies with the thread that started it (PR_SET_PDEATHSIG)
            self.nats_server.start()
        else:
            self.stack[process].start()
        self.process_events.append({"ts": time.time(), "process": process, "up": True})
        self.down.discard(process)
        return "started"

    async def operator(self, action: str, reason: str) -> Any:
        assert self.http is not None
        url = self.stack["risk"].url + f"/{action}"
        last: Any = None
        for _ in range(6):  # an operator tries again while risk restarts
            try:
                r = await self.http.post(
                    url, json={"reason": reason}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                )
                last = {"status": r.status_code}
                if r.status_code == 200:
                    self.operator_halted = action == "halt"
                    self.counts[action] += 1
                    return last
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}"
            await asyncio.sleep(2.0)
        return {"gave_up": last}

    async def a_halt(self, reason: str) -> Any:
        return await self.operator("halt", reason)

    async def a_resume(self, reason: str) -> Any:
        return await self.operator("resume", reason)

    async def do(self, event: dict) -> None:
        handler = getattr(self, f"a_{event['action']}")
        try:
            result = await asyncio.wait_for(handler(**event["params"]), 30)
        except Exception as e:
            result = f"error: {type(e).__name__}: {e}"
            self.counts["action_errors"] += 1
        self.note(event, result)

    async def sample_ready(self) -> None:
        """Each service's /readyz, and whether its process runs."""
        assert self.http is not None
        for name in SERVICE_NAMES:
            child = self.stack[name]
            row = {"ts": time.time(), "service": name, "alive": child.alive, "ready": False, "reason": ""}
            try:
                r = await self.http.get(child.url + "/readyz", timeout=2.0)
                row.update(ready=r.status_code == 200, reason=r.json().get("reason", ""))
            except (httpx.HTTPError, ValueError) as e:
                row["reason"] = type(e).__name__
            self.ready_samples.append(row)

    async def sample_protection(self, stop: asyncio.Event) -> None:
        """Every second: the venue's positions and resting stops (for the gap invariant)."""
        while not stop.is_set():
            with contextlib.suppress(Exception):
                st = await self.call(self.sim.state, open_only=True)
                self.protection_samples.append(
                    {
                        "ts": st["ts_ms"] / 1000,
                        "positions": {p["symbol"]: float(p["positionAmt"]) for p in st["positions"]},
                        "stops": [
                            {k: a[k] for k in PROTECTION_FIELDS}
                            for a in st["algo_orders"]
                            if a["orderType"] in STOP_TYPES
                        ],
                    }
                )
            await wait_event(stop, 1.0)

    async def sample(self, stop: asyncio.Event) -> None:
        """Every 2 s: the venue's rate limiter and every service's readiness."""
        while not stop.is_set():
            with contextlib.suppress(Exception):
                self.limit_samples.append({"ts": time.time(), "limits": await self.call(self.sim.limits)})
            with contextlib.suppress(Exception):
                await self.sample_ready()
            await wait_event(stop, 2.0)

    # ------------------------------------------------------------------ phases

    async def run_schedule(self) -> None:
        self.t0 = time.time()
        pending: set[asyncio.Task] = set()
        for event in self.schedule["events"]:
            delay = self.t0 + event["at"] - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if event["action"] in ("kill", "start"):
                await self.do(event)  # in order, and (start) from this thread
                continue
            task = asyncio.create_task(self.do(event))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=40)

    async def get(self, name: str, path: str) -> dict:
        assert self.http is not None
        r = await self.http.get(self.stack[name].url + path)
        r.raise_for_status()
        return r.json()

    async def settle(self) -> dict[str, Any]:
        """Faults cleared, every process up, then quiet until the reconciler reports no open gap and the
        router no unknown order (twice in a row, a few seconds apart), bounded."""
        began = time.time()
        await self.record_hits()
        await self.call(self.sim.clear_faults)
        if NATS in self.down:
            await self.a_start(NATS)
        for name in list(self.down):
            await self.a_start(name)
        for name in SERVICE_NAMES:
            deadline = time.time() + 60
            while time.time() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await self.http.get(self.stack[name].url + "/readyz")).status_code == 200:  # type: ignore[union-attr]
                        break
                await asyncio.sleep(0.5)
        if self.operator_halted:
            await self.operator("resume", "soak: settle")
        quiet_polls = 0
        status: dict[str, Any] = {}
        while time.time() - began < self.settle_max_sec:
            await asyncio.sleep(3.0)
            try:
                rec = await self.get("reconciler", "/status")
                rtr = await self.get("router", "/status")
            except (httpx.HTTPError, ValueError):
                quiet_polls = 0
                continue
            summary = rec.get("last_summary") or {}
            fresh = (summary.get("ts_ms") or 0) / 1000 > began + 3
            status = {
                "open_gaps": rec.get("open_gaps"),
                "unknown_orders": rtr.get("unknown_orders"),
                "fresh": fresh,
            }
            quiet = fresh and not rec.get("open_gaps") and not rtr.get("unknown_orders")
            quiet_polls = quiet_polls + 1 if quiet else 0
            if quiet_polls >= 2 and time.time() - began >= 15:
                break
        status["settled_after_sec"] = round(time.time() - began, 1)
        status["quiet"] = quiet_polls >= 2
        return status

    async def collect(self) -> History:
        venue = await self.call(self.sim.state)
        requests = await self.call(self.sim.requests_log)
        self.limit_samples.append({"ts": time.time(), "limits": await self.call(self.sim.limits)})
        await self.sample_ready()
        try:
            unknown = (await self.get("router", "/status")).get("unknown_orders")
        except httpx.HTTPError:
            unknown = None
        nc = await connect_nats(self.nats_settings, "soak-replay", fail_fast=True)
        try:
            entries = await load_journal(nc.jetstream(), "ERL", "erl", ["erl.>"])
        finally:
            await nc.close()
        injected: Counter[str] = Counter()
        for status, hits in self.rule_hits.values():
            if status is not None:
                injected[str(status)] += hits
        return History(
            entries=entries,
            venue=venue,
            requests=requests,
            limit_samples=self.limit_samples,
            ready_samples=self.ready_samples,
            protection_samples=self.protection_samples,
            process_events=self.process_events,
            injected=dict(injected),
            foreign_orders=self.foreign,
            behind_back_cancels=self.behind_back,
            stream_faults=[(a, b) for a, b in self.stream_faults.values()],
            bad_signals=self.bad_signals,
            router_unknown=unknown,
            collected_at=time.time(),
            config=check_config(),
        )

    async def run(self) -> History:
        await self.connect()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample(stop))
        protection = asyncio.create_task(self.sample_protection(stop))
        try:
            print(f"[soak] running the schedule for {self.schedule['seconds']:g}s", flush=True)
            await self.run_schedule()
            print(f"[soak] schedule done: {dict(sorted(self.counts.items()))}; settling", flush=True)
            settled = await self.settle()
            print(f"[soak] settle: {settled}", flush=True)
            stop.set()
            await sampler
            await protection
            history = await self.collect()
            (self.run_dir / "settle.json").write_text(json.dumps(settled, indent=1))
            return history
        finally:
            stop.set()
            sampler.cancel()
            protection.cancel()
            await self.close()


def seed_arg(text: str) -> int:
    """An integer seed, or 'commit': the first 8 hex digits of HEAD (printed, so it reproduces)."""
    if text != "commit":
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer or 'commit': {text!r}") from None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise argparse.ArgumentTypeError(f"--seed commit needs a git checkout: {e}") from None
    return int(head[:8], 16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seed",
        type=seed_arg,
        default=1,
        help="an integer, or 'commit': derived from the checked-out commit (CI: a new schedule per commit)",
    )
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--run-dir", type=Path, help="default: a new temp dir")
    p.add_argument("--settle-max", type=float, default=120.0, help="longest quiet period at the end (s)")
    p.add_argument("--schedule-only", action="store_true", help="print the schedule and exit")
    p.add_argument("--quiet-schedule", action="store_true", help="print the schedule's summary line only")
    a = p.parse_args(argv)

    schedule = build_schedule(a.seed, a.seconds)
    lines = schedule_lines(schedule)
    print("\n".join(lines[:1] if a.quiet_schedule else lines), flush=True)
    if a.schedule_only:
        return 0
    run_dir = a.run_dir or Path(tempfile.mkdtemp(prefix=f"erl-soak-{a.seed}-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "schedule.json").write_text(json.dumps(schedule, indent=1))
    print(f"[soak] run dir {run_dir} (schedule.json, actions.jsonl, logs/, history/, report.txt)", flush=True)

    soak = Soak(schedule, run_dir, settle_max_sec=a.settle_max)
    started = time.time()
    try:
        soak.start_stack()
        history = asyncio.run(soak.run())
    finally:
        soak.stack.stop()
    save_history(run_dir, history)
    results = check(history)
    text = render(results)
    (run_dir / "report.txt").write_text(text + "\n")
    (run_dir / "report.json").write_text(json.dumps(report_json(results), indent=1))
    n = violations(results)
    print(text)
    print(
        f"\n[soak] seed {a.seed}: {len(schedule['events'])} scheduled events, {len(history.entries)} journal "
        f"entries, {len(history.requests)} venue requests, {time.time() - started:.0f}s; "
        f"{n} violation(s). Reproduce: make soak SEED={a.seed} SECONDS={a.seconds:g}; re-check: "
        f"python -m tools.soak_invariants {run_dir}",
        flush=True,
    )
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
