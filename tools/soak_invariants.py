"""Invariants of a soak run, checked on its history. Pure: no bus, no venue, no clock.

A soak (``tools/soak.py``) drives the real stack through a seeded fault schedule, then collects
what happened: the whole journal, the venue's state (every order it ever took), its request log,
samples of its rate limiter, and what the soak itself did behind the bot's back. ``check`` judges
that history; every violation carries the replay of the intent it is about.

    python -m tools.soak_invariants <run dir>     # check a saved run again (exit 1 on a violation)
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from libs.common.config import ExchangeSettings, ReconcilerSettings, RouterSettings, VenueStreamSettings
from libs.common.ids import Bucket, bucket_of_client_order_id, make_client_order_id, make_intent_id
from libs.common.messages import (
    CancelIntent,
    CancelResult,
    DeadLetter,
    GuardKnobs,
    HaltCommand,
    MismatchEvent,
    OrderIntent,
    OrderRetry,
    OrderTransition,
    ProtectionGap,
    RepairAction,
    ReplaceIntent,
    ReplaceTransition,
    SignalDecision,
    decode,
    encode,
)
from libs.common.replay import IntentTimeline, JournalEntry, describe, fold
from libs.common.state_machine import TERMINAL_ORDER_STATES, OrderState
from libs.venue.error_policy import VENUE_PAUSE_REASONS
from libs.venue.parsing import venue_symbol
from services.risk.kill_switch import Trigger
from services.simulator.config import SimulatorSettings

S = OrderState
RESTING = frozenset({S.ACKED, S.PARTIALLY_FILLED})  # a legitimate open end: the order rests on the venue
NEVER_PLACED = frozenset({S.REJECTED, S.FAILED, S.BLOCKED, S.MOOT})
STOP_TYPES = frozenset({"STOP_MARKET", "STOP"})  # stop-losses (trailing stops are extra, not counted)
CREATE_PATHS = frozenset({"/fapi/v1/order", "/fapi/v1/algoOrder"})
# the kill switch's latched triggers: lost money waits for an operator's /resume
LATCHED_TRIGGERS = frozenset({Trigger.DRAWDOWN.value})
REPLAY_LINES = 40  # per intent in a report: the first and last half of its timeline

# the table's order; each name is one row
ONE_ORDER_PER_ID = "one venue order per client id"
NO_UNJOURNALED = "no venue order without a journaled intent"
PROTECTED_AT_END = "every open position has a stop at the end"
PROTECTED_IN_BOUND = "every open position has its stop, at its price, within the gap bound"
ONE_STOP_PER_SIDE = "never two live stops per position side"
NO_ENTRY_WHILE_HALTED = "no entry reached the venue while halted"
EXITS_NEVER_BLOCKED = "exits and protection never policy-blocked"
NO_INTENT_LOST = "no intent lost"
SETTLED_IN_BOUND = "every intent settled (or UNKNOWN with the resolver) in bound"
JOURNAL_MATCHES_VENUE = "journal agrees with the venue at the end"
RETRIES_BOUNDED = "retries bounded"
WEIGHT_UNDER_LIMIT = "REST weight under the limit, no 429/418 of our making"
BAD_SIGNALS_REFUSED = "bad signals refused, never at the venue"
SERVICES_READY = "every running service ready again in bound"
LATCHES_HOLD = "kill-switch latches hold across restarts"
INVARIANTS = (
    ONE_ORDER_PER_ID,
    NO_UNJOURNALED,
    PROTECTED_AT_END,
    PROTECTED_IN_BOUND,
    ONE_STOP_PER_SIDE,
    NO_ENTRY_WHILE_HALTED,
    EXITS_NEVER_BLOCKED,
    NO_INTENT_LOST,
    SETTLED_IN_BOUND,
    JOURNAL_MATCHES_VENUE,
    RETRIES_BOUNDED,
    WEIGHT_UNDER_LIMIT,
    BAD_SIGNALS_REFUSED,
    SERVICES_READY,
    LATCHES_HOLD,
)


def _default(cls: type, name: str) -> Any:
    """A setting's one default (the checker's own synthetic histories use them)."""
    return cls.model_fields[name].default  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CheckConfig:
    """What the stack under test was configured with, and the checker's own tolerances."""

    max_attempts: int = _default(RouterSettings, "retry_max_attempts")
    max_elapsed_sec: float = _default(RouterSettings, "retry_max_elapsed_sec")
    recv_window_ms: int = _default(ExchangeSettings, "recv_window_ms")
    ambiguity_margin_ms: int = _default(ExchangeSettings, "ambiguity_margin_ms")
    weight_limit_1m: int = _default(SimulatorSettings, "weight_limit_1m")
    # a halt reaches the router through the KV bucket: a send gated just before it may land just after
    halt_grace_sec: float = 2.0
    # from an intent's publication to a settled, resting or UNKNOWN state (process downtime included)
    settle_bound_sec: float = 60.0
    # scheduling noise on the router's own deadlines (event loop, journal publish)
    timing_slack_sec: float = 1.5
    # a running service (its process up) answers /readyz 200 again within this (bus outages included)
    ready_bound_sec: float = 30.0
    # protection during the run: a stop counts where the last stop asked for belongs (STOP_PRICE_TOLERANCE)
    # and when it covers the size up to RECONCILE_MIN_DELTA_RATIO (smaller shortfalls wait by design)
    stop_price_tolerance: float = _default(ReconcilerSettings, "stop_price_tolerance")
    min_delta_ratio: float = _default(ReconcilerSettings, "min_delta_ratio")
    # a gap must close within: detection (RECONCILE_MAX_INTERVAL_SEC) + RECONCILE_PROTECTION_GAP_TTL_SEC
    # (at the TTL the reconciler escalates: halt, emergency exit) + slack, counting only the time the
    # router, the reconciler and the bus were up and ready (nothing repairs while they are not)
    gap_ttl_sec: float = _default(ReconcilerSettings, "protection_gap_ttl_sec")
    max_reconcile_interval_sec: float = _default(ReconcilerSettings, "max_interval_sec")
    gap_slack_sec: float = 5.0
    # a stream fault can hide a change from a reconciler that trusts the stream until its slower sweep
    # (RECONCILE_STREAM_UP_SWEEP_SEC), or the silence recycle (VENUE_STREAM_SILENCE_SEC) that ends a stall
    stream_up_sweep_sec: float = _default(ReconcilerSettings, "stream_up_sweep_sec")
    stream_silence_sec: float = _default(VenueStreamSettings, "silence_sec")

    @classmethod
    def of(
        cls,
        router: RouterSettings,
        exchange: ExchangeSettings,
        reconciler: ReconcilerSettings,
        simulator: SimulatorSettings,
        stream: VenueStreamSettings | None = None,
    ) -> CheckConfig:
        """The configuration a stack ran with (the checker's own tolerances at their defaults)."""
        return cls(
            max_attempts=router.retry_max_attempts,
            max_elapsed_sec=router.retry_max_elapsed_sec,
            recv_window_ms=exchange.recv_window_ms,
            ambiguity_margin_ms=exchange.ambiguity_margin_ms,
            weight_limit_1m=simulator.weight_limit_1m,
            stop_price_tolerance=reconciler.stop_price_tolerance,
            min_delta_ratio=reconciler.min_delta_ratio,
            gap_ttl_sec=reconciler.protection_gap_ttl_sec,
            max_reconcile_interval_sec=reconciler.max_interval_sec,
            stream_up_sweep_sec=reconciler.stream_up_sweep_sec,
            stream_silence_sec=(stream or VenueStreamSettings()).silence_sec,
        )


@dataclass
class History:
    """Everything a soak run left behind (see ``tools/soak.py``: ``collect``)."""

    entries: list[JournalEntry]
    venue: dict  # GET /_sim/state at the end: every order and algo order the venue ever took
    requests: list[dict]  # GET /_sim/requests: every /fapi request (ts, method, path, params, status, code)
    limit_samples: list[dict] = field(default_factory=list)  # {"ts": s, "limits": GET /_sim/limits}
    # {"ts": s, "service": name, "alive": process up, "ready": /readyz 200, "reason": its answer}
    ready_samples: list[dict] = field(default_factory=list)
    # every second: {"ts": s, "positions": {venue symbol: qty}, "stops": [resting stop-type algo orders]}
    protection_samples: list[dict] = field(default_factory=list)
    # {"ts": s, "process": name, "up": bool}: the soak's kills and starts
    process_events: list[dict] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)  # http_error status -> requests it answered
    foreign_orders: list[str] = field(default_factory=list)  # client ids the soak placed itself
    behind_back_cancels: dict[str, float] = field(default_factory=dict)  # client id -> when (unix s)
    stream_faults: list[tuple[float, float]] = field(default_factory=list)  # (added, cleared) unix s
    bad_signals: dict[str, dict] = field(default_factory=dict)  # signal id -> {"kind", "published"}
    router_unknown: list[str] | None = None  # the router's /status unknown_orders at the end
    collected_at: float = 0.0  # unix s: when the journal was read
    config: CheckConfig = field(default_factory=CheckConfig)


@dataclass
class Violation:
    invariant: str
    what: str
    detail: str = ""
    correlation_id: str | None = None
    replay: list[str] = field(default_factory=list)


@dataclass
class Result:
    name: str
    checks: int = 0
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def entry_client_order_id(signal_id: str) -> str:
    """The client id the entry service gives a signal's entry."""
    return make_client_order_id(make_intent_id("signal", signal_id, Bucket.ENTRY), Bucket.ENTRY)


def replay_lines(t: IntentTimeline | None, limit: int = REPLAY_LINES) -> list[str]:
    if t is None:
        return ["(no journaled timeline)"]
    lines = [f"correlation_id {t.correlation_id} state {t.state.value if t.state else '-'}"]
    body = [describe(e) for e in t.entries]
    if len(body) > limit:
        half = limit // 2
        body = [*body[:half], f"... {len(body) - limit} more ...", *body[-half:]]
    return lines + body


def _sec(ts_ms: int | float) -> float:
    return ts_ms / 1000


def _fmt_ts(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


@dataclass
class _Index:
    timelines: dict[str, IntentTimeline]
    by_client_id: dict[str, IntentTimeline]  # an order's own timeline (the intent that places it)
    journaled_ids: set[str]  # client ids some journaled intent asked for

    def of(self, client_order_id: str) -> IntentTimeline | None:
        return self.by_client_id.get(client_order_id)


def index(entries: Iterable[JournalEntry]) -> _Index:
    timelines = fold(entries)
    by_client_id: dict[str, IntentTimeline] = {}
    journaled: set[str] = set()
    for t in timelines.values():
        for e in t.entries:
            m = e.msg
            if isinstance(m, OrderIntent):
                journaled.add(m.client_order_id)
            elif isinstance(m, ReplaceIntent):
                journaled.add(m.new_order.client_order_id)
        if t.intent is not None:
            by_client_id.setdefault(t.intent.client_order_id, t)
    return _Index(timelines, by_client_id, journaled)


def venue_orders_by_client_id(venue: dict) -> dict[str, list[dict]]:
    """Client id -> the venue orders (and algo orders) that carry it, oldest first. The order a triggered
    algo order creates carries the algo's client id: it is that algo's execution, not a second order."""
    algos = venue.get("algo_orders", [])
    executions = {int(a["actualOrderId"]) for a in algos if a.get("actualOrderId")}
    out: dict[str, list[dict]] = defaultdict(list)
    for o in venue.get("orders", []):
        if int(o["orderId"]) not in executions:
            out[o["clientOrderId"]].append({**o, "_kind": "order", "_id": int(o["orderId"])})
    for a in algos:
        out[a["clientAlgoId"]].append({**a, "_kind": "algo", "_id": int(a["algoId"])})
    for v in out.values():
        v.sort(key=lambda x: x["_id"])
    return dict(out)


def _order_line(o: dict) -> str:
    if o["_kind"] == "algo":
        return (
            f"algo {o['_id']} {o['orderType']} {o['side']} {o['symbol']} status={o['algoStatus']} "
            f"trigger={o['triggerPrice']} closePosition={o['closePosition']} created={o['createTime']} "
            f"updated={o['updateTime']} actualOrderId={o.get('actualOrderId') or '-'}"
        )
    return (
        f"order {o['_id']} {o['type']} {o['side']} {o['symbol']} status={o['status']} "
        f"qty={o['origQty']} executed={o['executedQty']} reduceOnly={o['reduceOnly']} "
        f"time={o['time']} updated={o['updateTime']}"
    )


def _venue_state_of(o: dict, orders_by_id: dict[int, dict]) -> tuple[bool, bool]:
    """(open, filled) for a venue order or algo order."""
    if o["_kind"] == "order":
        return o["status"] in ("NEW", "PARTIALLY_FILLED"), o["status"] == "FILLED"
    status = o["algoStatus"]
    if status in ("NEW", "TRIGGERING"):
        return True, False
    made = orders_by_id.get(int(o["actualOrderId"])) if o.get("actualOrderId") else None
    if made is None:
        return False, False
    return made["status"] in ("NEW", "PARTIALLY_FILLED"), made["status"] == "FILLED"


# ----------------------------------------------------------------------------- invariants


def check_one_order_per_id(h: History, ix: _Index, venue: dict[str, list[dict]]) -> list[Result]:
    one = Result(ONE_ORDER_PER_ID, checks=len(venue))
    unjournaled = Result(NO_UNJOURNALED, checks=len(venue))
    foreign = set(h.foreign_orders)
    for cid, orders in sorted(venue.items()):
        t = ix.of(cid)
        if len(orders) > 1:
            one.violations.append(
                Violation(
                    ONE_ORDER_PER_ID,
                    f"{cid}: {len(orders)} venue orders",
                    "\n".join(_order_line(o) for o in orders),
                    t.correlation_id if t else None,
                    replay_lines(t),
                )
            )
        if cid not in ix.journaled_ids and cid not in foreign:
            unjournaled.violations.append(
                Violation(
                    NO_UNJOURNALED,
                    f"{cid}: on the venue, never journaled as an intent",
                    "\n".join(_order_line(o) for o in orders),
                    t.correlation_id if t else None,
                    replay_lines(t),
                )
            )
    if foreign:
        unjournaled.notes.append(f"{len(foreign)} orders placed behind the bot's back by the soak, exempt")
    return [one, unjournaled]


def _symbol_story(h: History, symbol: str, since_ms: int) -> list[str]:
    """What the reconciler journaled about a venue symbol since ``since_ms`` (gaps, repairs, mismatches)."""
    out = []
    for e in h.entries:
        m = e.msg
        if (
            isinstance(m, ProtectionGap | RepairAction | MismatchEvent)
            and venue_symbol(m.symbol) == symbol
            and m.ts_ms >= since_ms
        ):
            out.append(describe(e))
    return out[-REPLAY_LINES:] or ["(nothing journaled about this symbol)"]


def check_protection(h: History, ix: _Index, venue: dict[str, list[dict]]) -> list[Result]:
    at_end = Result(PROTECTED_AT_END)
    algos = [o for orders in venue.values() for o in orders if o["_kind"] == "algo"]
    for p in h.venue.get("positions", []):
        qty = float(p["positionAmt"])
        if qty == 0:
            continue
        at_end.checks += 1
        symbol, side = p["symbol"], "SELL" if qty > 0 else "BUY"
        stops = [
            a
            for a in algos
            if a["symbol"] == symbol
            and a["algoStatus"] == "NEW"
            and a["orderType"] in STOP_TYPES
            and a["side"] == side
            and (a["closePosition"] or (a["reduceOnly"] and float(a["quantity"]) >= abs(qty) - 1e-9))
        ]
        if not stops:
            resting = [_order_line(a) for a in algos if a["symbol"] == symbol and a["algoStatus"] == "NEW"]
            at_end.violations.append(
                Violation(
                    PROTECTED_AT_END,
                    f"{symbol} position {qty} has no stop on the {side} side",
                    "resting algo orders: " + ("; ".join(resting) or "none"),
                    replay=_symbol_story(h, symbol, int((h.collected_at - 120) * 1000)),
                )
            )

    two = Result(ONE_STOP_PER_SIDE)
    now_ms = int(h.collected_at * 1000) or 2**62
    spans: dict[tuple[str, str], list[tuple[int, int, dict]]] = defaultdict(list)
    for a in algos:
        if a["orderType"] not in STOP_TYPES:
            continue
        start = int(a["createTime"])
        if a["algoStatus"] == "NEW":
            end = now_ms
        elif a["clientAlgoId"] in h.behind_back_cancels:
            # a cancel behind the bot's back does not stamp the order's update time: the soak knows when
            end = int(h.behind_back_cancels[a["clientAlgoId"]] * 1000)
        else:
            end = int(a["updateTime"])
        spans[(a["symbol"], a["side"])].append((start, end, a))
    for (symbol, side), group in sorted(spans.items()):
        two.checks += 1
        group.sort(key=lambda x: x[0])
        live: list[tuple[int, int, dict]] = []
        for start, end, a in group:
            live = [x for x in live if x[1] > start]
            for other in live:
                overlap = min(end, other[1]) - start
                if overlap > 0:
                    t1, t2 = ix.of(other[2]["clientAlgoId"]), ix.of(a["clientAlgoId"])
                    two.violations.append(
                        Violation(
                            ONE_STOP_PER_SIDE,
                            f"{symbol} {side}: stops {other[2]['clientAlgoId']} and {a['clientAlgoId']} "
                            f"both live for {overlap} ms",
                            f"{_order_line(other[2])}\n{_order_line(a)}",
                            t2.correlation_id if t2 else None,
                            replay_lines(t1) + replay_lines(t2),
                        )
                    )
            live.append((start, end, a))
    return [at_end, two]


def _impaired(h: History, sample_period: float = 2.0) -> list[tuple[float, float]]:
    """Stretches in which nothing could repair protection: the router, the reconciler or the bus down
    (the soak's kills), or the router or the reconciler not ready (its /readyz samples; a stretch starts
    one sample period early, as it may have begun just after the last good sample)."""
    out: list[tuple[float, float]] = []
    down: dict[str, float] = {}
    for ev in sorted(h.process_events, key=lambda x: x["ts"]):
        if ev["process"] not in ("router", "reconciler", "nats"):
            continue
        if not ev["up"]:
            down.setdefault(ev["process"], ev["ts"])
        elif ev["process"] in down:
            out.append((down.pop(ev["process"]), ev["ts"]))
    out += [(since, math.inf) for since in down.values()]
    by_service: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(h.ready_samples, key=lambda x: x["ts"]):
        if r["service"] in ("router", "reconciler"):
            by_service[r["service"]].append(r)
    for samples in by_service.values():
        since: float | None = None
        for r in samples:
            if not r["ready"]:
                since = r["ts"] - sample_period if since is None else since
            elif since is not None:
                out.append((since, r["ts"]))
                since = None
        if since is not None:
            out.append((since, math.inf))
    return out


def _overlap(a: float, b: float, spans: list[tuple[float, float]]) -> float:
    """Seconds of [a, b] covered by the union of ``spans``."""
    total, cursor = 0.0, a
    for s, e in sorted(spans):
        s, e = max(s, cursor), min(e, b)
        if e > s:
            total += e - s
            cursor = e
    return total


def asked_stops(entries: Iterable[JournalEntry]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(venue symbol, closing side) -> [(when, stop price)] of every stop-loss the journal asked for."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for e in entries:
        m = e.msg
        o = m.new_order if isinstance(m, ReplaceIntent) else m if isinstance(m, OrderIntent) else None
        if o is not None and o.bucket is Bucket.SL and o.order_type == "stop_market" and o.stop_price:
            out[(venue_symbol(o.symbol), o.side.upper())].append((_sec(m.ts_ms), o.stop_price))
    for v in out.values():
        v.sort()
    return out


def sample_coverage(
    sample: dict, symbol: str, qty: float, asked: list[tuple[float, float]], cfg: CheckConfig
) -> str:
    """'covered', or why the position in ``sample`` is not: a stop on the closing side at the last stop
    price asked for (as of the sample), reduce-only or close-position, covering the size."""
    side = "SELL" if qty > 0 else "BUY"
    price = next((p for ts, p in reversed(asked) if ts <= sample["ts"]), None)
    if price is None:
        return "no stop asked for yet"
    stops = [
        a
        for a in sample["stops"]
        if a["symbol"] == symbol and a["side"] == side and (a["closePosition"] or a["reduceOnly"])
    ]
    right = [a for a in stops if abs(float(a["triggerPrice"]) - price) <= cfg.stop_price_tolerance * price]
    if not right:
        return (
            f"stops at {', '.join(str(a['triggerPrice']) for a in stops)}, asked for {price}"
            if stops
            else f"no stop (asked for {price})"
        )
    covered = sum(float(a["quantity"] or 0) for a in right)
    if any(a["closePosition"] for a in right) or covered >= abs(qty) * (1 - cfg.min_delta_ratio) - 1e-9:
        return "covered"
    return f"stop covers {covered} of {abs(qty)}"


def check_protection_in_run(h: History) -> Result:
    """Sampled every second during the run: a position without its stop (missing, at another price than
    the last one asked for, or too small) must get it within the gap bound, not counting the time in
    which the router, the reconciler or the bus could not act."""
    cfg = h.config
    res = Result(PROTECTED_IN_BOUND)
    bound = cfg.max_reconcile_interval_sec + cfg.gap_ttl_sec + cfg.gap_slack_sec
    # a gap that began while a stream fault could hide it waits at most for the trusted stream's sweep
    stream_bound = (
        max(cfg.max_reconcile_interval_sec, cfg.stream_up_sweep_sec) + cfg.gap_ttl_sec + cfg.gap_slack_sec
    )
    # (from the fault until it is cleared, or a stall's silence recycle, plus the late events' delay)
    hidden = [(a, max(b, a + cfg.stream_silence_sec) + cfg.gap_slack_sec) for a, b in h.stream_faults]
    asked = asked_stops(h.entries)
    impaired = _impaired(h)
    samples = sorted(h.protection_samples, key=lambda x: x["ts"])
    longest = 0.0
    gaps = 0
    symbols = sorted({sym for s in samples for sym in s["positions"]})
    for symbol in symbols:
        since: dict | None = None  # first sample of the current gap
        why = ""
        for s in [*samples, None]:
            qty = float(s["positions"].get(symbol, 0.0)) if s is not None else 0.0
            state = "covered"
            if s is not None and qty:
                res.checks += 1
                state = sample_coverage(
                    s, symbol, qty, asked.get((symbol, "SELL" if qty > 0 else "BUY"), []), cfg
                )
            if state != "covered":
                if since is None:
                    since, why = s, state
                continue
            if since is None:
                continue
            end = s["ts"] if s is not None else samples[-1]["ts"]
            gaps += 1
            counted = end - since["ts"] - _overlap(since["ts"], end, impaired)
            longest = max(longest, counted)
            allowed = stream_bound if any(a <= since["ts"] <= b for a, b in hidden) else bound
            if counted > allowed:
                res.violations.append(
                    Violation(
                        PROTECTED_IN_BOUND,
                        f"{symbol} without its stop for {counted:.1f}s of service time "
                        f"({_fmt_ts(since['ts'])} .. {_fmt_ts(end)}, {end - since['ts']:.1f}s in all), "
                        f"bound {allowed:g}s",
                        f"at the start: position {since['positions'].get(symbol)}, {why}",
                        replay=_symbol_story(h, symbol, int((since["ts"] - 30) * 1000)),
                    )
                )
            since = None
    res.notes.append(
        f"{len(samples)} samples, {gaps} gaps, longest {longest:.1f}s of service time (bound {bound:g}s; "
        f"{stream_bound:g}s after a stream fault)"
    )
    return res


def check_latches(h: History) -> Result:
    """An operator halt (and a latched kill-switch trip) in force when risk was killed is in force in the
    first knobs risk publishes after its restart, unless a resume was journaled in between."""
    res = Result(LATCHES_HOLD)
    knobs = sorted((e.msg for e in h.entries if isinstance(e.msg, GuardKnobs)), key=lambda k: k.ts_ms)
    resumes = sorted(
        _sec(e.msg.ts_ms) for e in h.entries if isinstance(e.msg, HaltCommand) and e.msg.action == "resume"
    )
    kills = [ev for ev in h.process_events if ev["process"] == "risk"]
    for n, ev in enumerate(kills):
        if ev["up"]:
            continue
        before = [k for k in knobs if _sec(k.ts_ms) <= ev["ts"]]
        if not before:
            continue
        last = before[-1]
        latched = [r for r in last.kill_reasons if r in LATCHED_TRIGGERS]
        if not (last.manual_halt or latched):
            continue
        restart = next((x["ts"] for x in kills[n + 1 :] if x["up"]), None)
        if restart is None:
            continue
        res.checks += 1
        after = next((k for k in knobs if _sec(k.ts_ms) >= restart), None)
        if after is None or any(ev["ts"] <= r <= _sec(after.ts_ms) for r in resumes):
            continue
        lost = []
        if last.manual_halt and not after.manual_halt:
            lost.append(f"operator halt ({last.manual_reason!r})")
        lost += [r for r in latched if r not in after.kill_reasons]
        if lost or after.allow_entries:
            res.violations.append(
                Violation(
                    LATCHES_HOLD,
                    f"risk restarted at {_fmt_ts(restart)} without " + (", ".join(lost) or "its halt"),
                    f"before the kill: {last.mode} {last.reason!r}; first knobs after: {after.mode} "
                    f"{after.reason!r} allow_entries={after.allow_entries}",
                )
            )
    return res


def halt_windows(entries: Iterable[JournalEntry]) -> list[tuple[float, float, str]]:
    """(start, end, reason) of every stretch in which the journaled guard knobs refused entries."""
    knobs = sorted((e.msg for e in entries if isinstance(e.msg, GuardKnobs)), key=lambda k: k.ts_ms)
    out: list[tuple[float, float, str]] = []
    start: float | None = None
    reason = ""
    for k in knobs:
        if not k.allow_entries and start is None:
            start, reason = _sec(k.ts_ms), f"{k.mode}: {k.reason}"
        elif k.allow_entries and start is not None:
            out.append((start, _sec(k.ts_ms), reason))
            start = None
    if start is not None:
        out.append((start, math.inf, reason))
    return out


def check_halts(h: History, ix: _Index) -> list[Result]:
    cfg = h.config
    windows = halt_windows(h.entries)
    creates: dict[str, list[float]] = defaultdict(list)
    for r in h.requests:
        if r.get("method") != "POST" or r.get("path") != "/fapi/v1/order":
            continue
        cid = (r.get("params") or {}).get("newClientOrderId", "")
        if bucket_of_client_order_id(cid) is Bucket.ENTRY:
            creates[cid].append(float(r["ts"]))
    res = Result(NO_ENTRY_WHILE_HALTED, checks=len(creates))
    res.notes.append(
        f"{len(windows)} halted stretches in the journal ("
        + ", ".join(f"{_fmt_ts(s)}+{(e - s) if e != math.inf else math.inf:.1f}s" for s, e, _ in windows[:12])
        + (", ..." if len(windows) > 12 else "")
        + ")"
    )
    retried_in_halt = 0
    for cid, times in sorted(creates.items()):
        times.sort()
        for n, ts in enumerate(times):
            hit = next(((s, e, why) for s, e, why in windows if s + cfg.halt_grace_sec <= ts < e), None)
            if hit is None:
                continue
            if n > 0:
                retried_in_halt += 1  # gated once, before the first send (README: the router's gate)
                continue
            t = ix.of(cid)
            gated = [
                e.msg.ts_ms
                for e in (t.entries if t else [])
                if isinstance(e.msg, OrderTransition) and e.msg.to_state is S.SUBMITTING
            ]
            res.violations.append(
                Violation(
                    NO_ENTRY_WHILE_HALTED,
                    f"{cid}: first create reached the venue {ts - hit[0]:.2f}s into a halt",
                    f"venue received it at {_fmt_ts(ts)}; halted {_fmt_ts(hit[0])} .. "
                    f"{_fmt_ts(hit[1]) if hit[1] != math.inf else 'end'} ({hit[2]}); router SUBMITTING at "
                    + (", ".join(_fmt_ts(_sec(g)) for g in gated) or "-"),
                    t.correlation_id if t else None,
                    replay_lines(t),
                )
            )
    if retried_in_halt:
        res.notes.append(
            f"{retried_in_halt} create retries of entries gated before a halt went out during it "
            "(the gate runs once, before the first send)"
        )

    exits = Result(EXITS_NEVER_BLOCKED)
    for t in ix.timelines.values():
        if t.intent is None or t.intent.bucket is Bucket.ENTRY:
            continue
        exits.checks += 1
        blocked = [
            m
            for m in (e.msg for e in t.entries)
            if isinstance(m, OrderTransition) and m.to_state is S.BLOCKED
        ]
        if blocked:
            exits.violations.append(
                Violation(
                    EXITS_NEVER_BLOCKED,
                    f"{t.intent.client_order_id}: a {t.intent.bucket.value} intent was BLOCKED",
                    blocked[0].reason,
                    t.correlation_id,
                    replay_lines(t),
                )
            )
    return [res, exits]


def check_intents(h: History, ix: _Index, venue: dict[str, list[dict]]) -> list[Result]:
    lost = Result(NO_INTENT_LOST)
    settled = Result(SETTLED_IN_BOUND)
    agrees = Result(JOURNAL_MATCHES_VENUE)
    dlq_subjects = {e.msg.subject for e in h.entries if isinstance(e.msg, DeadLetter)}
    unknown_tracked = set(h.router_unknown or [])
    orders_by_id = {
        int(o["orderId"]): o for o in h.venue.get("orders", [])
    }  # including the executions of algo orders
    seen: set[str] = set()
    for e in h.entries:
        m = e.msg
        if isinstance(m, CancelIntent):
            _check_cancel_handled(lost, m, ix.timelines.get(m.correlation_id), e.subject in dlq_subjects)
            continue
        if not isinstance(m, OrderIntent | ReplaceIntent) or m.correlation_id in seen:
            continue
        seen.add(m.correlation_id)
        t = ix.timelines[m.correlation_id]
        intent = m if isinstance(m, OrderIntent) else m.new_order
        transitions = [x.msg for x in t.entries if isinstance(x.msg, OrderTransition)]
        lost.checks += 1
        if not transitions:
            replaced = [x.msg for x in t.entries if isinstance(x.msg, ReplaceTransition)]
            if isinstance(m, ReplaceIntent) and replaced:
                continue  # the replace ended before placing its order (old one filled, or gave up): decided
            lost.violations.append(
                Violation(
                    NO_INTENT_LOST,
                    f"{intent.client_order_id} ({intent.bucket.value} {intent.symbol}): journaled, "
                    "never handled",
                    "dead-lettered by the router" if e.subject in dlq_subjects else "no transition, no DLQ",
                    m.correlation_id,
                    replay_lines(t),
                )
            )
            continue
        _check_settled(settled, h, _sec(m.ts_ms), intent, t, transitions, unknown_tracked)

        # journal and venue tell the same story
        state = t.state
        if state is None or state is S.UNKNOWN:
            continue
        agrees.checks += 1
        orders = venue.get(intent.client_order_id, [])
        problem = _venue_disagreement(state, orders, orders_by_id)
        if problem:
            agrees.violations.append(
                Violation(
                    JOURNAL_MATCHES_VENUE,
                    f"{intent.client_order_id}: {problem}",
                    "\n".join(_order_line(o) for o in orders),
                    t.correlation_id,
                    replay_lines(t),
                )
            )
    return [lost, settled, agrees]


def _check_cancel_handled(
    lost: Result, m: CancelIntent, t: IntentTimeline | None, dead_lettered: bool
) -> None:
    """A journaled cancel has a cancel result."""
    lost.checks += 1
    if t is None or not any(isinstance(x.msg, CancelResult) for x in t.entries):
        lost.violations.append(
            Violation(
                NO_INTENT_LOST,
                f"cancel {m.correlation_id} of {m.client_order_id}: no cancel result journaled",
                "dead-lettered" if dead_lettered else "",
                m.correlation_id,
                replay_lines(t),
            )
        )


def _check_settled(
    settled: Result,
    h: History,
    published: float,
    intent: OrderIntent,
    t: IntentTimeline,
    transitions: list[OrderTransition],
    unknown_tracked: set[str],
) -> None:
    """Within the bound: settled, resting on the venue, or UNKNOWN (the resolver's from then on)."""
    cfg = h.config
    settled.checks += 1
    reached = next(
        (x for x in transitions if x.to_state in TERMINAL_ORDER_STATES | RESTING | {S.UNKNOWN}),
        None,
    )
    waited = (_sec(reached.ts_ms) if reached else h.collected_at) - published
    if waited > cfg.settle_bound_sec:
        settled.violations.append(
            Violation(
                SETTLED_IN_BOUND,
                f"{intent.client_order_id}: "
                + (
                    f"took {waited:.1f}s to reach {reached.to_state.value}"
                    if reached
                    else f"still {t.state.value if t.state else '-'} after {waited:.1f}s"
                ),
                f"bound {cfg.settle_bound_sec:g}s from publication",
                t.correlation_id,
                replay_lines(t),
            )
        )
    state = t.state
    ok_end = (
        state in TERMINAL_ORDER_STATES
        or state in RESTING
        or (state is S.UNKNOWN and intent.client_order_id in unknown_tracked)
    )
    if not ok_end:
        settled.violations.append(
            Violation(
                SETTLED_IN_BOUND,
                f"{intent.client_order_id}: ends {state.value if state else '-'}"
                + (" and the router's resolver does not track it" if state is S.UNKNOWN else ""),
                "after the quiet settle period",
                t.correlation_id,
                replay_lines(t),
            )
        )
    elif state is S.UNKNOWN:
        settled.notes.append(f"{intent.client_order_id} still UNKNOWN, tracked by the resolver")


def _venue_disagreement(state: OrderState, orders: list[dict], orders_by_id: dict[int, dict]) -> str:
    """How the venue's orders for one client id contradict the journal's ``state`` ("" when they agree)."""
    if not orders:
        if state in RESTING or state is S.CANCEL_PENDING:
            return f"journal says {state.value}, the venue has no such order"
        if state is S.FILLED:
            return "journal says FILLED, the venue has no such order"
        return ""
    if state in NEVER_PLACED:
        return f"journal says {state.value} (never placed), the venue has {len(orders)} order(s)"
    is_open, filled = _venue_state_of(orders[-1], orders_by_id)
    journal_open = state in RESTING or state is S.CANCEL_PENDING
    if is_open != journal_open:
        return f"journal says {state.value}, the venue's order is {'open' if is_open else 'closed'}"
    if filled and state is not S.FILLED:
        return f"the venue filled it, the journal says {state.value}"
    if (
        state is S.FILLED
        and not filled
        and orders[-1]["_kind"] == "order"
        and float(orders[-1].get("executedQty") or 0) <= 0
    ):
        return "journal says FILLED, the venue's order never executed"
    return ""


def check_retries(h: History, ix: _Index) -> Result:
    cfg = h.config
    res = Result(RETRIES_BOUNDED)
    per_intent: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    flagged: set[tuple[str, str]] = set()
    # a router that starts counts every intent it finds in flight as sent at its start at the latest (its
    # predecessor may have sent it just before dying): the deadline runs from there
    router_starts = sorted(ev["ts"] for ev in h.process_events if ev["process"] == "router" and ev["up"])
    for t in ix.timelines.values():
        ref: OrderTransition | None = None  # the last send, or the moment the intent became undecided
        prev_ms = 0  # the intent's previous journal event: the lookup behind a retry started after it
        for e in t.entries:
            m = e.msg
            if isinstance(m, OrderTransition) and m.to_state in (S.SUBMITTING, S.UNKNOWN):
                ref = m
            if not isinstance(m, OrderRetry):
                prev_ms = getattr(m, "ts_ms", prev_ms)
                continue
            lookup_started_ms = prev_ms
            if m.operation != "fetch" or m.reason == "not_found_yet":
                # a new lookup starts after this wait; a fetch retried for a timeout, a 5xx or a venue
                # pause is the same lookup going on (the router judges it by when it began)
                prev_ms = m.ts_ms
            res.checks += 1
            per_intent[t.correlation_id] += 1
            by_reason[f"{m.operation}/{m.reason}"] += 1
            problem = _retry_problem(m, ref, _sec(lookup_started_ms), router_starts, cfg)
            if problem and (t.correlation_id, problem.split(" ")[0]) not in flagged:
                flagged.add((t.correlation_id, problem.split(" ")[0]))
                res.violations.append(
                    Violation(
                        RETRIES_BOUNDED,
                        f"{m.client_order_id}: {problem}",
                        "",
                        t.correlation_id,
                        replay_lines(t),
                    )
                )
    if per_intent:
        top = per_intent.most_common(3)
        res.notes.append("most retried intents: " + ", ".join(f"{c} x{n}" for c, n in top))
        res.notes.append(
            "retries by operation/reason: " + ", ".join(f"{k} {n}" for k, n in by_reason.most_common())
        )
    return res


def _retry_problem(
    m: OrderRetry, ref: OrderTransition | None, started: float, router_starts: list[float], cfg: CheckConfig
) -> str:
    """What is wrong with one retry ("" if nothing): past the elapsed cap, past the attempts, or a
    "not found yet" from a lookup that began after the send could no longer land (``started``: when
    the lookup behind it began; only a lookup that *started* after the deadline decides: one that began
    inside it and took long, through timeouts and venue pauses, rightly says "not found yet")."""
    if m.elapsed_sec + m.delay_sec > cfg.max_elapsed_sec + 0.05:
        return (
            f"{m.operation} retry waits to {m.elapsed_sec + m.delay_sec:.2f}s, past the "
            f"{cfg.max_elapsed_sec:g}s elapsed cap"
        )
    if m.reason == "not_found_yet":
        if ref is None:
            return ""
        window = (cfg.recv_window_ms + cfg.ambiguity_margin_ms) / 1000
        sent = _sec(ref.ts_ms)
        restart = bisect.bisect_right(router_starts, started)
        if restart and router_starts[restart - 1] > sent:
            sent = router_starts[restart - 1]
        if started > sent + window + cfg.timing_slack_sec:
            return (
                f"'not found yet' from a lookup started {started - sent:.2f}s after the send "
                f"({ref.to_state.value}) or the router's restart, past recvWindow + margin ({window:g}s)"
            )
        return ""
    if m.reason not in VENUE_PAUSE_REASONS and m.attempt > cfg.max_attempts:
        return f"{m.operation} attempt {m.attempt} beyond ROUTER_RETRY_MAX_ATTEMPTS={cfg.max_attempts}"
    return ""


def check_weight(h: History) -> Result:
    cfg = h.config
    res = Result(WEIGHT_UNDER_LIMIT)
    peak = 0
    bans = 0
    for s in h.limit_samples:
        lim = s.get("limits") or {}
        limit = int(lim.get("weight_limit_1m") or cfg.weight_limit_1m)
        for ip, v in (lim.get("ips") or {}).items():
            res.checks += 1
            used = int(v.get("used_weight_1m") or 0)
            peak = max(peak, used)
            bans = max(bans, int(v.get("bans") or 0))
            if used >= limit:
                res.violations.append(
                    Violation(
                        WEIGHT_UNDER_LIMIT,
                        f"{ip} used {used} of {limit} weight at {_fmt_ts(s['ts'])}",
                    )
                )
    res.notes.append(f"peak sampled weight {peak} of {cfg.weight_limit_1m} ({len(h.limit_samples)} samples)")
    statuses = Counter(int(r["status"]) for r in h.requests if r.get("status") in (418, 429))
    for status in (429, 418):
        res.checks += 1
        ours = statuses.get(status, 0) - int(h.injected.get(str(status), 0))
        if ours > 0:
            res.violations.append(
                Violation(
                    WEIGHT_UNDER_LIMIT,
                    f"{ours} HTTP {status} answers the soak did not inject "
                    f"({statuses.get(status, 0)} in the request log, {h.injected.get(str(status), 0)} injected)",
                )
            )
    if bans:
        res.violations.append(
            Violation(WEIGHT_UNDER_LIMIT, f"the venue's limiter banned an IP ({bans} bans)")
        )
    return res


def check_bad_signals(h: History) -> Result:
    res = Result(BAD_SIGNALS_REFUSED)
    decisions = {e.msg.signal_id: e.msg for e in h.entries if isinstance(e.msg, SignalDecision)}
    dead = {
        e.msg.subject.rsplit(".", 1)[-1]: e.msg
        for e in h.entries
        if isinstance(e.msg, DeadLetter) and ".signal." in e.msg.subject
    }
    sent = {
        (r.get("params") or {}).get("newClientOrderId")
        for r in h.requests
        if r.get("method") == "POST" and r.get("path") in CREATE_PATHS
    }
    for signal_id, info in sorted(h.bad_signals.items()):
        res.checks += 1
        cid = entry_client_order_id(signal_id)
        d = decisions.get(signal_id)
        if cid in sent:
            res.violations.append(
                Violation(
                    BAD_SIGNALS_REFUSED,
                    f"bad signal {signal_id} ({info.get('kind')}) reached the venue as {cid}",
                    f"decision: {d.reason if d else '-'}",
                )
            )
        elif d is not None and d.accepted:
            res.violations.append(
                Violation(
                    BAD_SIGNALS_REFUSED, f"bad signal {signal_id} ({info.get('kind')}) was accepted", d.reason
                )
            )
        elif info.get("published") and d is None and signal_id not in dead:
            res.violations.append(
                Violation(
                    BAD_SIGNALS_REFUSED,
                    f"bad signal {signal_id} ({info.get('kind')}): neither refused nor dead-lettered",
                )
            )
    kinds = Counter(
        ("dead-lettered" if s in dead else (decisions[s].reason.split(":")[0] if s in decisions else "none"))
        for s in h.bad_signals
    )
    res.notes.append("bad signals: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    return res


REFUSALS = frozenset({418, 429, 500, 502, 503, 504})  # the venue said no to everyone, not to a request


def refusal_times(h: History) -> list[float]:
    """When the venue refused requests wholesale (rate limits, bans, 5xx): sorted unix seconds."""
    return sorted(float(r["ts"]) for r in h.requests if r.get("status") in REFUSALS)


def _venue_refusing(refusals: list[float], ts: float, within: float = 5.0) -> bool:
    i = bisect.bisect_right(refusals, ts)
    return i > 0 and ts - refusals[i - 1] <= within


def check_ready(h: History) -> Result:
    """A service whose process runs but which never gets ready (its start-up failed and nobody retries)
    repairs nothing: every stretch of not-ready samples of a live process must end within the bound.
    A start-up the venue keeps refusing (its reason a venue error while the venue refused requests in
    the seconds before) is waiting on the venue, not stuck: the bound counts from when that ends."""
    bound = h.config.ready_bound_sec
    res = Result(SERVICES_READY)
    refusals = refusal_times(h)
    waited = 0
    by_service: dict[str, list[dict]] = defaultdict(list)
    for s in sorted(h.ready_samples, key=lambda x: x["ts"]):
        by_service[s["service"]].append(s)
    for name, samples in sorted(by_service.items()):
        res.checks += len(samples)
        since: dict | None = None  # first sample of the current not-ready stretch of a live process
        stretches: list[tuple[dict, dict]] = []
        for s in samples:
            if s["alive"] and not s["ready"]:
                if "VenueError" in (s.get("reason") or "") and _venue_refusing(refusals, s["ts"]):
                    waited += 1
                    since = None
                    continue
                since = since or s
                continue
            if since is not None:
                stretches.append((since, s))
            since = None
        if since is not None:
            stretches.append((since, samples[-1]))
        for first, last in stretches:
            if last["ts"] - first["ts"] > bound:
                res.violations.append(
                    Violation(
                        SERVICES_READY,
                        f"{name} running but not ready for {last['ts'] - first['ts']:.0f}s "
                        f"({_fmt_ts(first['ts'])} .. {_fmt_ts(last['ts'])})",
                        f"/readyz said: {first.get('reason')!r} .. {last.get('reason')!r}",
                    )
                )
    if waited:
        res.notes.append(f"{waited} not-ready samples of start-ups the venue was refusing (not counted)")
    return res


def check(h: History) -> list[Result]:
    """Every invariant, in the table's order."""
    ix = index(h.entries)
    venue = venue_orders_by_client_id(h.venue)
    results = [
        *check_one_order_per_id(h, ix, venue),
        *check_protection(h, ix, venue),
        check_protection_in_run(h),
        check_latches(h),
        *check_halts(h, ix),
        *check_intents(h, ix, venue),
        check_retries(h, ix),
        check_weight(h),
        check_bad_signals(h),
        check_ready(h),
    ]
    order = {name: i for i, name in enumerate(INVARIANTS)}
    return sorted(results, key=lambda r: order[r.name])


def violations(results: Iterable[Result]) -> int:
    return sum(len(r.violations) for r in results)


def render(results: list[Result], *, details: bool = True) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'invariant':<{width}}  {'checks':>7}  {'violations':>10}", "-" * (width + 21)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.checks:>7}  {len(r.violations):>10}")
    lines.append("")
    for r in results:
        for note in r.notes[:10]:
            lines.append(f"[{r.name}] {note}")
        if len(r.notes) > 10:
            lines.append(f"[{r.name}] ... {len(r.notes) - 10} more notes")
    if details:
        for r in results:
            for n, v in enumerate(r.violations, 1):
                lines += ["", f"=== VIOLATION {r.name} #{n}: {v.what}"]
                if v.detail:
                    lines += [f"    {x}" for x in v.detail.splitlines()]
                lines += [f"    | {x}" for x in v.replay]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- a run on disk


def save_history(run_dir: Path, h: History) -> None:
    d = run_dir / "history"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "journal.jsonl", "w") as f:
        for e in h.entries:
            f.write(json.dumps({"seq": e.seq, "subject": e.subject, "data": encode(e.msg).decode()}) + "\n")
    (d / "venue_state.json").write_text(json.dumps(h.venue))
    (d / "requests.json").write_text(json.dumps(h.requests))
    meta = {
        "limit_samples": h.limit_samples,
        "ready_samples": h.ready_samples,
        "protection_samples": h.protection_samples,
        "process_events": h.process_events,
        "injected": h.injected,
        "foreign_orders": h.foreign_orders,
        "behind_back_cancels": h.behind_back_cancels,
        "stream_faults": h.stream_faults,
        "bad_signals": h.bad_signals,
        "router_unknown": h.router_unknown,
        "collected_at": h.collected_at,
        "config": asdict(h.config),
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1))


def load_history(run_dir: Path, prefix: str = "erl") -> History:
    d = run_dir / "history"
    entries = []
    with open(d / "journal.jsonl") as f:
        for line in f:
            row = json.loads(line)
            entries.append(
                JournalEntry(row["seq"], row["subject"], decode(prefix, row["subject"], row["data"].encode()))
            )
    meta = json.loads((d / "meta.json").read_text())
    return History(
        entries=entries,
        venue=json.loads((d / "venue_state.json").read_text()),
        requests=json.loads((d / "requests.json").read_text()),
        limit_samples=meta["limit_samples"],
        ready_samples=meta.get("ready_samples", []),
        protection_samples=meta.get("protection_samples", []),
        process_events=meta.get("process_events", []),
        injected=meta["injected"],
        foreign_orders=meta["foreign_orders"],
        behind_back_cancels=meta["behind_back_cancels"],
        stream_faults=[(a, b) for a, b in meta.get("stream_faults", [])],
        bad_signals=meta["bad_signals"],
        router_unknown=meta["router_unknown"],
        collected_at=meta["collected_at"],
        config=CheckConfig(**meta["config"]),
    )


def report_json(results: list[Result]) -> list[dict[str, Any]]:
    return [
        {
            "invariant": r.name,
            "checks": r.checks,
            "violations": [asdict(v) for v in r.violations],
            "notes": r.notes,
        }
        for r in results
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.soak_invariants", description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--summary", action="store_true", help="the table only, no violation details")
    a = p.parse_args(argv)
    results = check(load_history(a.run_dir))
    print(render(results, details=not a.summary))
    return 1 if violations(results) else 0


if __name__ == "__main__":
    sys.exit(main())
