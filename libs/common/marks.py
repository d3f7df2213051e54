"""Venue mark prices for money checks: never a price a caller supplies.

A notional cap is only as good as the price it multiplies by, so the entry service and the router
each read the venue's own mark prices and keep them in a ``MarkCache``. One refresh answers for every
symbol the cache was asked about lately: from ``BULK_FROM`` of them on, one read of every symbol
(Binance ``GET /fapi/v1/premiumIndex`` without a symbol: request weight 10, whatever the number of
symbols; one read per symbol would cost 1 each, once per symbol and ``fresh_sec``: 50 symbols at 1 s
is 3,000 weight a minute, over the venue's 2,400 on its own); below it, one read per symbol (weight 1
each: a bot on two symbols must not pay 10 a second for its marks). Per symbol:

- younger than ``fresh_sec``: used as is, no venue call;
- older but younger than ``max_stale_sec``: still used, and one background read refreshes every
  symbol, so the hot path never waits for the venue while a usable mark is cached;
- older than ``max_stale_sec`` or never read: it must be re-read before use (concurrent callers, of
  any symbol, share one read); if it cannot be read the answer is None and the caller refuses the
  entry. The venue is asked at most once per ``fresh_sec`` after a read: after a failed one, so a venue
  that cannot answer is not asked once per entry and refusals stay fast (one failure refuses every
  symbol without a usable mark); after an answer, so a symbol the answer did not list (not one the
  venue prices: no mark, never a guess) is refused fast too, not read again per entry.

A symbol the bulk answer leaves out is not read again on its own: both forms read the same venue
table, so the single read would almost surely fail too (Binance: -1121 invalid symbol), at a venue
call per refused entry.

``cap_notional`` is the one rule for how much an entry counts against a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from libs.common.logs import RateLimitedLog

log = logging.getLogger("erl.marks")


def cap_notional(qty: float, mark: float, limit_price: float | None = None) -> float:
    """USDT an entry counts against a notional cap: ``qty`` x the venue mark, or x its limit if higher.

    A buy limit above the mark can fill up to its limit, one below rests until the price falls, and
    meanwhile the position it adds is worth the mark: max(limit, mark). A sell limit above the mark
    fills at its limit or better (a higher price, a larger notional), one below the mark fills at the
    book around the mark: max(limit, mark) again. (min(limit, mark) for sells would count a resting
    sell above the mark below what it fills at: up to the venue's PERCENT_PRICE band over the cap.)
    """
    price = mark if limit_price is None else max(limit_price, mark)
    return qty * price


def marks_from_premium_index(
    rows: Any, markets_by_id: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, float]:
    """{ccxt symbol: mark} from premiumIndex's list form (``[{"symbol": "BTCUSDT", "markPrice": "..."},
    ...]``), venue ids turned into ccxt symbols through ccxt's ``markets_by_id`` (linear markets only:
    the fapi's own). A row whose id is no loaded market, or without a positive finite mark, is left
    out: that symbol gets no mark. Raises ValueError when the answer is not a list.

    Parsed here rather than by ccxt's ``fetch_mark_prices``: that builds a full ticker (timestamps,
    ISO dates, a dozen fields) per listed symbol, hundreds on Binance, to use one number of each.
    """
    if not isinstance(rows, list):
        raise ValueError(f"premiumIndex without a symbol answered a {type(rows).__name__}, not a list")
    marks: dict[str, float] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(venue_id := row.get("symbol"), str):
            continue
        try:
            mark = float(row["markPrice"])
        except (KeyError, TypeError, ValueError):  # missing, null, not a number
            continue
        if not (mark > 0 and math.isfinite(mark)):
            continue
        for market in markets_by_id.get(venue_id) or ():
            if market.get("linear"):
                marks[market["symbol"]] = mark
    return marks


# premiumIndex weighs 1 with a symbol and 10 without: from 10 symbols on, one read of all costs no more
BULK_FROM = 10


def read_covers(symbols: Sequence[str]) -> frozenset[str] | None:
    """The symbols a read of ``symbols`` answers for: all of them (None) when it is one bulk read."""
    return None if len(symbols) >= BULK_FROM else frozenset(symbols)


async def read_marks(exchange: Any, symbols: Sequence[str]) -> dict[str, float]:
    """The marks of ``symbols`` (at least), by ccxt symbol, through ccxt's implicit
    ``fapiPublicGetPremiumIndex``: without a symbol (every symbol in one read) from ``BULK_FROM`` symbols
    on, else one read per symbol, concurrently. A symbol whose own read failed is left out (no mark);
    when every read failed, the first error is raised. Raises whatever ccxt raises, or ValueError for a
    bulk answer that is not a list."""
    await exchange.load_markets()  # the id -> symbol map; loaded once, then a finished future
    if read_covers(symbols) is None:
        rows = await exchange.fapiPublicGetPremiumIndex()
        return marks_from_premium_index(rows, exchange.markets_by_id)
    # a symbol that is no loaded market is not read (the venue would refuse it, -1121): no mark
    ids = [m["id"] for s in symbols if (m := (exchange.markets or {}).get(s)) is not None]
    answers = await asyncio.gather(
        *(exchange.fapiPublicGetPremiumIndex({"symbol": venue_id}) for venue_id in ids),
        return_exceptions=True,
    )
    failed = [a for a in answers if isinstance(a, BaseException)]
    if failed and len(failed) == len(answers):
        raise failed[0]
    return marks_from_premium_index([a for a in answers if isinstance(a, dict)], exchange.markets_by_id)


def _covers(symbols: frozenset[str] | None, symbol: str) -> bool:
    return symbols is None or symbol in symbols


class MarkCache:
    """Venue marks of the symbols asked about lately, from one shared read at a time, with a hard
    staleness limit per symbol; ``get`` answers None rather than guess."""

    def __init__(
        self,
        read: Callable[[Sequence[str]], Awaitable[Mapping[str, float]]],
        *,
        fresh_sec: float,
        max_stale_sec: float,
        clock: Callable[[], float] = time.monotonic,
        service: str = "",
    ) -> None:
        """``read``: the positive marks of the symbols it is given (those asked about within
        ``max_stale_sec``), by symbol (``read_marks``)."""
        self.read, self.clock = read, clock
        self.fresh_sec, self.max_stale_sec = fresh_sec, max(max_stale_sec, fresh_sec)
        self.service = service
        self._marks: dict[str, tuple[float, float]] = {}  # symbol -> (mark, read at)
        self._asked: dict[str, float] = {}  # symbol -> when a caller last asked for its mark
        self._answered_at: float | None = None  # when the last answered read was asked
        self._failed_at: float | None = None  # when the last read failed (None: it answered)
        self._in_flight: asyncio.Task[Mapping[str, float] | None] | None = None
        # the symbols the read in flight, and the last answered one, asked for (None: every symbol)
        self._in_flight_covers: frozenset[str] | None = None
        self._answer_covers: frozenset[str] | None = None
        self.reads = 0  # venue reads started (status, tests)
        self.failures = 0
        self._limited = RateLimitedLog(log, 10.0)

    async def get(self, symbol: str) -> float | None:
        """A mark of ``symbol`` no older than ``max_stale_sec``, or None when the venue cannot say."""
        now = self.clock()
        self._asked[symbol] = now
        cached = self._marks.get(symbol)
        if cached is not None:
            mark, at = cached
            age = now - at
            if age <= self.fresh_sec:
                return mark
            if age <= self.max_stale_sec:
                if self._may_read(now):
                    self._start_read()  # refresh in the background; this caller does not wait
                return mark
        marks: Mapping[str, float] | None
        if self._may_read(now) or (self._failed_at is None and not _covers(self._answer_covers, symbol)):
            # (a symbol the last answer did not ask for is read at once: it was not asked about yet)
            task = self._in_flight
            if task is not None and not _covers(self._in_flight_covers, symbol):
                await asyncio.shield(task)  # a read without it: then one with it
            marks = await asyncio.shield(self._start_read())
            if marks is None:
                return None  # the read failed (logged)
        elif self._failed_at is not None:
            return None  # the last read failed a moment ago: refuse fast rather than ask again
        else:
            marks = {}  # the last answer, a moment ago, listed no mark of it (or it would be fresh)
        got = marks.get(symbol)
        if got is None:
            self._limited(
                "mark.unavailable",
                logging.WARNING,
                service=self.service,
                symbol=symbol,
                error="not in the venue's premiumIndex answer",
            )
            return None
        return got

    def _may_read(self, now: float) -> bool:
        """A read is in flight (join it) or none was made within ``fresh_sec``."""
        if self._in_flight is not None:
            return True
        last = self._failed_at if self._failed_at is not None else self._answered_at
        return last is None or now - last >= self.fresh_sec

    def age(self, symbol: str) -> float | None:
        cached = self._marks.get(symbol)
        return None if cached is None else self.clock() - cached[1]

    def _start_read(self) -> asyncio.Task[Mapping[str, float] | None]:
        """The read in flight, started if there is none (one at a time, for every symbol)."""
        task = self._in_flight
        if task is None:
            self.reads += 1
            wanted = self._wanted(self.clock())
            self._in_flight_covers = read_covers(wanted)
            task = self._in_flight = asyncio.ensure_future(self._read_once(wanted, self._in_flight_covers))
            task.add_done_callback(self._read_done)
        return task

    def _read_done(self, task: asyncio.Task[Mapping[str, float] | None]) -> None:
        if self._in_flight is task:
            self._in_flight = None

    def _wanted(self, now: float) -> list[str]:
        """The symbols asked about within ``max_stale_sec`` (the others are forgotten)."""
        for symbol in [s for s, at in self._asked.items() if now - at > self.max_stale_sec]:
            del self._asked[symbol]
        return sorted(self._asked)

    async def _read_once(
        self, wanted: list[str], covers: frozenset[str] | None
    ) -> Mapping[str, float] | None:
        asked_at = self.clock()  # the marks are at least this old once they arrive
        try:
            marks = await self.read(wanted)
        except Exception as e:  # any failure: no mark (callers refuse entries), never a guess
            self.failures += 1
            self._failed_at = self.clock()
            self._limited(
                "mark.unavailable",
                logging.WARNING,
                service=self.service,
                error=f"{type(e).__name__}: {str(e)[:200]}",
            )
            return None
        for symbol, mark in marks.items():
            self._marks[symbol] = (mark, asked_at)
        self._answered_at, self._failed_at = asked_at, None
        self._answer_covers = covers
        return marks

    def status(self) -> dict:
        now = self.clock()
        return {
            "symbols": {s: {"mark": m, "age_sec": round(now - at, 3)} for s, (m, at) in self._marks.items()},
            "reads": self.reads,
            "failures": self.failures,
        }

    async def close(self) -> None:
        task = self._in_flight
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
