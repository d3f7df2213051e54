"""Binance USD-M: the venue's operations, by our client order id, answering in our types.

This is the venue package's edge: every ccxt error raised under it becomes a ``VenueError`` carrying the
error policy's decision; any other exception (a bug of ours, an answer we cannot parse) propagates as it
is, so it is never journaled as a venue refusal. ccxt's own retries are off
(``maxRetriesOnFailure=0``): the router owns the retry budget.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import ccxt

from libs.common.config import ExchangeSettings
from libs.common.marks import read_marks
from libs.common.messages import OrderIntent
from libs.venue.client import BinanceUSDMClient, exchange_from_settings
from libs.venue.error_policy import Policy, VenueError, classify_order_error_policy
from libs.venue.limits import OrderLimits, VenueLimits, order_limits_from
from libs.venue.parsing import VenueOrder, VenuePosition, position_from_ccxt, venue_order_from_ccxt
from libs.venue.raw_orders import order_from_answer
from libs.venue.requests import create_request, order_ref

P = ParamSpec("P")
T = TypeVar("T")


def request_void_after(sent_at: float, recv_window_ms: int, margin_ms: int) -> float:
    """Unix time from which a request sent at ``sent_at`` can no longer be accepted by the venue: it voids
    a request it has not handled by timestamp + recvWindow (plus a margin: clock offset, signing delay)."""
    return sent_at + (recv_window_ms + margin_ms) / 1000


def _edge(
    fn: Callable[Concatenate[BinanceUSDM, P], Awaitable[T]],
) -> Callable[Concatenate[BinanceUSDM, P], Awaitable[T]]:
    """A venue call: ccxt errors leave it classified (``VenueError``), nothing else is touched."""

    @functools.wraps(fn)
    async def call(self: BinanceUSDM, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(self, *args, **kwargs)
        except ccxt.BaseError as e:
            raise VenueError(e) from e

    return call


def _not_found(e: ccxt.BaseError) -> bool:
    """The venue says it has no such order (-2013 / -2011, also when ccxt did not map the code)."""
    return (
        isinstance(e, ccxt.OrderNotFound) or classify_order_error_policy(e).policy is Policy.IDEMPOTENT_SAFE
    )


class BinanceUSDM:
    """Async calls against one ccxt ``binanceusdm`` client.

    ``sync_clock``: sign with the venue's clock (measured once with the markets): then timestamp +
    recvWindow, the moment an ambiguous request becomes void, is known on our clock too (up to this
    measurement's error: the ambiguity margin). The router needs it; readers do not.
    """

    def __init__(
        self, client: BinanceUSDMClient, *, ambiguity_margin_ms: int = 1000, sync_clock: bool = True
    ) -> None:
        self.ex = client
        self.ambiguity_margin_ms = ambiguity_margin_ms
        self.sync_clock = sync_clock
        self._markets_loaded = False

    @property
    def limits(self) -> VenueLimits:
        return self.ex.venue_limits

    def absent_after(self, sent_at: float) -> float:
        """Unix time from which a request sent at ``sent_at`` is void at the venue (its recvWindow)."""
        recv_window_ms = int(self.ex.options.get("recvWindow") or 5000)
        return request_void_after(sent_at, recv_window_ms, self.ambiguity_margin_ms)

    @_edge
    async def ensure_markets(self) -> None:
        if not self._markets_loaded:
            await self.ex.load_markets()
            if self.sync_clock:
                await self.ex.load_time_difference()
            self._markets_loaded = True

    @_edge
    async def load_order_limits(self) -> OrderLimits:
        """The account's order limits from exchangeInfo's ``rateLimits`` (weight 1; Binance's defaults for
        what it does not state), kept in ``limits.order_limits`` for the order-budget decisions."""
        info = await self.ex.fapiPublicGetExchangeInfo()
        self.limits.order_limits = order_limits_from(
            info.get("rateLimits") if isinstance(info, dict) else None
        )
        return self.limits.order_limits

    # ------------------------------------------------------------------ orders

    @_edge
    async def create(self, intent: OrderIntent, qty: float | None) -> VenueOrder:
        """Place ``intent``: the raw request ccxt's ``create_order`` would send (``create_request``),
        posted through ccxt's implicit endpoint methods (its signing, clock, limits hooks and error
        mapping), the answer read straight into a ``VenueOrder`` (ccxt parses the shapes we do not)."""
        await self.ensure_markets()
        self.limits.order_sent(intent.client_order_id)  # on the account's order counters, whatever the answer
        market = self.ex.market(intent.symbol)
        # ccxt's option, read only for the orders that carry it (three option lookups)
        tif = self.ex.handle_option("createOrder", "timeInForce") if intent.order_type == "limit" else None
        req = create_request(intent, qty, market, self.ex, tif)
        post = self.ex.fapiPrivatePostAlgoOrder if req.algo else self.ex.fapiPrivatePostOrder
        answer = await post(req.params)
        if answer is None:
            raise ccxt.NullResponse(self.ex.id + " parseOrder() returned empty response")
        cid = intent.client_order_id
        order = order_from_answer(
            answer, cid, is_trigger=intent.is_trigger, market_id=market["id"], symbol=market["symbol"]
        )
        if order is None:
            order = venue_order_from_ccxt(
                self.ex.parse_order(answer, market), cid, is_trigger=intent.is_trigger
            )
        return order

    @_edge
    async def fetch_order(self, symbol: str, client_order_id: str, trigger: bool) -> VenueOrder | None:
        """Look an order up by client id. None: the venue says it has no such order (the one meaning of
        "not found"); ``VenueError``: it could not say."""
        await self.ensure_markets()
        try:
            order = await self.ex.fetch_order(None, symbol, order_ref(client_order_id, trigger))
        except ccxt.BaseError as e:
            if _not_found(e):
                return None
            raise
        return venue_order_from_ccxt(order, client_order_id, is_trigger=trigger)

    @_edge
    async def fetch_by_id(self, symbol: str, order_id: str, client_order_id: str) -> VenueOrder:
        """A regular order by the venue's id (the order a triggered stop created)."""
        await self.ensure_markets()
        return venue_order_from_ccxt(await self.ex.fetch_order(order_id, symbol), client_order_id)

    @_edge
    async def cancel(self, symbol: str, client_order_id: str, trigger: bool) -> VenueOrder:
        await self.ensure_markets()
        order = await self.ex.cancel_order(None, symbol, order_ref(client_order_id, trigger))
        return venue_order_from_ccxt(order, client_order_id, is_trigger=trigger)

    @_edge
    async def open_orders(self, symbol: str | None, trigger: bool) -> list[VenueOrder]:
        """Open regular (or conditional) orders of ``symbol``, or of every symbol (weight 40, not 1)."""
        await self.ensure_markets()
        params: dict[str, Any] = {"trigger": trigger}
        return [
            venue_order_from_ccxt(o, is_trigger=trigger)
            for o in await self.ex.fetch_open_orders(symbol, None, None, params)
        ]

    @_edge
    async def resting_close_position(self, intent: OrderIntent) -> tuple[str, float] | None:
        """(client id, trigger price) of the close-position order of ``intent``'s kind resting on its
        side, if any (the venue allows one per kind and direction)."""
        kind = "take_profit_market" if intent.order_type == "take_profit_market" else "stop_market"
        for o in await self.open_orders(intent.symbol, trigger=True):
            if o.close_position and o.side == intent.side and o.order_type == kind:
                return o.client_order_id, o.trigger_price or 0.0
        return None

    # ------------------------------------------------------------------ account

    @_edge
    async def positions(self, symbols: list[str] | None = None) -> list[VenuePosition]:
        await self.ensure_markets()
        return [position_from_ccxt(p) for p in await self.ex.fetch_positions(symbols)]

    async def position_qty(self, symbol: str) -> float:
        """Signed position size in contracts (long > 0, short < 0, flat 0)."""
        return sum(p.qty for p in await self.positions([symbol]) if p.symbol == symbol)

    @_edge
    async def equity_usdt(self) -> float | None:
        """Total USDT balance (weight 5); None when the venue lists none."""
        await self.ensure_markets()
        total = ((await self.ex.fetch_balance()).get("total") or {}).get("USDT")
        return float(total) if total is not None else None

    @_edge
    async def mark_prices(self, symbols: Sequence[str]) -> dict[str, float]:
        """The mark prices of ``symbols`` (at least), by ccxt symbol (``read_marks``: one read of every
        symbol, weight 10, from 10 symbols on; one per symbol, weight 1, below); the router's mark reads.
        Uncached: the router reads through a ``MarkCache`` (libs/common/marks.py). Raises on failure."""
        await self.ensure_markets()
        return await read_marks(self.ex, symbols)

    @_edge
    async def set_leverage(self, symbol: str, leverage: int) -> None:
        await self.ensure_markets()
        await self.ex.set_leverage(leverage, symbol)

    @_edge
    async def resync_clock(self) -> None:
        """After -1021: measure the venue clock offset so signed timestamps land in recvWindow."""
        await self.ex.load_time_difference()

    async def close(self) -> None:
        await self.ex.close()


def venue_from_settings(settings: ExchangeSettings, *, sync_clock: bool = True) -> BinanceUSDM:
    """The venue a service trades or reads, configured from its exchange settings."""
    return BinanceUSDM(
        exchange_from_settings(settings),
        ambiguity_margin_ms=settings.ambiguity_margin_ms,
        sync_clock=sync_clock,
    )
