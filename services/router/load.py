"""The router's entry load: how late entries are when it gets to them, and how much waits. Pure.

Entry lag is the age (now - the intent's own ``ts_ms``) of each ENTRY intent when the router starts
handling it, kept as a maximum over a short sliding window (``LagWindow``). It includes every wait
before the router: the entry service's publish, the server-side backlog of the consumer and the
in-memory queue behind the symbol. Queue depth backs it up: a router that handles nothing at all
measures no lag, but its backlog grows. Only entries are measured: shedding is for entries, and
exits and protection are never shed.

The router publishes the result (``RouterLoad``) for risk, which turns it into guard knobs that
throttle or block new entries. ``report_due`` keeps the journal quiet: every ``every_sec`` while
loaded (and once more when the load has cleared), every ``idle_every_sec`` otherwise.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from libs.common.messages import RouterLoad

# the router counts as loaded (reports every ``every_sec``) from this entry lag on, or with any
# server-side backlog: a handful of times the normal signal -> fill p99 (under 50 ms), far under any
# shedding threshold, so risk sees a load building up at the fast period
LOADED_LAG_SEC = 0.25


@dataclass
class LagWindow:
    """The largest entry age seen over the last ``window_sec`` seconds (monotonic deque: O(1) amortised)."""

    window_sec: float
    # (seen at, age): times increasing, ages strictly decreasing, so the front is the window's maximum
    _samples: deque[tuple[float, float]] = field(default_factory=deque)
    count: int = 0  # entries seen in all (a rate for /status and the report)

    def add(self, now: float, age_sec: float) -> None:
        self.count += 1
        while self._samples and self._samples[-1][1] <= age_sec:
            self._samples.pop()
        self._samples.append((now, age_sec))

    def max(self, now: float) -> float:
        horizon = now - self.window_sec
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        return self._samples[0][1] if self._samples else 0.0


def entry_age_sec(intent_ts_ms: int, now: float) -> float:
    """An entry's age from its own timestamp; a producer clock ahead of ours counts as no age, not less."""
    return max(now - intent_ts_ms / 1000, 0.0)


def measure(
    window: LagWindow, now: float, *, backlog: int | None, in_flight: int, handled: int
) -> RouterLoad:
    return RouterLoad(
        lag_sec=round(window.max(now), 3),
        window_sec=window.window_sec,
        backlog=backlog,
        in_flight=in_flight,
        entries=handled,
        ts_ms=int(now * 1000),
        source_service="router",
    )


def is_loaded(load: RouterLoad) -> bool:
    return load.lag_sec >= LOADED_LAG_SEC or bool(load.backlog)


def report_due(load: RouterLoad, last: RouterLoad | None, *, every_sec: float, idle_every_sec: float) -> bool:
    """Publish ``load`` now? Always the first; every ``every_sec`` while loaded or just after (so risk
    hears the load clear at once), every ``idle_every_sec`` while idle; at once when it turns loaded."""
    if last is None:
        return True
    since = (load.ts_ms - last.ts_ms) / 1000
    if is_loaded(load) or is_loaded(last):
        return since >= every_sec or not is_loaded(last)
    return since >= idle_every_sec
