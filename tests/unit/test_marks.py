"""Venue marks for money checks: the cap rule and the cache's staleness bounds (libs/common/marks.py)."""

from __future__ import annotations

import asyncio

import pytest

from libs.common.marks import MarkCache, cap_notional, read_mark


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


class Venue:
    """A mark source: answers ``price`` (or raises ``error``) after ``delay`` seconds; counts reads."""

    def __init__(self, price: float = 50_000.0) -> None:
        self.price, self.error, self.delay = price, None, 0.0
        self.reads: list[str] = []

    async def read(self, symbol: str) -> float:
        self.reads.append(symbol)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.price


def cache(venue: Venue, clock: Clock, fresh: float = 1.0, max_stale: float = 5.0) -> MarkCache:
    return MarkCache(venue.read, fresh_sec=fresh, max_stale_sec=max_stale, clock=clock)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_cap_notional_counts_market_at_mark_and_limits_at_the_higher_of_limit_and_mark():
    assert cap_notional(0.2, 50_000.0) == 10_000.0
    assert cap_notional(0.2, 50_000.0, 52_000.0) == pytest.approx(10_400.0)  # limit above: the limit
    assert cap_notional(0.2, 50_000.0, 48_000.0) == 10_000.0  # limit below: the mark, never less


async def test_fresh_mark_is_reused_without_a_venue_read():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    assert await marks.get("BTC") == 50_000.0
    venue.price = 60_000.0
    clock.t += 0.9
    assert await marks.get("BTC") == 50_000.0
    assert venue.reads == ["BTC"]


async def test_aging_mark_is_served_and_refreshed_in_the_background():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    await marks.get("BTC")
    venue.price, venue.delay = 60_000.0, 0.05
    clock.t += 2.0  # older than fresh, younger than max stale: no wait
    assert await asyncio.wait_for(marks.get("BTC"), 0.01) == 50_000.0
    assert await marks.get("BTC") == 50_000.0  # the refresh in flight is shared, not repeated
    await asyncio.sleep(0.1)
    assert await marks.get("BTC") == 60_000.0 and len(venue.reads) == 2


async def test_mark_older_than_max_stale_is_reread_before_use():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    await marks.get("BTC")
    venue.price = 60_000.0
    clock.t += 5.1
    assert await marks.get("BTC") == 60_000.0


async def test_unreadable_mark_is_none_and_a_stale_one_is_never_used():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    venue.error = RuntimeError("503")
    assert await marks.get("BTC") is None  # never read
    venue.error = None
    assert await marks.get("BTC") is None  # a failure a moment ago: refused fast, not asked again
    assert len(venue.reads) == 1
    clock.t += 1.0
    assert await marks.get("BTC") == 50_000.0
    venue.error = ValueError("no mark")
    clock.t += 2.0  # within max stale: the cached mark serves while the refresh fails
    assert await marks.get("BTC") == 50_000.0
    await settle()
    clock.t += 3.5  # now 5.5 s old: must be re-read, and cannot be
    assert await marks.get("BTC") is None
    assert marks.failures == 3 and len(venue.reads) == 4


async def test_concurrent_callers_share_one_read_per_symbol():
    venue, clock = Venue(), Clock()
    venue.delay = 0.02
    marks = cache(venue, clock)
    got = await asyncio.gather(*(marks.get("BTC") for _ in range(10)), marks.get("ETH"))
    assert got == [50_000.0] * 11
    assert sorted(venue.reads) == ["BTC", "ETH"]


async def test_read_mark_refuses_an_answer_without_a_positive_mark():
    class Ex:
        def __init__(self, ticker):
            self.ticker = ticker

        async def fetch_mark_price(self, symbol):
            return self.ticker

    assert await read_mark(Ex({"markPrice": 50_000.0}), "BTC") == 50_000.0
    for bad in ({"markPrice": None}, {"markPrice": 0}, {}, None):
        with pytest.raises(ValueError):
            await read_mark(Ex(bad), "BTC")


async def test_close_cancels_reads_in_flight():
    venue, clock = Venue(), Clock()
    venue.delay = 10
    marks = cache(venue, clock)
    task = asyncio.ensure_future(marks.get("BTC"))
    await settle()
    await marks.close()
    with pytest.raises(asyncio.CancelledError):
        await task
