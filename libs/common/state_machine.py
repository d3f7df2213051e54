"""The one state machine: order-intent, position-belief and cancel/replace lifecycles.

Each lifecycle is a transition table; ``transition`` validates a move and raises
``TransitionError`` on anything the table does not allow, so a lifecycle bug
fails fast in tests instead of silently corrupting what we believe.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class TransitionError(ValueError):
    """A lifecycle moved along an edge its transition table does not have."""

    def __init__(self, machine: str, src: str, dst: str, key: str | None = None) -> None:
        self.machine, self.src, self.dst, self.key = machine, src, dst, key
        where = f" ({key})" if key else ""
        super().__init__(f"invalid {machine} transition {src} -> {dst}{where}")


class OrderState(StrEnum):
    CREATED = "CREATED"  # intent received, nothing sent yet
    SUBMITTING = "SUBMITTING"  # request in flight
    RETRY_WAIT = "RETRY_WAIT"  # failed, confirmed not placed, backing off
    UNKNOWN = "UNKNOWN"  # outcome unknown (timeout, 5xx, restart): look up before any resend
    ACKED = "ACKED"  # resting on the venue
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCEL_PENDING = "CANCEL_PENDING"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"  # the venue or our error policy said no
    BLOCKED = "BLOCKED"  # our own policy (guard knobs, leverage cap) refused an entry
    FAILED = "FAILED"  # retries exhausted with the order confirmed absent
    MOOT = "MOOT"  # nothing left to do (reduce-only exit against a flat position)


_ORDER_EDGES: dict[OrderState, frozenset[OrderState]] = {
    OrderState.CREATED: frozenset(
        {OrderState.SUBMITTING, OrderState.BLOCKED, OrderState.REJECTED, OrderState.UNKNOWN}
    ),
    OrderState.SUBMITTING: frozenset(
        {
            OrderState.ACKED,
            OrderState.PARTIALLY_FILLED,
            OrderState.FILLED,
            OrderState.CANCELED,
            OrderState.EXPIRED,
            OrderState.RETRY_WAIT,
            OrderState.UNKNOWN,
            OrderState.REJECTED,
            OrderState.FAILED,
            OrderState.MOOT,
        }
    ),
    OrderState.RETRY_WAIT: frozenset(
        {
            OrderState.SUBMITTING,
            OrderState.FAILED,
            OrderState.REJECTED,
            OrderState.MOOT,
            OrderState.UNKNOWN,  # picked up again after a restart: look it up before any resend
        }
    ),
    OrderState.UNKNOWN: frozenset(
        {
            OrderState.ACKED,
            OrderState.PARTIALLY_FILLED,
            OrderState.FILLED,
            OrderState.CANCELED,
            OrderState.EXPIRED,
            OrderState.RETRY_WAIT,  # confirmed absent -> safe to resend
            OrderState.SUBMITTING,  # confirmed absent after a restart -> send
            OrderState.FAILED,
            OrderState.REJECTED,
            OrderState.BLOCKED,  # confirmed absent after a restart, and policy now refuses the entry
            OrderState.MOOT,  # confirmed absent, and no longer wanted (a replace whose old order filled)
        }
    ),
    OrderState.ACKED: frozenset(
        {
            OrderState.PARTIALLY_FILLED,
            OrderState.FILLED,
            OrderState.CANCEL_PENDING,
            OrderState.CANCELED,
            OrderState.EXPIRED,
        }
    ),
    OrderState.PARTIALLY_FILLED: frozenset(
        {
            OrderState.PARTIALLY_FILLED,  # another fill
            OrderState.FILLED,
            OrderState.CANCEL_PENDING,
            OrderState.CANCELED,
            OrderState.EXPIRED,
        }
    ),
    OrderState.CANCEL_PENDING: frozenset(
        {
            OrderState.CANCELED,
            OrderState.FILLED,  # filled before the cancel landed
            OrderState.PARTIALLY_FILLED,
            OrderState.ACKED,  # cancel refused, order still open
            OrderState.EXPIRED,
            OrderState.UNKNOWN,
        }
    ),
    # a fill reported after the cancel ack is real money: it must be representable
    OrderState.CANCELED: frozenset({OrderState.FILLED, OrderState.PARTIALLY_FILLED}),
    OrderState.FILLED: frozenset(),
    OrderState.EXPIRED: frozenset({OrderState.FILLED}),
    OrderState.REJECTED: frozenset(),
    OrderState.BLOCKED: frozenset(),
    OrderState.FAILED: frozenset(),
    OrderState.MOOT: frozenset(),
}

TERMINAL_ORDER_STATES = frozenset(
    {
        OrderState.FILLED,
        OrderState.CANCELED,
        OrderState.EXPIRED,
        OrderState.REJECTED,
        OrderState.BLOCKED,
        OrderState.FAILED,
        OrderState.MOOT,
    }
)
OPEN_ORDER_STATES = frozenset({OrderState.ACKED, OrderState.PARTIALLY_FILLED, OrderState.CANCEL_PENDING})


class PositionBelief(StrEnum):
    FLAT = "FLAT"
    OPENING = "OPENING"  # entry sent, not yet filled
    OPEN_UNPROTECTED = "OPEN_UNPROTECTED"  # position without adequate stop coverage
    OPEN_PROTECTED = "OPEN_PROTECTED"
    CLOSING = "CLOSING"
    DESYNC = "DESYNC"  # our belief and the venue disagree and we have not repaired it yet


_POSITION_EDGES: dict[PositionBelief, frozenset[PositionBelief]] = {
    PositionBelief.FLAT: frozenset(
        {
            PositionBelief.OPENING,
            PositionBelief.OPEN_UNPROTECTED,
            # entry and stage-1 stop can both land between two reconcile ticks
            PositionBelief.OPEN_PROTECTED,
            PositionBelief.DESYNC,
        }
    ),
    PositionBelief.OPENING: frozenset(
        {
            PositionBelief.FLAT,
            PositionBelief.OPEN_UNPROTECTED,
            PositionBelief.OPEN_PROTECTED,
            PositionBelief.DESYNC,
        }
    ),
    PositionBelief.OPEN_UNPROTECTED: frozenset(
        {PositionBelief.OPEN_PROTECTED, PositionBelief.CLOSING, PositionBelief.FLAT, PositionBelief.DESYNC}
    ),
    PositionBelief.OPEN_PROTECTED: frozenset(
        {PositionBelief.OPEN_UNPROTECTED, PositionBelief.CLOSING, PositionBelief.FLAT, PositionBelief.DESYNC}
    ),
    PositionBelief.CLOSING: frozenset(
        {
            PositionBelief.FLAT,
            PositionBelief.OPEN_UNPROTECTED,
            PositionBelief.OPEN_PROTECTED,
            PositionBelief.DESYNC,
        }
    ),
    PositionBelief.DESYNC: frozenset(
        {PositionBelief.FLAT, PositionBelief.OPEN_UNPROTECTED, PositionBelief.OPEN_PROTECTED}
    ),
}


class ReplaceState(StrEnum):
    """Bounded cancel/replace of one order (typically a protective stop)."""

    INTENT_CREATED = "INTENT_CREATED"
    CANCEL_SENT_UNKNOWN = "CANCEL_SENT_UNKNOWN"  # cancel outcome not confirmed yet
    REPLACE_RACE = "REPLACE_RACE"  # old order still open after cancel: do not place a second one
    FILLED_AFTER_CANCEL = "FILLED_AFTER_CANCEL"  # the old order filled: replacing would double up
    DONE = "DONE"
    GIVE_UP = "GIVE_UP"


_REPLACE_EDGES: dict[ReplaceState, frozenset[ReplaceState]] = {
    ReplaceState.INTENT_CREATED: frozenset(
        {
            ReplaceState.CANCEL_SENT_UNKNOWN,
            ReplaceState.REPLACE_RACE,
            ReplaceState.FILLED_AFTER_CANCEL,
            ReplaceState.DONE,
            ReplaceState.GIVE_UP,
        }
    ),
    ReplaceState.CANCEL_SENT_UNKNOWN: frozenset(
        {
            ReplaceState.CANCEL_SENT_UNKNOWN,
            ReplaceState.REPLACE_RACE,
            ReplaceState.FILLED_AFTER_CANCEL,
            ReplaceState.DONE,
            ReplaceState.GIVE_UP,
        }
    ),
    ReplaceState.REPLACE_RACE: frozenset(
        {
            ReplaceState.CANCEL_SENT_UNKNOWN,
            ReplaceState.REPLACE_RACE,
            ReplaceState.FILLED_AFTER_CANCEL,
            ReplaceState.DONE,
            ReplaceState.GIVE_UP,
        }
    ),
    ReplaceState.FILLED_AFTER_CANCEL: frozenset({ReplaceState.DONE}),
    ReplaceState.DONE: frozenset(),
    ReplaceState.GIVE_UP: frozenset(),
}

_TABLES: dict[type[StrEnum], tuple[str, dict]] = {
    OrderState: ("order", _ORDER_EDGES),
    PositionBelief: ("position", _POSITION_EDGES),
    ReplaceState: ("replace", _REPLACE_EDGES),
}


def can_transition(src: StrEnum, dst: StrEnum) -> bool:
    _, edges = _TABLES[type(src)]
    return type(src) is type(dst) and dst in edges[src]


S = TypeVar("S", bound=StrEnum)


def transition(src: S, dst: S, key: str | None = None) -> S:
    """Validate ``src -> dst`` and return ``dst``; raise TransitionError otherwise."""
    name, edges = _TABLES[type(src)]
    if type(src) is not type(dst) or dst not in edges[src]:
        raise TransitionError(name, str(src), str(dst), key)
    return dst
