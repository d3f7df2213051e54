"""What the router does with a venue fact about one of its orders. Pure.

A full fact (the venue stream's order update: state, filled quantity, average price) is settled from
directly; a partial one (the reconciler saw the order leave the open orders) needs a lookup. Nothing
moves an order back: an update older than what the router knows (by the venue's event time, the filled
quantity or the state machine's edges) is refused as stale, so a replayed or reordered event is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from libs.common.messages import VenueOrderFact
from libs.common.state_machine import OPEN_ORDER_STATES, OrderState, can_transition


class FactAction(StrEnum):
    SETTLE = "settled"  # move to the fact's state, with its fill
    SAME = "same"  # nothing new: the order already stands so
    STALE = "stale"  # older than what we know: refused
    LOOKUP = "lookup"  # a partial fact: ask the venue
    IGNORED = "ignored"  # nothing to do for an order in this state


@dataclass(frozen=True, slots=True)
class Known:
    """What the router knows of an order: its state, filled quantity and last venue event time."""

    state: OrderState
    filled: float = 0.0
    event_ms: int | None = None


def fact_action(known: Known, fact: VenueOrderFact) -> FactAction:
    if fact.state is None:
        if known.state in OPEN_ORDER_STATES | {OrderState.CANCELED}:
            return FactAction.LOOKUP
        return FactAction.IGNORED
    if known.event_ms is not None and fact.event_ms is not None and fact.event_ms < known.event_ms:
        return FactAction.STALE
    filled = fact.filled_qty or 0.0
    if filled < known.filled:
        return FactAction.STALE  # a fill never shrinks
    if fact.state is known.state and (
        known.state is not OrderState.PARTIALLY_FILLED or filled == known.filled
    ):
        return FactAction.SAME
    if not can_transition(known.state, fact.state):
        return FactAction.STALE
    return FactAction.SETTLE
