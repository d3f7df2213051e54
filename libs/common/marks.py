"""Venue mark prices for money checks: never a price a caller supplies.

A notional cap is only as good as the price it multiplies by, so the entry service and the router
each read the venue's own mark price (Binance ``GET /fapi/v1/premiumIndex`` with a symbol: request
weight 1) and keep it in a ``MarkCache``:

- younger than ``fresh_sec``: used as is, no venue call;
- older but younger than ``max_stale_sec``: still used, and one background re-read refreshes it, so
  the hot path never waits for the venue while a usable mark is cached;
- older than ``max_stale_sec`` or never read: it must be re-read before use (concurrent callers share
  one read); if it cannot be read the answer is None and the caller refuses the entry. After a failed
  read the venue is not asked again for ``fresh_sec``: a venue that cannot answer is not asked once per
  entry, and refusals stay fast.

``cap_notional`` is the one rule for how much an entry counts against a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
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


async def read_mark(exchange: Any, symbol: str) -> float:
    """The venue's mark price of ``symbol`` via ccxt ``fetch_mark_price`` (premiumIndex with the symbol).

    Raises whatever ccxt raises, or ValueError when the answer holds no positive mark.
    """
    ticker = await exchange.fetch_mark_price(symbol)
    price = float((ticker or {}).get("markPrice") or 0)
    if not price > 0:
        raise ValueError(f"no mark price for {symbol} in the venue's answer")
    return price


class MarkCache:
    """Per-symbol venue marks with a hard staleness limit; ``get`` answers None rather than guess."""

    def __init__(
        self,
        read: Callable[[str], Awaitable[float]],
        *,
        fresh_sec: float,
        max_stale_sec: float,
        clock: Callable[[], float] = time.monotonic,
        service: str = "",
    ) -> None:
        self.read, self.clock = read, clock
        self.fresh_sec, self.max_stale_sec = fresh_sec, max(max_stale_sec, fresh_sec)
        self.service = service
        self._marks: dict[str, tuple[float, float]] = {}  # symbol -> (mark, read at)
        self._failed_at: dict[str, float] = {}
        self._reads: dict[str, asyncio.Task[float | None]] = {}
        self.reads = 0  # venue reads started (status, tests)
        self.failures = 0
        self._limited = RateLimitedLog(log, 10.0)

    async def get(self, symbol: str) -> float | None:
        """A mark of ``symbol`` no older than ``max_stale_sec``, or None when the venue cannot say."""
        now = self.clock()
        cached = self._marks.get(symbol)
        if cached is not None:
            mark, at = cached
            age = now - at
            if age <= self.fresh_sec:
                return mark
            if age <= self.max_stale_sec:
                if self._may_read(symbol, now):
                    self._read(symbol)  # refresh in the background; this caller does not wait
                return mark
        if not self._may_read(symbol, now):
            return None  # the last read failed a moment ago: refuse fast rather than ask again
        return await asyncio.shield(self._read(symbol))

    def _may_read(self, symbol: str, now: float) -> bool:
        """A read is in flight (join it) or none failed within ``fresh_sec``."""
        failed = self._failed_at.get(symbol)
        return symbol in self._reads or failed is None or now - failed >= self.fresh_sec

    def age(self, symbol: str) -> float | None:
        cached = self._marks.get(symbol)
        return None if cached is None else self.clock() - cached[1]

    def _read(self, symbol: str) -> asyncio.Task[float | None]:
        """The read of ``symbol`` in flight, started if there is none (one per symbol at a time)."""
        task = self._reads.get(symbol)
        if task is None:
            self.reads += 1
            task = asyncio.ensure_future(self._read_once(symbol))
            self._reads[symbol] = task
            task.add_done_callback(lambda _: self._reads.pop(symbol, None))
        return task

    async def _read_once(self, symbol: str) -> float | None:
        asked_at = self.clock()  # the mark is at least this old once it arrives
        try:
            mark = await self.read(symbol)
        except Exception as e:  # any failure: no mark (callers refuse entries), never a guess
            self.failures += 1
            self._failed_at[symbol] = self.clock()
            self._limited(
                "mark.unavailable",
                logging.WARNING,
                service=self.service,
                symbol=symbol,
                error=f"{type(e).__name__}: {str(e)[:200]}",
            )
            return None
        self._marks[symbol] = (mark, asked_at)
        self._failed_at.pop(symbol, None)
        return mark

    def status(self) -> dict:
        return {
            "symbols": {
                s: {"mark": m, "age_sec": round(self.clock() - at, 3)} for s, (m, at) in self._marks.items()
            },
            "reads": self.reads,
            "failures": self.failures,
        }

    async def close(self) -> None:
        for task in list(self._reads.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
