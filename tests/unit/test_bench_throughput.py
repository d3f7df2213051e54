"""The throughput bench's pure helpers: /proc parsing, the signal mix, the per-rate report, verdicts."""

from __future__ import annotations

import math

import pytest

from bench.procstat import CpuMeter, cpu_delta, cpu_seconds_from_stat, rss_kib_from_status
from bench.signal_mix import SignalMix
from bench.throughput_report import (
    SignalRecord,
    highest_sustainable,
    per_signal_ms,
    rate_summary,
    reason_kind,
    rss_growth,
    stage1_outcome,
    unprotected_positions,
)

# a real /proc/<pid>/stat line, with a command name holding a space and a ')'
STAT = "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 9000 0 12 0 250 75 0 0 20 0 5 0 100 0 0"


def test_cpu_seconds_counts_utime_and_stime_after_the_command_name():
    assert cpu_seconds_from_stat(STAT, clk_tck=100) == pytest.approx(3.25)


def test_rss_is_read_from_vmrss_and_a_process_without_one_is_an_error():
    assert rss_kib_from_status("Name:\tpython\nVmPeak:\t 9 kB\nVmRSS:\t  51200 kB\n") == 51200
    with pytest.raises(ValueError, match="VmRSS"):
        rss_kib_from_status("Name:\tzombie\n")


def test_cpu_meter_carries_a_restarted_process_over_its_new_pid(monkeypatch):
    cpu = {1: 2.0, 2: 0.5}
    pids = {"nats-server": 1}
    monkeypatch.setattr("bench.procstat.read_cpu_seconds", lambda pid: cpu.get(pid))
    meter = CpuMeter(lambda: pids)
    first = meter.sample()
    pids["nats-server"] = 2  # killed after that sample, started again
    second = meter.sample()
    assert first == {"nats-server": 2.0}
    assert second == {"nats-server": 2.5}
    assert cpu_delta(first, second) == {"nats-server": 0.5}


def test_mix_flips_every_position_and_forgets_a_refused_signal():
    mix = SignalMix({"A/USDT:USDT": 1.0, "B/USDT:USDT": 2.0})
    a1, b1, a2, b2, a3 = (mix.next() for _ in range(5))
    assert [(s.symbol[0], s.side, s.qty) for s in (a1, b1, a2, b2, a3)] == [
        ("A", "buy", 1.0),
        ("B", "buy", 2.0),
        ("A", "sell", 2.0),  # long 1 -> short 1
        ("B", "sell", 4.0),
        ("A", "buy", 2.0),  # short 1 -> long 1
    ]
    mix.settled(a1.signal_id, filled=True)
    mix.settled(a2.signal_id, filled=False)  # refused: A will be long 1 + 2 = 3
    mix.settled(a2.signal_id, filled=False)  # told twice: counted once
    b3, a4 = mix.next(), mix.next()
    assert (a4.side, a4.qty) == ("sell", 4.0)  # long 3 -> short 1
    assert (b3.side, b3.qty) == ("buy", 4.0)


def record(
    i: int, *, fill_ms: float | None = 10.0, stop_ms: float | None = 5.0, **kw: object
) -> SignalRecord:
    r = SignalRecord(f"s{i}", "A/USDT:USDT", published_at=float(i), decided=True, accepted=True)
    if fill_ms is not None:
        r.entry_state, r.filled_at = "FILLED", i + fill_ms / 1000
        r.settled_at = r.filled_at
    if stop_ms is not None and r.filled_at is not None:
        r.stop_state, r.stop_acked_at = "ACKED", r.filled_at + stop_ms / 1000
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_rate_summary_counts_refusals_latencies_and_refused_stops_apart():
    refused = record(3, fill_ms=None, accepted=False, refusal="cooldown:1.5s")
    blocked = record(4, fill_ms=None, entry_state="BLOCKED", entry_reason="stale_intent:31.0s")
    stop_refused = record(
        5, stop_ms=None, stop_state="MOOT", stop_reason="reduce_only_rejected:no_position", stop_code=-2022
    )
    unsent = SignalRecord("s6", "A/USDT:USDT")  # the bus never acked it
    records = [record(0), record(1, fill_ms=30.0), refused, blocked, stop_refused, unsent]
    s = rate_summary(records, (0.0, 10.0))
    assert (s["signals"], s["published"], s["publish_failed"]) == (6, 5, 1)
    assert s["accepted"] == 4 and s["filled"] == 3
    assert s["refused_by_entry"] == {"cooldown": 1}
    assert s["refused_by_router"] == {"BLOCKED:stale_intent": 1}
    assert s["signal_to_filled_ms"]["n"] == 3 and s["signal_to_filled_ms"]["max"] == pytest.approx(30.0)
    assert s["fill_to_stage1_stop_acked_ms"]["n"] == 2
    # fills in seconds 0 and 1 had their stops; seconds 2-4 none (refused, blocked, stop refused)
    p99s = s["fill_to_stage1_stop_acked_p99_ms_by_second"]
    assert p99s[:2] == [pytest.approx(5.0), pytest.approx(5.0)] and len(p99s) == 2
    assert s["stage1_outcomes"] == {"acked": 2, "refused:MOOT:reduce_only_rejected(-2022)": 1}
    assert s["fills_per_sec"] == 0.3
    # a refused or unsent signal has nothing left to wait for; an accepted one waits for its stop
    assert refused.done and unsent.done and stop_refused.done
    assert not record(7, stop_ms=None).done


def test_stage1_outcome_never_counts_a_refusal_as_protection():
    assert stage1_outcome(record(0)) == "acked"
    assert stage1_outcome(record(0, stop_ms=None)) == "never_seen"
    assert stage1_outcome(record(0, stop_ms=None, stop_state="SUBMITTING")) == "unsettled:SUBMITTING"
    assert reason_kind("") == "(none)" and reason_kind("x:1", -4130) == "x(-4130)"


def rate(r: float, p99: float, filled: int = 100, signals: int = 100) -> dict:
    return {
        "rate": r,
        "published": signals,
        "signals": signals,
        "filled": filled,
        "signal_to_filled_ms": {"p99": p99},
    }


def test_highest_sustainable_rate_needs_the_p99_and_the_fills():
    results = [rate(20, 12.0), rate(40, 49.9), rate(60, 80.0), rate(80, 10.0, filled=40)]
    assert highest_sustainable(results, 50.0) == 40  # 80/s: a low p99 on the few it filled does not count
    assert highest_sustainable([rate(20, math.nan, filled=0)], 50.0) is None
    assert highest_sustainable([], 50.0) is None


def test_rss_growth_from_after_the_warm_up_sample_and_cpu_per_signal():
    series = [
        {"router": 50.0, "entry": 40.0},
        {"router": 60.0, "entry": 41.0},
        {"router": 63.5, "entry": 41.0},
    ]
    assert rss_growth(series, warmup_samples=1) == {"router": 3.5, "entry": 0.0}
    assert rss_growth(series[:1], warmup_samples=1) == {}
    assert per_signal_ms({"router": 1.0, "entry": 0.5}, 100) == {"router": 10.0, "entry": 5.0, "total": 15.0}


def test_a_venue_position_is_protected_only_by_a_resting_close_position_stop_on_its_closing_side():
    def stop(symbol: str, side: str, status: str = "NEW") -> dict:
        return {
            "symbol": symbol,
            "side": side,
            "algoStatus": status,
            "closePosition": True,
            "orderType": "STOP_MARKET",
        }

    state = {
        "positions": [
            {"symbol": "AUSDT", "positionAmt": "1.5"},
            {"symbol": "BUSDT", "positionAmt": "-2"},
            {"symbol": "CUSDT", "positionAmt": "3"},
            {"symbol": "DUSDT", "positionAmt": "0"},
        ],
        "algo_orders": [stop("AUSDT", "SELL"), stop("BUSDT", "SELL"), stop("CUSDT", "SELL", "EXPIRED")],
    }
    assert unprotected_positions(state) == ["BUSDT", "CUSDT"]
