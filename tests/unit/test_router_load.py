"""The router's entry-load measure (``services/router/load.py``), pure: the lag window and when to report."""

from __future__ import annotations

from libs.common.messages import RouterLoad
from services.router.load import LOADED_LAG_SEC, LagWindow, entry_age_sec, is_loaded, measure, report_due

T0 = 1_700_000_000.0


def test_the_lag_window_keeps_the_largest_age_of_the_last_window():
    w = LagWindow(5.0)
    assert w.max(T0) == 0.0  # nothing seen: no lag
    w.add(T0, 0.2)
    w.add(T0 + 1, 3.0)
    w.add(T0 + 2, 1.0)
    assert w.max(T0 + 2) == 3.0
    assert w.max(T0 + 5.9) == 3.0  # the 3 s entry is still inside the window
    assert w.max(T0 + 6.5) == 1.0  # gone: the younger one seen after it remains
    assert w.max(T0 + 7.5) == 0.0  # nothing in the window any more
    assert w.count == 3


def test_a_younger_entry_never_hides_an_older_one_seen_before_it():
    w = LagWindow(5.0)
    for i, age in enumerate((0.1, 0.5, 0.3, 0.05, 0.4)):
        w.add(T0 + i * 0.1, age)
    assert w.max(T0 + 0.5) == 0.5
    assert len(w._samples) <= 3  # bounded by the decreasing ages, not by the rate


def test_entry_age_is_from_the_intents_own_timestamp_and_never_negative():
    assert entry_age_sec(int(T0 * 1000) - 2500, T0) == 2.5
    assert entry_age_sec(int(T0 * 1000) + 300, T0) == 0.0  # a producer clock ahead of ours


def load(at: float, lag: float = 0.0, backlog: int | None = 0) -> RouterLoad:
    return RouterLoad(
        lag_sec=lag, window_sec=5.0, backlog=backlog, ts_ms=int(at * 1000), source_service="router"
    )


def test_measure_reports_the_window_the_backlog_and_what_is_held():
    w = LagWindow(5.0)
    w.add(T0, 1.23456)
    m = measure(w, T0 + 1, backlog=40, in_flight=256, handled=w.count)
    assert (m.lag_sec, m.backlog, m.in_flight, m.entries, m.window_sec) == (1.235, 40, 256, 1, 5.0)
    assert m.ts_ms == int((T0 + 1) * 1000) and m.source_service == "router"


def test_loaded_from_a_quarter_second_of_lag_or_any_server_backlog():
    assert not is_loaded(load(T0, lag=LOADED_LAG_SEC / 2))
    assert is_loaded(load(T0, lag=LOADED_LAG_SEC))
    assert is_loaded(load(T0, backlog=1))
    assert not is_loaded(load(T0, backlog=None))  # unknown backlog alone is not load


def test_reports_are_fast_while_loaded_slow_when_idle_and_one_more_when_the_load_clears():
    due = lambda now, last: report_due(now, last, every_sec=1.0, idle_every_sec=10.0)  # noqa: E731
    assert due(load(T0), None)  # the first one always
    idle = load(T0)
    assert not due(load(T0 + 1), idle) and not due(load(T0 + 9.9), idle)
    assert due(load(T0 + 10), idle)
    assert due(load(T0 + 0.2, lag=1.0), idle)  # turning loaded: at once
    busy = load(T0, lag=1.0)
    assert not due(load(T0 + 0.5, lag=2.0), busy) and due(load(T0 + 1, lag=2.0), busy)
    assert due(load(T0 + 1), busy)  # cleared: said at the fast period, not 10 s later
