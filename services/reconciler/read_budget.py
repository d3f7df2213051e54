"""How much the reconciler may read from the venue, and in which shape. Pure.

Binance weighs reads per IP over a rolling minute (2,400 by default): open orders
cost 1 per symbol or 40 for every symbol, and the reconciler reads regular and
conditional orders each tick. Polling everything every second costs ~85 weight/s,
twice the limit. So each tick picks the cheaper query shape for the symbols it must
watch, and the time to the next tick follows from the tick's cost and the share of
the limit the reconciler may use, stretched further when the venue's own count
(``X-MBX-USED-WEIGHT-1M``, every service on this IP) is over that share.

While the venue's user data stream is up and has been since a full read, every change to our orders
is pushed (and journaled): a tick then reads only the symbols something happened on, and the sweep
is the backstop for what a stream that looks healthy may have lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

POSITIONS_WEIGHT = 5  # GET /fapi/v3/positionRisk, every symbol
BALANCE_WEIGHT = 5  # GET /fapi/v3/balance
ORDERS_ONE_WEIGHT = 1  # GET openOrders / openAlgoOrders with a symbol
ORDERS_ALL_WEIGHT = 40  # ... without one
ORDER_KINDS = 2  # regular and conditional (algo) orders


@dataclass(frozen=True, slots=True)
class ReadPlan:
    symbols: tuple[str, ...] | None  # None: every symbol in one query per kind
    with_equity: bool

    @property
    def cost(self) -> int:
        per_kind = ORDERS_ALL_WEIGHT if self.symbols is None else ORDERS_ONE_WEIGHT * len(self.symbols)
        return POSITIONS_WEIGHT + ORDER_KINDS * per_kind + (BALANCE_WEIGHT if self.with_equity else 0)


def plan_reads(watched: Iterable[str], *, sweep: bool, with_equity: bool) -> ReadPlan:
    """Per-symbol queries for the watched symbols when cheaper; every symbol on a sweep.

    A per-symbol tick cannot see orders on symbols nobody watches (placed behind our
    back): the periodic sweep is what finds those.
    """
    symbols = tuple(sorted(set(watched)))
    if sweep or len(symbols) * ORDERS_ONE_WEIGHT >= ORDERS_ALL_WEIGHT:
        return ReadPlan(None, with_equity)
    return ReadPlan(symbols, with_equity)


SWEEP = ReadPlan(None, False)


def symbols_to_read(
    watched: set[str],
    *,
    trusted: bool,
    changed: Iterable[str],
    positions: dict[str, float],
    last_positions: dict[str, float] | None,
) -> set[str]:
    """The symbols whose open orders a tick reads: every watched one, unless the stream is ``trusted``;
    then those with journal or stream activity since their last read (``changed``: intents,
    transitions, order facts, gaps, last tick's findings) and those whose position moved since the
    last read (a change the stream may not have told us about as an order event)."""
    if not trusted or last_positions is None:
        return set(watched)
    moved = {
        s for s in set(positions) | set(last_positions) if positions.get(s, 0.0) != last_positions.get(s, 0.0)
    }
    return set(changed) | moved


def average_tick_cost(regular: ReadPlan, equity_every_ticks: int) -> float:
    """A regular tick's weight with the balance read spread over the ticks that make it."""
    return ReadPlan(regular.symbols, False).cost + BALANCE_WEIGHT / equity_every_ticks


def sweep_reserve_1m(regular: ReadPlan, sweep_every_sec: float) -> float:
    """Weight per minute set aside for sweeps; none when regular ticks read every symbol anyway."""
    return 0.0 if regular.symbols is None else SWEEP.cost * 60.0 / sweep_every_sec


def next_delay(
    *,
    base_sec: float,
    max_sec: float,
    tick_cost: float,
    used_1m: int | None,
    budget_1m: float,
    reserved_1m: float = 0.0,
    burst_cost: float | None = None,
) -> float:
    """Seconds to the next tick: no faster than ``base_sec``; regular ticks of ``tick_cost`` spend no
    more than what the budget leaves after ``reserved_1m`` (sweeps); longer while the whole IP is over
    budget; never beyond ``max_sec`` (protection must still be checked within a bounded time).

    ``tick_cost`` is the average tick (balance reads amortised); one tick at its dearest
    (``burst_cost``) is held back: a rolling minute can hold one tick more than 60 / delay.
    """
    held_back = tick_cost if burst_cost is None else max(burst_cost, tick_cost)
    for_ticks = max(budget_1m - reserved_1m - held_back, budget_1m * 0.1)
    delay = max(base_sec, tick_cost * 60.0 / for_ticks)
    if used_1m is not None and used_1m > budget_1m:
        delay *= used_1m / budget_1m
    return min(delay, max(max_sec, base_sec))
