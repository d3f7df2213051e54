"""The user data stream's raw events (Binance USD-M) -> our types, without ccxt. Pure.

ccxt.pro would parse every ``ORDER_TRADE_UPDATE`` / ``ALGO_UPDATE`` into a unified order and file it in
its order cache, and every ``ACCOUNT_UPDATE`` into its balance and position caches, for ``watch_*``
callers; libs/venue/user_stream.py taps the raw messages before ccxt sees them and reads each once here
(py-spy had ccxt's parse and caches at a third of the stream service's CPU).

Orders are read as ccxt 4.5.x reads them wherever the reading reaches a ``VenueOrderFact`` (client id,
ids, status, state, filled, average, event time), so one update gives the same fact and the same
journal message id either way (a restart across the change duplicates nothing);
tests/unit/test_stream_events.py holds the two readings side by side on the simulator's events. One
reading is ccxt's only: a conditional order reported closed (TRIGGERED) without a fill reads its
quantity as filled (ccxt's ``safe_order``); its state stays ACKED, so the router takes it as no news.
What no fact carries and ccxt lost is read from the event: ``cp`` (close position) and a conditional
order's own type (ccxt calls a trailing stop a stop).

Field names: docs/user-data-stream-notes.md ("What the venue (and the simulator) sends").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libs.common.state_machine import OrderState
from libs.venue.order_states import order_state, unified_status
from libs.venue.parsing import VenueOrder
from libs.venue.raw_orders import CONTRACT_ORDER_TYPE, trigger_order_type

# the events that carry an order: plain orders, and conditional orders of the Algo Service
ORDER_EVENTS = frozenset({"ORDER_TRADE_UPDATE", "ALGO_UPDATE"})

# a conditional order's stream states while its trigger is working: the order it placed reports the fill
_ALGO_WORKING = frozenset({"TRIGGERING", "TRIGGERED"})

SymbolOf = Callable[[str], str | None]  # the venue's market id -> our symbol (None: not a market we know)


@dataclass(frozen=True, slots=True)
class StreamOrderUpdate:
    """One order update pushed on the user data stream, in our types.

    ``complete``: it says how the order stands (state, filled quantity and average price) as fully as a
    REST lookup would; when False only a lookup can tell (e.g. an algo order finished without its fill).
    """

    order: VenueOrder
    event_ms: int | None  # the venue's transaction time: orders the updates of one order
    complete: bool


@dataclass(frozen=True, slots=True)
class StreamPositionUpdate:
    """One symbol's position as an ``ACCOUNT_UPDATE`` on the user data stream states it."""

    symbol: str  # unified (BTC/USDT:USDT)
    qty: float  # signed, as VenuePosition
    event_ms: int | None
    reason: str  # the venue's ``m``: ORDER, FUNDING_FEE, ... (a change behind our back reads ORDER too)


def _text(v: Any) -> str | None:
    """A field as text; missing or empty is absent (ccxt's ``safe_string``)."""
    return None if v is None or v == "" else str(v)


def _nonzero(v: Any) -> str | None:
    """A number field as text; missing, empty or zero is absent (ccxt's ``omit_zero``)."""
    s = _text(v)
    return None if s is None or float(s) == 0 else s


def order_update_from_event(msg: dict[str, Any], symbol_of: SymbolOf) -> StreamOrderUpdate:
    """An ``ORDER_TRADE_UPDATE`` or ``ALGO_UPDATE``; raises ValueError on one we cannot read (no order
    part, client id, symbol or status, or a number that is not one), which the caller counts as
    malformed. A market we do not know keeps the venue's id as its symbol, as ccxt did.

    An algo update is the conditional order itself (its id is the algo id): TRIGGERING / TRIGGERED keep
    it working (the order it placed follows as its own ``ORDER_TRADE_UPDATE``, with the same client id,
    and carries the fill); FINISHED carries the fill in ``aq`` / ``ap``.
    """
    o = msg.get("o")
    if not isinstance(o, dict):
        raise ValueError(f"{msg.get('e')} without an order part: {msg!r}"[:300])
    is_algo = msg.get("e") == "ALGO_UPDATE"
    cid, venue_id, raw = _text(o.get("caid")) or _text(o.get("c")), _text(o.get("s")), _text(o.get("X"))
    if not cid or not venue_id or not raw:
        raise ValueError(f"stream order update without client id, symbol or status: {o!r}"[:300])
    status = unified_status(raw)
    # ccxt's safe_order: a closed order without one of amount / filled takes the other
    amount, filled = _nonzero(o.get("q")), _text(o.get("z"))
    if amount is None and status == "closed":
        amount = filled
    if filled is None and status == "closed":
        filled = amount
    filled_qty = float(filled) if filled else 0.0
    average = _nonzero(o.get("ap"))
    avg_price = float(average) if average else None
    state = order_state(status, filled_qty)
    if is_algo and raw in _ALGO_WORKING:
        state = OrderState.ACKED
    elif is_algo and raw == "FINISHED":
        filled_qty = float(o.get("aq") or 0)
        avg_price = float(o["ap"]) if o.get("ap") and float(o["ap"]) else None
    order_id = _text(o.get("i")) or _text(o.get("aid"))
    trigger = _nonzero(next((v for v in (o.get(k) for k in ("P", "sp", "tp")) if _text(v)), None))
    raw_type = str(o.get("o") or "")
    actual = _text(o.get("ai")) if is_algo else None
    event_ms = o.get("T") or msg.get("T")  # ALGO_UPDATE carries only the event's own T
    order = VenueOrder(
        client_order_id=cid,
        exchange_order_id=order_id,
        state=state,
        venue_status=raw,
        filled=filled_qty,
        amount=float(amount) if amount is not None else None,
        average=avg_price,
        actual_order_id=actual,
        symbol=symbol_of(venue_id) or venue_id,
        side=str(o.get("S") or "").lower(),
        order_type=trigger_order_type(raw_type.upper())
        if is_algo
        else CONTRACT_ORDER_TYPE.get(raw_type.lower(), raw_type.lower()),
        is_trigger=is_algo,
        reduce_only=o.get("R") is True,
        close_position=o.get("cp") is True,
        trigger_price=float(trigger) if trigger else None,
    )
    complete = state is not OrderState.UNKNOWN and not (state is OrderState.FILLED and filled_qty <= 0)
    return StreamOrderUpdate(order, int(event_ms) if event_ms else None, complete)


def position_updates_from_account_event(
    msg: dict[str, Any], symbol_of: SymbolOf
) -> list[StreamPositionUpdate]:
    """The positions of a raw ``ACCOUNT_UPDATE``. One-way mode only: a hedge-mode leg (``ps`` LONG /
    SHORT) is not ours to read; a market we do not know is skipped. Raises ValueError on one we cannot
    read, which the caller counts as malformed."""
    account = msg.get("a")
    if not isinstance(account, dict) or not isinstance(account.get("P", []), list):
        raise ValueError(f"ACCOUNT_UPDATE without an account part: {msg!r}"[:300])
    event_ms = msg.get("T") or msg.get("E")
    out = []
    for p in account.get("P", []):
        if not isinstance(p, dict) or "s" not in p or "pa" not in p:
            raise ValueError(f"ACCOUNT_UPDATE position without symbol or amount: {p!r}"[:300])
        if p.get("ps", "BOTH") != "BOTH":
            continue
        symbol = symbol_of(str(p["s"]))
        if symbol is None:
            continue
        out.append(
            StreamPositionUpdate(
                symbol, float(p["pa"]), int(event_ms) if event_ms else None, str(account.get("m", ""))
            )
        )
    return out
