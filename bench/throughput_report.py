"""The throughput bench's bookkeeping and verdicts. Pure: no I/O, times are given.

``SignalRecord`` is what the bench learned about one signal from the bus; ``rate_summary`` turns a
rate's records into its report; ``highest_sustainable`` and ``rss_growth`` are the verdicts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.common import dist
from libs.common.state_machine import TERMINAL_ORDER_STATES

ENTRY_SETTLED = frozenset(s.value for s in TERMINAL_ORDER_STATES)
# a stage-1 stop has done its job once it rests on the venue (or triggered)
STOP_PLACED = frozenset({"ACKED", "FILLED", "PARTIALLY_FILLED"})
STOP_REFUSED = frozenset({"REJECTED", "BLOCKED", "FAILED", "MOOT"})
STOP_SETTLED = STOP_PLACED | STOP_REFUSED | frozenset({"CANCELED", "EXPIRED"})


@dataclass
class SignalRecord:
    """One signal, from its publish to its stage-1 stop (times: the bench's monotonic clock, seconds)."""

    signal_id: str
    symbol: str
    published_at: float | None = None  # when the publish was started; None: never acked by the bus
    decided: bool = False
    accepted: bool = False
    refusal: str = ""
    guard_mode: str | None = None
    entry_state: str | None = None  # the entry intent's latest state
    entry_reason: str = ""  # the router's reason for BLOCKED / REJECTED
    entry_code: int | None = None  # the venue's error code, when it refused
    settled_at: float | None = None
    filled_at: float | None = None
    stop_state: str | None = None  # the stage-1 stop's latest state
    stop_reason: str = ""
    stop_code: int | None = None
    stop_acked_at: float | None = None
    # the router's own clock (wall ms, from the transitions): where a slow stop spent its time
    filled_ms: int | None = None  # the entry's FILLED
    stop_submitting_ms: int | None = None  # the stop about to be sent (entry, bus and router queue before)
    stop_acked_ms: int | None = None  # the venue's answer (the venue call before)

    @property
    def done(self) -> bool:
        """Nothing more will happen to it: refused, or settled and (when filled) its stop settled."""
        if self.published_at is None:
            return True
        if not self.decided:
            return False
        if not self.accepted:
            return True
        if self.entry_state not in ENTRY_SETTLED:
            return False
        return self.entry_state != "FILLED" or self.stop_state in STOP_SETTLED


def reason_kind(reason: str, code: int | None = None) -> str:
    """A refusal's kind without its numbers ('cooldown:3.2s' -> 'cooldown'), with the venue's error
    code when there is one, for counting."""
    kind = reason.split(":", 1)[0] or "(none)"
    return f"{kind}({code})" if code is not None else kind


def stage1_outcome(r: SignalRecord) -> str:
    """What became of a filled entry's stage-1 stop. A refused stop is never protection."""
    if r.stop_acked_at is not None:
        return "acked"
    if r.stop_state is None:
        return "never_seen"
    if r.stop_state in STOP_REFUSED:
        return f"refused:{r.stop_state}:{reason_kind(r.stop_reason, r.stop_code)}"
    return f"unsettled:{r.stop_state}"


def in_window(t: float | None, start: float, end: float) -> bool:
    return t is not None and start <= t < end


def rate_summary(records: Sequence[SignalRecord], window: tuple[float, float]) -> dict:
    """One rate's report from its signals' records; ``window`` is (start, end) of the sending."""
    start, end = window
    seconds = max(end - start, 1e-9)
    published = [r for r in records if r.published_at is not None]
    accepted = [r for r in published if r.accepted]
    filled = [r for r in accepted if r.filled_at is not None]
    refused = Counter(reason_kind(r.refusal) for r in published if r.decided and not r.accepted)
    router = Counter(
        f"{r.entry_state}:{reason_kind(r.entry_reason, r.entry_code)}"
        for r in accepted
        if r.entry_state in ("BLOCKED", "REJECTED", "FAILED")
    )
    lat = [
        (r.filled_at - r.published_at) * 1000
        for r in filled
        if r.published_at is not None and r.filled_at is not None
    ]
    stop = [
        (r.stop_acked_at - r.filled_at) * 1000
        for r in filled
        if r.stop_acked_at is not None and r.filled_at is not None
    ]
    return {
        "signals": len(records),
        "published": len(published),
        "publish_failed": len(records) - len(published),
        "decided": sum(r.decided for r in published),
        "accepted": len(accepted),
        "refused_by_entry": dict(refused.most_common()),
        "refused_by_router": dict(router.most_common()),
        "guard_modes_seen": dict(Counter(r.guard_mode or "-" for r in published if r.decided)),
        "filled": len(filled),
        "settled_entries_per_sec": round(
            sum(in_window(r.settled_at, start, end) for r in accepted) / seconds, 1
        ),
        "fills_per_sec": round(sum(in_window(r.filled_at, start, end) for r in filled) / seconds, 1),
        "unsettled_at_window_end": sum(1 for r in accepted if r.settled_at is None or r.settled_at >= end),
        "signal_to_filled_ms": dist(lat),
        "fill_to_stage1_stop_acked_ms": dist(stop),
        "fill_to_stage1_stop_acked_p99_ms_by_second": stop_p99_by_second(filled, start),
        "stage1_stop_legs_ms": stop_legs(filled, start),
        "stage1_outcomes": dict(Counter(stage1_outcome(r) for r in filled).most_common()),
    }


def stop_p99_by_second(filled: Sequence[SignalRecord], start: float) -> list[float]:
    """fill -> stop ACKED p99 of the fills in each second from ``start``: a posture's reaction shows as
    the seconds before it, a backlog as a rising tail."""
    by_second: dict[int, list[float]] = {}
    for r in filled:
        if r.stop_acked_at is not None and r.filled_at is not None:
            by_second.setdefault(int(r.filled_at - start), []).append((r.stop_acked_at - r.filled_at) * 1000)
    return [
        round(dist(by_second.get(i, [])).get("p99", 0.0), 1) for i in range(max(by_second, default=-1) + 1)
    ]


def stop_legs(filled: Sequence[SignalRecord], start: float) -> dict:
    """fill -> stop in two legs on the router's clock: to the stop's SUBMITTING (the entry's reaction,
    the bus, the router's protect queue) and SUBMITTING -> ACKED (the venue call); overall and as
    [p99, p99] for each second from ``start`` (by fill time)."""
    to_submit, venue = [], []
    by_second: dict[int, tuple[list[float], list[float]]] = {}
    for r in filled:
        if None in (r.filled_at, r.filled_ms, r.stop_submitting_ms, r.stop_acked_ms):
            continue
        assert r.filled_at is not None and r.filled_ms is not None
        assert r.stop_submitting_ms is not None and r.stop_acked_ms is not None
        a, b = float(r.stop_submitting_ms - r.filled_ms), float(r.stop_acked_ms - r.stop_submitting_ms)
        to_submit.append(a)
        venue.append(b)
        sa, sb = by_second.setdefault(int(r.filled_at - start), ([], []))
        sa.append(a)
        sb.append(b)
    seconds = [
        [round(dist(by_second.get(i, ([], []))[k]).get("p99", 0.0), 1) for k in (0, 1)]
        for i in range(max(by_second, default=-1) + 1)
    ]
    return {
        "fill_to_submitting": dist(to_submit),
        "submitting_to_acked": dist(venue),
        "p99_by_second": seconds,
    }


def per_signal_ms(cpu_seconds: Mapping[str, float], signals: int) -> dict[str, float]:
    """CPU milliseconds per signal of each process, and their total."""
    n = max(signals, 1)
    out = {name: round(s * 1000 / n, 2) for name, s in cpu_seconds.items()}
    out["total"] = round(sum(cpu_seconds.values()) * 1000 / n, 2)
    return out


def highest_sustainable(
    results: Iterable[Mapping], limit_ms: float = 50.0, min_filled_share: float = 0.99
) -> float | None:
    """The highest rate whose signal -> FILLED p99 is under ``limit_ms``, or None.

    A rate counts only if at least ``min_filled_share`` of the signals it sent were filled: a rate
    whose entries were mostly refused (a guard posture, a halt) has a low p99 for the wrong reason."""
    ok = [
        float(r["rate"])
        for r in results
        if r["published"]
        and r["filled"] >= min_filled_share * r["signals"]
        and r["signal_to_filled_ms"]["p99"] < limit_ms  # NaN (no fills) compares False
    ]
    return max(ok) if ok else None


def rss_growth(series: Sequence[Mapping[str, float]], warmup_samples: int = 1) -> dict[str, float]:
    """Per process: last sample minus the first after ``warmup_samples`` (MiB), over the same span."""
    if len(series) <= warmup_samples:
        return {}
    first, last = series[warmup_samples], series[-1]
    return {name: round(last[name] - first[name], 1) for name in last if name in first}


def unprotected_positions(state: dict) -> list[str]:
    """Symbols whose venue position has no resting close-position stop on its closing side."""
    stops = {
        (a["symbol"], a["side"])
        for a in state["algo_orders"]
        if a["algoStatus"] == "NEW" and a["closePosition"] and a["orderType"] == "STOP_MARKET"
    }
    return sorted(
        p["symbol"]
        for p in state["positions"]
        if float(p["positionAmt"]) != 0
        and (p["symbol"], "SELL" if float(p["positionAmt"]) > 0 else "BUY") not in stops
    )
