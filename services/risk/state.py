"""Risk's own state that protects money and must survive a restart, as stored in KV.

Why a KV key and not a journal rebuild: the KV value is one read at start-up, written with
compare-and-set next to the guard knobs (same bucket, key ``risk.state``), so the state is back
before the first knobs are published whatever the journal's length or retention (a latched drawdown
can outlive a 30-day journal). The journal's KillSwitchEvents do not carry hold ends or the equity
peak, so a rebuild would have to re-derive them from every summary. A CAS conflict means someone
else wrote (a second risk instance, an operator tool): the two states are merged conservatively
(``merge``), never overwritten.

Hold ends are absolute unix seconds, so a restart neither extends nor shortens them; ``None`` means
latched until an operator ``/resume``.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.risk.kill_switch import Trigger

STATE_KEY = "risk.state"
STATE_VERSION = 1
# halt/resume commands remembered as applied (redeliveries and the bus copy of a REST command)
MAX_REMEMBERED_COMMANDS = 64

Until = Annotated[float, Field(allow_inf_nan=False)]


class RiskState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["risk.state"] = "risk.state"
    v: int = STATE_VERSION
    ts_ms: int = 0
    # active kill-switch trigger -> earliest release (unix seconds); None = latched until /resume
    holds: dict[Trigger, Until | None] = Field(default_factory=dict)
    peak_equity: float | None = Field(None, gt=0, allow_inf_nan=False)
    trips: dict[str, int] = Field(default_factory=dict)
    manual_halt: bool = False
    manual_reason: str = ""
    commands: list[str] = Field(default_factory=list, max_length=MAX_REMEMBERED_COMMANDS)

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > STATE_VERSION:  # a newer build wrote it: we cannot know what it means, fail safe
            raise ValueError(f"risk state version {v} is newer than this build understands ({STATE_VERSION})")
        return v

    def stamped(self) -> RiskState:
        return self.model_copy(update={"ts_ms": int(time.time() * 1000)})

    def comparable(self) -> RiskState:
        """The state without its write time (what decides whether a write is needed)."""
        return self.model_copy(update={"ts_ms": 0})


def holds_from_active(active: dict[Trigger, float]) -> dict[Trigger, float | None]:
    return {t: None if math.isinf(r) else r for t, r in active.items()}


def active_from_holds(holds: dict[Trigger, float | None]) -> dict[Trigger, float]:
    return {t: math.inf if r is None else r for t, r in holds.items()}


def remember(commands: list[str], *more: str) -> list[str]:
    """Append command ids (no repeats), keeping the newest MAX_REMEMBERED_COMMANDS."""
    out = [c for c in commands if c not in more]
    out.extend(dict.fromkeys(more))
    return out[-MAX_REMEMBERED_COMMANDS:]


def merge(a: RiskState, b: RiskState) -> RiskState:
    """The stricter of two states: every trip of either (latched wins, else the later end), the higher
    peak, either manual halt, both sets of applied commands."""
    holds: dict[Trigger, float | None] = dict(a.holds)
    for t, r in b.holds.items():
        if t not in holds:
            holds[t] = r
        else:
            mine = holds[t]
            holds[t] = None if mine is None or r is None else max(mine, r)
    peaks = [p for p in (a.peak_equity, b.peak_equity) if p is not None]
    trips = {k: max(a.trips.get(k, 0), b.trips.get(k, 0)) for k in a.trips.keys() | b.trips.keys()}
    halt_reason = a.manual_reason if a.manual_halt else b.manual_reason if b.manual_halt else ""
    return RiskState(
        ts_ms=max(a.ts_ms, b.ts_ms),
        holds=holds,
        peak_equity=max(peaks) if peaks else None,
        trips=trips,
        manual_halt=a.manual_halt or b.manual_halt,
        manual_reason=halt_reason,
        commands=remember(a.commands, *b.commands),
    )
