"""Shedding entries from the router's load: router.load -> a belief-debt input -> guard knobs. Pure.

The router reports how late its entries are (``RouterLoad``: the largest entry age over a short
window, and how many messages wait for it). Over RISK_ROUTER_LAG_THROTTLE_SEC (or the backlog
threshold) entries are throttled: defensive knobs, one entry order open at a time. Over
RISK_ROUTER_LAG_BLOCK_SEC they are blocked: halted knobs, and the router refuses the entries still
queued (``entries_blocked``) instead of sending them late, so the backlog drains. Exits and
protection never read the knobs: they are never shed.

The reading is a belief-debt input (``DebtInputs.router_load``) with the controller's usual persistence
and hysteresis (RISK_TIGHTEN_AFTER, RISK_RECOVER_AFTER, one step back at a time), but it has its own
controller, stepped on risk's evaluation period (RISK_EVAL_INTERVAL_SEC) rather than per reconcile
summary: summaries come every 1-10 s, and at four times the router's capacity the backlog grows by
thousands of entries in the 10-20 s two summaries can take. The knobs take the stricter of the two.

A router that reported and then went silent for RISK_ROUTER_LOAD_STALE_SEC is unknown: neither healthy
nor proof of overload, it keeps entries cautious (never blocked) until a report arrives. Before any report (risk
just started, or no router runs) the input is not counted, as for the venue stream's status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from libs.common.config import RiskSettings
from libs.common.messages import RouterLoad
from services.risk.belief_controller import MODES, BeliefController, DebtInputs


class LoadLevel(IntEnum):
    """The mode each level asks for (its debt is that mode's threshold). Unknown asks for less than
    throttle so that it lets a block recover (debt under half the halted threshold) yet never counts
    as healthy: a silent router ends in cautious, whatever it said last."""

    OK = 0
    UNKNOWN = 1  # cautious: the router's reports stopped
    THROTTLE = 2  # defensive: one entry order open at a time
    BLOCK = 3  # halted: no new entries; the router refuses the queued ones


@dataclass(frozen=True, slots=True)
class LoadReading:
    level: LoadLevel
    detail: str  # what the level is made of, for the knobs' reason and /guard
    lag_sec: float | None = None
    depth: int | None = None  # messages waiting for the router: server backlog + held in memory


NOT_REPORTED = LoadReading(LoadLevel.OK, "no router load reported yet")


def newer(current: RouterLoad | None, report: RouterLoad) -> RouterLoad:
    """The report to keep: the later one (core NATS may deliver an old one after a reconnect)."""
    return report if current is None or report.ts_ms >= current.ts_ms else current


def load_reading(report: RouterLoad | None, now: float, s: RiskSettings) -> LoadReading:
    if report is None:
        return NOT_REPORTED
    age = now - report.ts_ms / 1000
    if age > s.router_load_stale_sec:
        return LoadReading(
            LoadLevel.UNKNOWN,
            f"router load unknown: last report {age:.0f} s ago (> {s.router_load_stale_sec:g} s)",
        )
    lag, depth = report.lag_sec, (report.backlog or 0) + report.in_flight
    seen = f"entry lag {lag:.2f} s, {depth} waiting"
    for level, lag_max, depth_max, word in (
        (LoadLevel.BLOCK, s.router_lag_block_sec, s.router_backlog_block, "block"),
        (LoadLevel.THROTTLE, s.router_lag_throttle_sec, s.router_backlog_throttle, "throttle"),
    ):
        if lag >= lag_max or depth >= depth_max:
            why = f"lag >= {lag_max:g} s" if lag >= lag_max else f"waiting >= {depth_max}"
            return LoadReading(level, f"{seen} ({why}: {word})", lag, depth)
    return LoadReading(LoadLevel.OK, seen, lag, depth)


@dataclass
class LoadShedder:
    """The router-load controller: a ``BeliefController`` fed only the load level, stepped once per
    evaluation period. ``reason`` names the last mode change with the reading that made it."""

    settings: RiskSettings
    controller: BeliefController = field(init=False)
    reading: LoadReading = NOT_REPORTED
    reason: str = ""

    def __post_init__(self) -> None:
        self.controller = BeliefController(self.settings)

    @property
    def mode(self) -> int:
        return self.controller.mode

    def step(self, reading: LoadReading) -> bool:
        """One evaluation; True when the mode changed."""
        self.reading = reading
        trace = self.controller.step(DebtInputs(router_load=int(reading.level)))
        if trace.changed:
            self.reason = f"router load {trace.reason}; {reading.detail}"
        return trace.changed

    def restore(self, mode: int) -> None:
        """A restart takes over the mode the last knobs named: it relaxes as usual once the load is clear."""
        self.controller.mode = mode
        self.reason = f"router load: {MODES[mode]} taken over at start"
