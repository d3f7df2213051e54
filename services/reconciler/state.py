"""What the reconciler carries from tick to tick, one tick's work in progress and what a tick returns.

Pure data. The engine reads its knobs straight from ``ReconcilerSettings``: one definition of each
default, the one operators see in the settings table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libs.common.config import ReconcilerSettings
from libs.common.messages import (
    BusMessage,
    CancelIntent,
    MismatchEvent,
    OrderIntent,
    PositionBeliefTransition,
    ProtectionGap,
    ReconcileSummary,
    RepairAction,
    ReplaceIntent,
)
from libs.common.state_machine import PositionBelief
from services.reconciler.gaps import GapTracker, GapUpdate
from services.reconciler.protection import Coverage


@dataclass
class ReconcileState:
    config: ReconcilerSettings
    gaps: GapTracker = field(init=False)
    tick: int = 0
    streak: int = 0
    mismatch_events: int = 0
    repair_actions: int = 0
    repair_skipped: int = 0
    last_repair_at: dict[str, float] = field(default_factory=dict)
    belief_state: dict[str, PositionBelief] = field(default_factory=dict)
    leftover_cancels: dict[str, float] = field(default_factory=dict)  # client id -> when we asked
    emergency: dict[str, tuple[float, int, float]] = field(default_factory=dict)  # gap opened, exits, last
    # client id -> since when the venue has said it does not know an order we believe open (bounded by the
    # belief's open orders: dropped once the order is listed again or forgotten)
    not_found_since: dict[str, float] = field(default_factory=dict)
    leftovers_cancelled: int = 0
    emergency_exits: int = 0

    def __post_init__(self) -> None:
        self.gaps = GapTracker(self.config.protection_gap_ttl_sec)


@dataclass
class TickResult:
    mismatches: list[MismatchEvent] = field(default_factory=list)
    repairs: list[RepairAction] = field(default_factory=list)
    intents: list[OrderIntent | ReplaceIntent | CancelIntent] = field(default_factory=list)
    gap_events: list[ProtectionGap] = field(default_factory=list)
    belief_transitions: list[PositionBeliefTransition] = field(default_factory=list)
    summary: ReconcileSummary | None = None

    def events(self) -> list[BusMessage]:
        out: list[BusMessage] = [*self.belief_transitions, *self.mismatches, *self.gap_events, *self.repairs]
        if self.summary is not None:
            out.append(self.summary)
        return out


@dataclass
class TickWork:
    """One tick in progress: what its phases decided and found so far."""

    now: float
    out: TickResult = field(default_factory=TickResult)
    # every mismatch counts toward the streak; their events are built once the streak is known
    found: list[dict[str, Any]] = field(default_factory=list)
    explained: set[str] = field(default_factory=set)  # symbols whose position change a venue fill explains
    orphans: int = 0

    def mismatch(self, symbol: str, kind: str, detail: str = "", **kw: object) -> None:
        self.found.append({"symbol": symbol, "mismatch": kind, "detail": detail, **kw})


@dataclass(frozen=True, slots=True)
class SymbolCheck:
    """One symbol as this tick sees it: the venue's position, its stop coverage and its gap."""

    symbol: str
    qty: float  # the venue's signed position
    coverage: Coverage
    intended_stop: float | None  # where this position's stop belongs (None: flat)
    gap: GapUpdate
    breached: bool  # its gap has outlived the TTL
