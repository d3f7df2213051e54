"""Venue marks for money checks: the cap rule, the bulk answer's parsing and the cache's staleness
bounds (libs/common/marks.py)."""

from __future__ import annotations

import asyncio

import pytest

from libs.common.marks import (
    BULK_FROM,
    MarkCache,
    cap_notional,
    marks_from_premium_index,
    read_covers,
    read_marks,
)

BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


class Venue:
    """A bulk mark source: answers ``prices`` (or raises ``error``) after ``delay`` seconds; counts reads."""

    def __init__(self) -> None:
        self.prices = {BTC: 50_000.0, ETH: 3_000.0}
        self.error: Exception | None = None
        self.delay = 0.0
        self.reads = 0
        self.asked: list[list[str]] = []  # the symbols each read was given

    async def read(self, symbols) -> dict[str, float]:
        self.reads += 1
        self.asked.append(list(symbols))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if read_covers(symbols) is None:  # one bulk read
            return dict(self.prices)
        return {s: p for s, p in self.prices.items() if s in symbols}  # each symbol read alone


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
    assert await marks.get(BTC) == 50_000.0
    venue.prices[BTC] = 60_000.0
    clock.t += 0.9
    assert await marks.get(BTC) == 50_000.0
    assert venue.reads == 1


async def test_one_read_serves_every_symbol_it_lists():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    assert await marks.get(BTC) == 50_000.0
    assert await marks.get(ETH) == 3_000.0
    assert list(marks.status()["symbols"]) == [BTC, ETH] and venue.reads == 2
    clock.t += 1.5
    venue.prices[BTC], venue.prices[ETH] = 60_000.0, 4_000.0
    assert await marks.get(BTC) == 50_000.0  # aging: served, one refresh for both in the background
    await settle()
    assert (await marks.get(BTC), await marks.get(ETH)) == (60_000.0, 4_000.0)
    assert venue.reads == 3 and venue.asked[-1] == [BTC, ETH]
    many = cache(venue, clock)
    many._asked.update({f"S{i}/USDT:USDT": clock.t for i in range(BULK_FROM)})  # a bot on many symbols
    assert await many.get(BTC) == 60_000.0 and await many.get(ETH) == 4_000.0
    assert venue.reads == 4  # one read of every symbol (premiumIndex without a symbol)


async def test_aging_mark_is_served_and_refreshed_in_the_background():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    await marks.get(BTC)
    await marks.get(ETH)
    venue.prices[BTC], venue.prices[ETH], venue.delay = 60_000.0, 4_000.0, 0.05
    clock.t += 2.0  # older than fresh, younger than max stale: no wait
    assert await asyncio.wait_for(marks.get(BTC), 0.01) == 50_000.0
    assert await marks.get(ETH) == 3_000.0  # the refresh in flight is shared, not repeated
    await asyncio.sleep(0.1)
    assert (await marks.get(BTC), await marks.get(ETH)) == (60_000.0, 4_000.0) and venue.reads == 3


async def test_mark_older_than_max_stale_is_reread_before_use():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    await marks.get(BTC)
    venue.prices[BTC] = 60_000.0
    clock.t += 5.1
    assert await marks.get(BTC) == 60_000.0


async def test_unreadable_mark_is_none_and_a_stale_one_is_never_used():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    venue.error = RuntimeError("503")
    assert await marks.get(BTC) is None  # never read
    venue.error = None
    assert await marks.get(BTC) is None  # a failure a moment ago: refused fast, not asked again
    assert venue.reads == 1
    clock.t += 1.0
    assert await marks.get(BTC) == 50_000.0
    venue.error = ValueError("not a list")
    clock.t += 2.0  # within max stale: the cached mark serves while the refresh fails
    assert await marks.get(BTC) == 50_000.0
    await settle()
    clock.t += 3.5  # now 5.5 s old: must be re-read, and cannot be
    assert await marks.get(BTC) is None
    assert marks.failures == 3 and venue.reads == 4


async def test_one_failed_read_refuses_every_unpriced_symbol_until_fresh_sec():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    venue.error = RuntimeError("503")
    assert await marks.get(BTC) is None
    venue.error = None
    clock.t += 0.9
    assert await marks.get(ETH) is None and await marks.get(SOL) is None  # no read for other symbols
    assert venue.reads == 1
    clock.t += 0.1
    assert await marks.get(ETH) == 3_000.0 and venue.reads == 2


async def test_symbol_absent_from_the_answer_gets_no_mark_and_no_read_per_entry():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    assert await marks.get(SOL) is None  # the venue lists no SOL: never a guess
    assert await marks.get(SOL) is None and venue.reads == 1  # within fresh_sec: not asked again
    assert await marks.get(BTC) == 50_000.0 and venue.reads == 2  # a symbol not asked for yet: read
    assert await marks.get(SOL) is None and venue.reads == 2
    venue.prices[SOL] = 150.0
    clock.t += 1.0
    assert await marks.get(SOL) == 150.0 and venue.reads == 3
    # dropped from a later answer: the older mark serves up to max stale, then none
    del venue.prices[SOL]
    clock.t += 2.0
    assert await marks.get(SOL) == 150.0
    await settle()
    assert venue.reads == 4
    clock.t += 3.5
    assert await marks.get(SOL) is None and venue.reads == 5
    assert await marks.get(BTC) == 50_000.0 and venue.reads == 5


async def test_concurrent_callers_of_any_symbol_share_one_read():
    venue, clock = Venue(), Clock()
    venue.delay = 0.02
    marks = cache(venue, clock)
    got = await asyncio.gather(*(marks.get(BTC) for _ in range(10)), marks.get(ETH), marks.get(SOL))
    assert got == [50_000.0] * 10 + [3_000.0, None]
    # the first read was for BTC alone (below BULK_FROM symbols, one read each): the callers of the
    # others, asked meanwhile, share one more read of all three
    assert venue.asked == [[BTC], [BTC, ETH, SOL]]


async def test_a_symbol_first_asked_for_right_after_a_read_is_read_at_once_not_refused():
    venue, clock = Venue(), Clock()
    marks = cache(venue, clock)
    assert await marks.get(BTC) == 50_000.0
    assert await marks.get(ETH) == 3_000.0  # within fresh_sec of BTC's read, which did not ask for it
    assert venue.asked == [[BTC], [BTC, ETH]]
    assert await marks.get(SOL) is None  # asked for and not listed: refused, not read again per entry
    assert await marks.get(SOL) is None
    assert venue.reads == 3


async def test_close_cancels_the_read_in_flight():
    venue, clock = Venue(), Clock()
    venue.delay = 10
    marks = cache(venue, clock)
    task = asyncio.ensure_future(marks.get(BTC))
    await settle()
    await marks.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    venue.delay = 0
    clock.t += 1.0
    assert await marks.get(BTC) == 50_000.0  # a later caller starts a new read


MARKETS_BY_ID = {
    "BTCUSDT": [{"symbol": BTC, "linear": True}],
    "ETHUSDT": [{"symbol": ETH, "linear": True}],
    "SOLUSDT": [{"symbol": SOL, "linear": True}],
    "BTCUSD_PERP": [{"symbol": "BTC/USD:BTC", "linear": False}],
}


def test_premium_index_list_maps_venue_ids_to_ccxt_symbols():
    rows = [
        {"symbol": "BTCUSDT", "markPrice": "50000.10", "indexPrice": "50001", "time": 1},
        {"symbol": "ETHUSDT", "markPrice": "3000"},
        {"symbol": "XYZUSDT", "markPrice": "1.5"},  # not a market we loaded
        {"symbol": "BTCUSD_PERP", "markPrice": "50000"},  # not a linear market
    ]
    assert marks_from_premium_index(rows, MARKETS_BY_ID) == {BTC: 50_000.10, ETH: 3_000.0}


@pytest.mark.parametrize("mark", [None, "", "abc", "0", "-1", "nan", "inf", 0, [], {}])
def test_premium_index_row_without_a_positive_mark_is_left_out(mark):
    rows = [
        {"symbol": "BTCUSDT", "markPrice": mark},
        {"symbol": "ETHUSDT"},
        {"symbol": "SOLUSDT", "markPrice": "150"},
    ]
    assert marks_from_premium_index(rows, MARKETS_BY_ID) == {SOL: 150.0}


def test_premium_index_rows_that_are_not_objects_are_left_out():
    rows = [None, "BTCUSDT", ["BTCUSDT", "1"], {"symbol": None, "markPrice": "1"}, {"markPrice": "1"}]
    rows.append({"symbol": "ETHUSDT", "markPrice": "3000"})
    assert marks_from_premium_index(rows, MARKETS_BY_ID) == {ETH: 3_000.0}


@pytest.mark.parametrize("answer", [None, {}, {"symbol": "BTCUSDT", "markPrice": "50000"}, "[]"])
def test_premium_index_answer_that_is_not_a_list_raises(answer):
    with pytest.raises(ValueError, match="not a list"):
        marks_from_premium_index(answer, MARKETS_BY_ID)


async def test_read_marks_loads_markets_and_reads_premium_index_without_a_symbol():
    class Ex:
        markets_by_id = MARKETS_BY_ID

        def __init__(self) -> None:
            self.calls: list[tuple] = []

        async def load_markets(self):
            self.calls.append(("load_markets",))

        async def fapiPublicGetPremiumIndex(self, params=None):  # ccxt's name
            self.calls.append(("premiumIndex", params))
            return [{"symbol": "BTCUSDT", "markPrice": "50000"}, {"symbol": "SOLUSDT", "markPrice": "150"}]

    ex = Ex()
    many = [f"S{i}/USDT:USDT" for i in range(BULK_FROM)]
    assert await read_marks(ex, many) == {BTC: 50_000.0, SOL: 150.0}
    assert ex.calls == [("load_markets",), ("premiumIndex", None)]


async def test_read_marks_of_fewer_symbols_reads_each_and_leaves_a_failed_one_out():
    class Ex:
        markets_by_id = MARKETS_BY_ID

        def __init__(self) -> None:
            self.calls: list = []
            self.fail: set[str] = set()

        async def load_markets(self):
            pass

        markets = {BTC: {"id": "BTCUSDT"}, SOL: {"id": "SOLUSDT"}}

        async def fapiPublicGetPremiumIndex(self, params=None):
            self.calls.append(params)
            if params["symbol"] in self.fail:
                raise RuntimeError("503")
            return {
                "symbol": params["symbol"],
                "markPrice": "150" if params["symbol"] == "SOLUSDT" else "50000",
            }

    ex = Ex()
    assert await read_marks(ex, [BTC, SOL]) == {BTC: 50_000.0, SOL: 150.0}
    assert ex.calls == [{"symbol": "BTCUSDT"}, {"symbol": "SOLUSDT"}]  # weight 1 each, not 10
    assert await read_marks(ex, ["NOPE/USDT:USDT"]) == {} and len(ex.calls) == 2  # no market: not read
    ex.fail = {"SOLUSDT"}
    assert await read_marks(ex, [BTC, SOL]) == {BTC: 50_000.0}
    ex.fail = {"SOLUSDT", "BTCUSDT"}
    with pytest.raises(RuntimeError):
        await read_marks(ex, [BTC, SOL])
