"""In-memory USD-M futures matching engine. Pure: no I/O, no asyncio.

One-way mode (positionSide BOTH), USDT margin, market/limit orders and
conditional ("algo") orders, with the venue rules our reliability layer must
cope with, each at least as strict as Binance USD-M:
- reduce-only: rejected when it would not reduce (-2022); a resting reduce-only
  order whose position is gone expires instead of filling, never flips;
- closePosition: refused with no position (-4509), with reduceOnly (-1106) or a
  quantity (-4137); one per kind and direction (-4130); expired by the venue when
  the position it closes goes flat (reduce-only orders with a size are not);
- client ids: uniqueness among *open* orders only (-4116), the venue's character
  set (-1100); unknown-order cancels (-2011) and lookups (-2013);
- prices: fills at the book (mark +/- half-spread), never at a marketable limit's
  own price; PERCENT_PRICE band (-4016 / -4024); tick (-4014) and step (-1111);
  minimum notional (-4164); stops that would trigger immediately (-2021);
- trailing stops (TRAILING_STOP_MARKET): callbackRate 0.1..10 percent (-2007),
  never close-position (-4136), an activation price already reached refused
  (-2021); after activation they track the best price and trigger on a retrace
  of the callback rate;
- query lag: an accepted order can be invisible to queries for a while (-2013);
- insufficient margin (-2019).
Every refusal is raised before the engine changes any state. A lock makes it
safe to drive from the HTTP loop and a test thread.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.simulator.config import DEFAULT_PRICES


class SimError(Exception):
    """A venue refusal: HTTP status + Binance error code + message."""

    def __init__(self, http_status: int, code: int, msg: str) -> None:
        super().__init__(f"{code} {msg}")
        self.http_status, self.code, self.msg = http_status, code, msg


def _bad(code: int, msg: str) -> SimError:
    return SimError(400, code, msg)


CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
TRAILING = "TRAILING_STOP_MARKET"
CALLBACK_RATE_MIN, CALLBACK_RATE_MAX = 0.1, 10.0  # percent, one decimal


@dataclass(frozen=True)
class Market:
    symbol: str
    base: str
    quote: str = "USDT"
    tick: float = 0.1
    step: float = 0.001
    min_qty: float = 0.001
    min_notional: float = 5.0
    price_precision: int = 1
    qty_precision: int = 3
    # PERCENT_PRICE: limit prices must stay inside [mark * down, mark * up]
    multiplier_up: float = 1.05
    multiplier_down: float = 0.95


@dataclass
class Order:
    order_id: int
    client_id: str
    symbol: str
    side: str  # BUY / SELL
    type: str  # MARKET / LIMIT
    qty: float
    price: float
    reduce_only: bool
    time_in_force: str
    time: int
    update_time: int
    status: str = "NEW"
    executed: float = 0.0
    avg_price: float = 0.0
    cum_quote: float = 0.0
    close_position: bool = False
    orig_type: str = ""
    stop_price: float = 0.0
    visible_at: int = 0  # query lag: GET order / openOrders do not see it before this (ms)

    @property
    def open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")


@dataclass
class AlgoOrder:
    algo_id: int
    client_id: str
    symbol: str
    side: str
    order_type: str  # STOP_MARKET / TAKE_PROFIT_MARKET / STOP / TAKE_PROFIT / TRAILING_STOP_MARKET
    qty: float
    price: float
    trigger_price: float
    reduce_only: bool
    close_position: bool
    time_in_force: str
    create_time: int
    update_time: int
    working_type: str = "CONTRACT_PRICE"
    status: str = "NEW"
    trigger_time: int = 0
    actual_order_id: int | None = None
    visible_at: int = 0
    # trailing stops: percent retrace from the best price once activated (price reached activate_price)
    callback_rate: float = 0.0
    activate_price: float = 0.0
    activated: bool = False
    best_price: float = 0.0

    @property
    def open(self) -> bool:
        return self.status == "NEW"

    @property
    def is_trailing(self) -> bool:
        return self.order_type == "TRAILING_STOP_MARKET"

    @property
    def is_stop(self) -> bool:
        return self.order_type in ("STOP_MARKET", "STOP")


@dataclass
class Position:
    qty: float = 0.0  # signed
    entry_price: float = 0.0
    update_time: int = 0


def _round(x: float, step: float) -> float:
    return round(round(x / step) * step, 10)


def _on_grid(x: float, step: float) -> bool:
    return abs(x / step - round(x / step)) < 1e-6


@dataclass
class Engine:
    symbols: list[str]
    start_balance: float = 10_000.0
    default_leverage: int = 20
    max_leverage: int = 125
    seed: int | None = None
    clock: Callable[[], float] = time.time
    # taker fills happen at mark +/- this many basis points (the book), never at the mark itself
    half_spread_bps: float = 2.0
    # every accepted order stays invisible to queries for this long (the venue's read lag)
    query_lag_ms: int = 0
    # asked when a position goes flat: True keeps its close-position orders resting (a fault)
    keep_protection: Callable[[str], bool] | None = None
    # told every change the venue pushes on its user data stream, in venue order, under the lock
    # (kind "order" / "algo" / "account", the order, algo order or symbol, details): see userstream.py
    listener: Callable[[str, Any, dict[str, Any]], None] | None = None
    markets: dict[str, Market] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    algos: dict[int, AlgoOrder] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    leverage: dict[str, int] = field(default_factory=dict)
    wallet: float = 0.0
    realized_pnl: float = 0.0
    fills: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(self.seed)
        self._next_id = 1_000_000
        # client id -> ids of the orders (algo orders) that carried it, oldest first: the venue's lookups
        # and its duplicate check by client id, without a scan of every order ever placed
        self._order_ids_by_cid: dict[str, list[int]] = {}
        # orders and conditional orders that were open when last looked at (a superset of the open ones:
        # an order never reopens), so the checks that need only open orders do not scan the whole history
        self._live_orders: dict[int, Order] = {}
        self._live_algos: dict[int, AlgoOrder] = {}
        self._algo_ids_by_cid: dict[str, list[int]] = {}
        self.reset()

    # ------------------------------------------------------------------ setup

    def reset(self) -> None:
        with self.lock:
            self.markets.clear()
            self.prices.clear()
            for i, sym in enumerate(self.symbols):
                base = sym[:-4]
                px = DEFAULT_PRICES.get(sym, 10.0 + i)
                tick, step, pp, qp = (
                    (0.1, 0.001, 1, 3)
                    if px >= 1000
                    else (0.01, 0.01, 2, 2)
                    if px >= 50
                    else (0.001, 0.1, 3, 1)
                )
                self.markets[sym] = Market(
                    sym, base, tick=tick, step=step, min_qty=step, price_precision=pp, qty_precision=qp
                )
                self.prices[sym] = px
            self.orders.clear()
            self.algos.clear()
            self.reindex()
            self.positions.clear()
            self.leverage.clear()
            self.fills.clear()
            self.wallet = self.start_balance
            self.realized_pnl = 0.0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _changed(self, kind: str, subject: Any, **detail: Any) -> None:
        if self.listener is not None:
            self.listener(kind, subject, detail)

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def market(self, symbol: str | None) -> Market:
        if not symbol:
            raise _bad(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        m = self.markets.get(symbol)
        if m is None:
            raise _bad(-1121, "Invalid symbol.")
        return m

    # ------------------------------------------------------------------ account

    def position(self, symbol: str) -> Position:
        return self.positions.setdefault(symbol, Position())

    def pos_qty(self, symbol: str) -> float:
        """Signed position size, without creating an entry (checks must not change state)."""
        p = self.positions.get(symbol)
        return p.qty if p is not None else 0.0

    def lev(self, symbol: str) -> int:
        return self.leverage.get(symbol, self.default_leverage)

    def unrealized(self, symbol: str) -> float:
        p = self.positions.get(symbol)
        if p is None or p.qty == 0:
            return 0.0
        return p.qty * (self.prices[symbol] - p.entry_price)

    def used_margin(self) -> float:
        used = sum(abs(p.qty) * p.entry_price / self.lev(s) for s, p in self.positions.items() if p.qty)
        for o in self.live_orders():
            if not o.reduce_only:
                used += (o.qty - o.executed) * (o.price or self.prices[o.symbol]) / self.lev(o.symbol)
        return used

    def equity(self) -> float:
        return self.wallet + sum(self.unrealized(s) for s in self.positions)

    def available(self) -> float:
        return self.equity() - self.used_margin()

    def set_leverage(self, symbol: str, leverage: int) -> int:
        with self.lock:
            self.market(symbol)
            if not 1 <= leverage <= self.max_leverage:
                raise _bad(-4028, f"Leverage {leverage} is not valid")
            self.leverage[symbol] = leverage
            return leverage

    # ------------------------------------------------------------------ validation helpers

    def reindex(self) -> None:
        """Rebuild the client id index from ``orders`` and ``algos`` (after they were replaced wholesale)."""
        self._order_ids_by_cid.clear()
        self._algo_ids_by_cid.clear()
        self._live_orders.clear()
        self._live_algos.clear()
        for o in sorted(self.orders.values(), key=lambda x: x.order_id):
            self._order_ids_by_cid.setdefault(o.client_id, []).append(o.order_id)
            if o.open:
                self._live_orders[o.order_id] = o
        for a in sorted(self.algos.values(), key=lambda x: x.algo_id):
            self._algo_ids_by_cid.setdefault(a.client_id, []).append(a.algo_id)
            if a.open:
                self._live_algos[a.algo_id] = a

    def _add_order(self, o: Order) -> None:
        self.orders[o.order_id] = o
        self._order_ids_by_cid.setdefault(o.client_id, []).append(o.order_id)
        self._live_orders[o.order_id] = o

    def _add_algo(self, a: AlgoOrder) -> None:
        self.algos[a.algo_id] = a
        self._algo_ids_by_cid.setdefault(a.client_id, []).append(a.algo_id)
        self._live_algos[a.algo_id] = a

    def live_orders(self) -> list[Order]:
        """Every open order, oldest first (as ``orders`` lists them)."""
        for oid in [i for i, o in self._live_orders.items() if not o.open]:
            del self._live_orders[oid]
        return list(self._live_orders.values())

    def live_algos(self) -> list[AlgoOrder]:
        """Every open conditional order, oldest first."""
        for aid in [i for i, a in self._live_algos.items() if not a.open]:
            del self._live_algos[aid]
        return list(self._live_algos.values())

    def _orders_with_client_id(self, client_id: str) -> list[Order]:
        """Orders that carried ``client_id``, newest first."""
        ids = sorted(self._order_ids_by_cid.get(client_id, ()), reverse=True)
        return [self.orders[i] for i in ids if i in self.orders]

    def _algos_with_client_id(self, client_id: str) -> list[AlgoOrder]:
        """Algo orders that carried ``client_id``, newest first."""
        ids = sorted(self._algo_ids_by_cid.get(client_id, ()), reverse=True)
        return [self.algos[i] for i in ids if i in self.algos]

    def _client_id_open(self, client_id: str) -> bool:
        return any(o.open for o in self._orders_with_client_id(client_id)) or any(
            a.open for a in self._algos_with_client_id(client_id)
        )

    def _check_client_id(self, client_id: str, param: str = "newClientOrderId") -> None:
        if not CLIENT_ID.match(client_id):
            raise _bad(
                -1100,
                f"Illegal characters found in parameter '{param}'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{{1,36}}$'.",
            )
        if self._client_id_open(client_id):
            raise _bad(-4116, "ClientOrderId is duplicated.")

    @staticmethod
    def _check_qty(m: Market, qty: float) -> None:
        if qty <= 0:
            raise _bad(-4003, "Quantity less than or equal to zero.")
        if not _on_grid(qty, m.step):
            raise _bad(-1111, "Precision is over the maximum defined for this asset.")
        if qty < m.min_qty - 1e-12:
            raise _bad(-4003, "Quantity less than or equal to zero.")

    @staticmethod
    def _check_tick(m: Market, price: float) -> None:
        if not _on_grid(price, m.tick):
            raise _bad(-4014, "Price not increased by tick size.")

    def _check_band(self, m: Market, price: float) -> None:
        """PERCENT_PRICE, as exchangeInfo advertises it, measured from the mark price."""
        mark = self.prices[m.symbol]
        if price > mark * m.multiplier_up + 1e-9:
            raise _bad(-4016, "Price is higher than mark price multiplier cap.")
        if price < mark * m.multiplier_down - 1e-9:
            raise _bad(-4024, "Price is lower than mark price multiplier floor.")

    def book(self, symbol: str, side: str) -> float:
        """Where a taker order on ``side`` executes: the ask for buys, the bid for sells."""
        m, mark = self.markets[symbol], self.prices[symbol]
        half = mark * self.half_spread_bps / 10_000
        if side == "BUY":
            return round(math.ceil((mark + half) / m.tick - 1e-9) * m.tick, 10)
        return round(math.floor((mark - half) / m.tick + 1e-9) * m.tick, 10)

    def _reduce_qty(self, symbol: str, side: str, qty: float | None) -> float:
        """How much a reduce-only order may execute; -2022 if it would not reduce."""
        pos = self.pos_qty(symbol)
        if (side == "SELL" and pos <= 0) or (side == "BUY" and pos >= 0):
            raise _bad(-2022, "ReduceOnly Order is rejected.")
        return abs(pos) if qty is None else min(qty, abs(pos))

    def _check_margin(self, symbol: str, side: str, qty: float, price: float) -> None:
        pos = self.pos_qty(symbol)
        signed = qty if side == "BUY" else -qty
        increase = abs(pos + signed) - abs(pos)
        if increase <= 0:
            return
        need = increase * price / self.lev(symbol)
        if need > self.available() + 1e-9:
            raise _bad(-2019, "Margin is insufficient.")

    # ------------------------------------------------------------------ fills

    def _fill(self, o: Order, qty: float, price: float) -> None:
        if qty <= 0:
            return
        p = self.position(o.symbol)
        signed = qty if o.side == "BUY" else -qty
        pnl = 0.0
        if p.qty == 0 or (p.qty > 0) == (signed > 0):
            total = abs(p.qty) + qty
            p.entry_price = (abs(p.qty) * p.entry_price + qty * price) / total
            p.qty = round(p.qty + signed, 10)
        else:
            closing = min(abs(signed), abs(p.qty))
            pnl = closing * (price - p.entry_price) * (1 if p.qty > 0 else -1)
            self.wallet += pnl
            self.realized_pnl += pnl
            rest = abs(signed) - closing
            p.qty = round(p.qty + signed, 10)
            if abs(p.qty) < 1e-12:
                p.qty, p.entry_price = 0.0, 0.0
            elif rest > 0:  # flipped through zero
                p.entry_price = price
        p.update_time = self.now_ms()
        # the account update goes out before the fill's order update (the venue orders only per event type)
        self._changed("account", o.symbol, reason="ORDER", realized=pnl)
        self._expire_stale_close_position(o.symbol)
        o.cum_quote += qty * price
        o.executed = round(o.executed + qty, 10)
        o.avg_price = o.cum_quote / o.executed
        o.status = "FILLED" if o.executed >= o.qty - 1e-12 else "PARTIALLY_FILLED"
        o.update_time = self.now_ms()
        self.fills.append({"order_id": o.order_id, "client_id": o.client_id, "qty": qty, "price": price})
        self._changed("order", o, exec_type="TRADE", last_qty=qty, last_price=price, realized=pnl)

    def _execute(self, o: Order, *, taker: bool) -> None:
        """Match a new (taker) or resting (maker) order against the book around the mark price."""
        book = self.book(o.symbol, o.side)
        if o.type == "LIMIT":
            marketable = (o.side == "BUY" and book <= o.price) or (o.side == "SELL" and book >= o.price)
            if not marketable:
                return
            # a marketable limit takes the book; only a resting order fills at its own limit
            px = book if taker else o.price
        else:
            px = book
        qty = o.qty - o.executed
        if o.reduce_only:
            try:
                allowed = self._reduce_qty(o.symbol, o.side, qty)
            except SimError:
                # the position it would reduce is gone: a reduce-only order never opens or flips one
                o.status, o.update_time = "EXPIRED", self.now_ms()
                self._changed("order", o, exec_type="EXPIRED")
                return
            if allowed < qty:
                o.qty, qty = o.executed + allowed, allowed
        self._fill(o, qty, px)

    def _expire_stale_close_position(self, symbol: str) -> None:
        """The venue expires close-position (GTE_GTC) orders whose position went flat or flipped.

        Reduce-only orders with a size get no such help: they rest until they trigger.
        """
        pos = self.pos_qty(symbol)
        stale = [
            a
            for a in self.live_algos()
            if a.close_position and a.symbol == symbol and (pos == 0 or (a.side == "SELL") == (pos < 0))
        ]
        if not stale or (self.keep_protection is not None and self.keep_protection(symbol)):
            return
        now = self.now_ms()
        for a in stale:
            a.status, a.update_time = "EXPIRED", now
            self._changed("algo", a)

    # ------------------------------------------------------------------ orders

    def place_order(
        self,
        *,
        symbol: str,
        side: str,
        type: str,
        qty: float | None,
        price: float | None,
        client_id: str | None,
        reduce_only: bool = False,
        time_in_force: str = "GTC",
    ) -> Order:
        with self.lock:
            m = self.market(symbol)
            side, type = (side or "").upper(), (type or "").upper()
            if side not in ("BUY", "SELL"):
                raise _bad(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
            if type not in ("MARKET", "LIMIT"):
                raise _bad(-1116, "Invalid orderType.")
            if qty is None:
                raise _bad(
                    -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."
                )
            self._check_qty(m, qty)
            qty = _round(qty, m.step)
            if type == "LIMIT":
                if price is None or price <= 0:
                    raise _bad(
                        -1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed."
                    )
                self._check_tick(m, price)
                price = _round(price, m.tick)
                self._check_band(m, price)
            client_id = client_id or f"sim{self._next_id + 1}"
            self._check_client_id(client_id)
            ref = price if type == "LIMIT" and price is not None else self.prices[symbol]
            if reduce_only:
                qty = self._reduce_qty(symbol, side, qty)
            else:
                if qty * ref < m.min_notional:
                    raise _bad(
                        -4164,
                        f"Order's notional must be no smaller than {m.min_notional:g} (unless you choose reduce only).",
                    )
                self._check_margin(symbol, side, qty, ref)
            now = self.now_ms()
            o = Order(
                self._id(),
                client_id,
                symbol,
                side,
                type,
                qty,
                price or 0.0,
                reduce_only,
                time_in_force,
                now,
                now,
                orig_type=type,
                visible_at=now + self.query_lag_ms,
            )
            self._add_order(o)
            self._changed("order", o, exec_type="NEW")
            self._execute(o, taker=True)
            return o

    def place_algo(
        self,
        *,
        symbol: str,
        side: str,
        order_type: str,
        qty: float | None,
        price: float | None,
        trigger_price: float | None,
        client_id: str | None,
        reduce_only: bool = False,
        close_position: bool = False,
        time_in_force: str = "GTC",
        working_type: str = "CONTRACT_PRICE",
        callback_rate: float | None = None,
        activate_price: float | None = None,
    ) -> AlgoOrder:
        with self.lock:
            m = self.market(symbol)
            side, order_type = (side or "").upper(), (order_type or "").upper()
            if side not in ("BUY", "SELL"):
                raise _bad(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
            if order_type not in ("STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT", TRAILING):
                raise _bad(-1116, "Invalid orderType.")
            trailing = order_type == TRAILING
            if trailing:
                trigger_price = self._check_trailing(m, side, close_position, callback_rate, activate_price)
            elif trigger_price is None or trigger_price <= 0:
                raise _bad(
                    -1102, "Mandatory parameter 'triggerPrice' was not sent, was empty/null, or malformed."
                )
            qty = self._algo_qty(m, qty, reduce_only=reduce_only, close_position=close_position)
            if order_type in ("STOP", "TAKE_PROFIT"):
                if price is None or price <= 0:
                    raise _bad(
                        -1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed."
                    )
                self._check_tick(m, price)
            if not trailing:
                self._check_tick(m, trigger_price)
                trigger_price = _round(trigger_price, m.tick)
            client_id = client_id or f"simalgo{self._next_id + 1}"
            self._check_client_id(client_id, "clientAlgoId")
            self._check_algo_position(
                symbol, side, order_type, qty, reduce_only=reduce_only, close_position=close_position
            )
            if not trailing and self._crossed(symbol, side, order_type, trigger_price):
                raise _bad(-2021, "Order would immediately trigger.")
            if close_position:
                time_in_force = "GTE_GTC"  # how the venue reports close-position orders
            now = self.now_ms()
            a = AlgoOrder(
                self._id(),
                client_id,
                symbol,
                side,
                order_type,
                qty or 0.0,
                price or 0.0,
                trigger_price,
                reduce_only,
                close_position,
                time_in_force,
                now,
                now,
                working_type,
                visible_at=now + self.query_lag_ms,
            )
            if trailing:
                a.callback_rate = float(callback_rate or 0.0)
                a.activate_price = float(activate_price or 0.0)
                # without an activation price it tracks from now, from the current price
                a.activated = activate_price is None
                a.best_price = self.prices[symbol] if a.activated else 0.0
            self._add_algo(a)
            self._changed("algo", a)
            return a

    def _algo_qty(
        self, m: Market, qty: float | None, *, reduce_only: bool, close_position: bool
    ) -> float | None:
        """A conditional order's size on the step grid; None for close-position (it takes no size)."""
        if close_position:
            if reduce_only:
                raise _bad(-1106, "Parameter 'reduceOnly' sent when not required.")
            if qty:
                raise _bad(-4137, "Quantity must be zero with closePosition equals true")
            return None
        if qty is None:
            raise _bad(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        self._check_qty(m, qty)
        return _round(qty, m.step)

    def _check_algo_position(
        self,
        symbol: str,
        side: str,
        order_type: str,
        qty: float | None,
        *,
        reduce_only: bool,
        close_position: bool,
    ) -> None:
        """What a reducing conditional order needs of the position and of the other close-position orders."""
        if close_position and self.pos_qty(symbol) == 0:
            # Binance also accepts GTE when open orders exist; we demand a position (harsher)
            raise _bad(
                -4509,
                "Time in Force (TIF) GTE can only be used with open positions or open orders. "
                "Please ensure that positions or open orders are available.",
            )
        if reduce_only or close_position:
            self._reduce_qty(symbol, side, qty)  # -2022 when there is nothing to reduce
        is_stop = order_type in ("STOP_MARKET", "STOP")
        if close_position and any(
            x.open and x.close_position and x.symbol == symbol and x.side == side and x.is_stop == is_stop
            for x in self.live_algos()
        ):
            # one close-position stop (and one take-profit) per direction
            raise _bad(
                -4130,
                "An open stop or take profit order with GTE and closePosition in the direction is existing.",
            )

    def _check_trailing(
        self,
        m: Market,
        side: str,
        close_position: bool,
        callback_rate: float | None,
        activate_price: float | None,
    ) -> float:
        """A trailing stop's own rules; returns its (unused) trigger price, 0."""
        if close_position:
            raise _bad(-4136, "Target strategy invalid for orderType TRAILING_STOP_MARKET,closePosition true")
        if callback_rate is None:
            raise _bad(
                -1102, "Mandatory parameter 'callbackRate' was not sent, was empty/null, or malformed."
            )
        if not (CALLBACK_RATE_MIN <= callback_rate <= CALLBACK_RATE_MAX) or not _on_grid(callback_rate, 0.1):
            raise _bad(-2007, "Invalid callback rate.")
        if activate_price is not None:
            if activate_price <= 0:
                raise _bad(-4135, "Invalid activation price.")
            self._check_tick(m, activate_price)
            px = self.prices[m.symbol]
            # a sell trailing stop activates when price rises to its activation, a buy one when it falls:
            # one already there would start at once, which the venue refuses
            if (side == "SELL" and activate_price <= px) or (side == "BUY" and activate_price >= px):
                raise _bad(-2021, "Order would immediately trigger.")
        return 0.0

    def _crossed(self, symbol: str, side: str, order_type: str, trigger: float) -> bool:
        px = self.prices[symbol]
        stop = order_type in ("STOP_MARKET", "STOP")
        # a sell stop triggers when price falls to it; a sell take-profit when it rises to it
        if side == "SELL":
            return px <= trigger if stop else px >= trigger
        return px >= trigger if stop else px <= trigger

    def visible(self, x: Order | AlgoOrder) -> bool:
        """Whether the venue's query side sees this order yet (see ``query_lag_ms``)."""
        return x.visible_at <= self.now_ms()

    def hide(self, order_id: int, lag_ms: int) -> None:
        """Query lag for one accepted order (a fault): invisible to queries for ``lag_ms``."""
        with self.lock:
            x = self.orders.get(order_id) or self.algos.get(order_id)
            if x is not None:
                x.visible_at = max(x.visible_at, self.now_ms() + lag_ms)

    def _find_order(
        self, symbol: str, order_id: int | None, client_id: str | None, *, query: bool = False
    ) -> Order | None:
        """``query``: as the venue's query side answers, blind to orders still inside their lag."""
        if order_id is not None:
            o = self.orders.get(order_id)
            found = o if o is not None and o.symbol == symbol else None
        else:
            found = None
            if client_id:
                # newest first: a client id may be reused once the earlier order closed
                for o in self._orders_with_client_id(client_id):
                    if o.symbol == symbol and (not query or self.visible(o)):
                        found = o
                        break
        return found if found is not None and (not query or self.visible(found)) else None

    def _find_algo(
        self, symbol: str | None, algo_id: int | None, client_id: str | None, *, query: bool = False
    ) -> AlgoOrder | None:
        if algo_id is not None:
            a = self.algos.get(algo_id)
            found = a if a is not None and (symbol is None or a.symbol == symbol) else None
        else:
            found = None
            if client_id:
                for a in self._algos_with_client_id(client_id):
                    if (symbol is None or a.symbol == symbol) and (not query or self.visible(a)):
                        found = a
                        break
        return found if found is not None and (not query or self.visible(found)) else None

    def get_order(self, symbol: str, order_id: int | None, client_id: str | None) -> Order:
        with self.lock:
            self.market(symbol)
            o = self._find_order(symbol, order_id, client_id, query=True)
            if o is None:
                raise _bad(-2013, "Order does not exist.")
            return o

    def get_algo(self, symbol: str | None, algo_id: int | None, client_id: str | None) -> AlgoOrder:
        with self.lock:
            a = self._find_algo(symbol, algo_id, client_id, query=True)
            if a is None:
                raise _bad(-2013, "Order does not exist.")
            return a

    def cancel_order(self, symbol: str, order_id: int | None, client_id: str | None) -> Order:
        with self.lock:
            self.market(symbol)
            # an order still inside its query lag is unknown to the cancel path too (-2011 while open)
            o = self._find_order(symbol, order_id, client_id, query=True)
            if o is None or not o.open:
                raise _bad(-2011, "Unknown order sent.")
            o.status = "CANCELED"
            o.update_time = self.now_ms()
            self._changed("order", o, exec_type="CANCELED")
            return o

    def cancel_algo(self, symbol: str | None, algo_id: int | None, client_id: str | None) -> AlgoOrder:
        with self.lock:
            a = self._find_algo(symbol, algo_id, client_id, query=True)
            if a is None or not a.open:
                raise _bad(-2011, "Unknown order sent.")
            a.status = "CANCELED"
            a.update_time = self.now_ms()
            self._changed("algo", a)
            return a

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        with self.lock:
            return [
                o for o in self.live_orders() if (symbol is None or o.symbol == symbol) and self.visible(o)
            ]

    def open_algos(self, symbol: str | None = None) -> list[AlgoOrder]:
        with self.lock:
            return [
                a for a in self.live_algos() if (symbol is None or a.symbol == symbol) and self.visible(a)
            ]

    def all_orders(self, symbol: str) -> list[Order]:
        with self.lock:
            return [o for o in self.orders.values() if o.symbol == symbol and self.visible(o)]

    def all_algos(self, symbol: str | None) -> list[AlgoOrder]:
        with self.lock:
            return [
                a for a in self.algos.values() if (symbol is None or a.symbol == symbol) and self.visible(a)
            ]

    # ------------------------------------------------------------------ prices and triggers

    def set_price(self, symbol: str, price: float) -> list[int]:
        """Move the mark price, then match resting limits and trigger conditional orders."""
        with self.lock:
            m = self.market(symbol)
            if not (price > 0 and math.isfinite(price)):
                raise _bad(-1102, "price must be positive")
            self.prices[symbol] = _round(price, m.tick)
            return self._match(symbol)

    def _match(self, symbol: str) -> list[int]:
        touched: list[int] = []
        for o in self.live_orders():
            if o.symbol == symbol and o.open and o.type == "LIMIT":
                before = o.executed
                self._execute(o, taker=False)
                if o.executed != before:
                    touched.append(o.order_id)
        for a in self.live_algos():
            if not (a.symbol == symbol and a.open):
                continue
            if (
                self._trailed(a)
                if a.is_trailing
                else self._crossed(symbol, a.side, a.order_type, a.trigger_price)
            ):
                touched.append(self._trigger(a))
        return touched

    def _trailed(self, a: AlgoOrder) -> bool:
        """Move a trailing stop along with the price; True when it triggers (a retrace of its rate from the
        best price since activation: the high for a sell, the low for a buy)."""
        px = self.prices[a.symbol]
        if not a.activated:
            if (a.side == "SELL" and px < a.activate_price) or (a.side == "BUY" and px > a.activate_price):
                return False
            a.activated, a.best_price = True, px
        if a.side == "SELL":
            a.best_price = max(a.best_price, px)
            return px <= a.best_price * (1 - a.callback_rate / 100) + 1e-9
        a.best_price = min(a.best_price, px)
        return px >= a.best_price * (1 + a.callback_rate / 100) - 1e-9

    def _trigger(self, a: AlgoOrder) -> int:
        """A triggered conditional order becomes a regular order carrying the same client id."""
        a.trigger_time = a.update_time = self.now_ms()
        a.status = "TRIGGERING"
        self._changed("algo", a)
        qty: float | None = None if a.close_position else a.qty
        reduce = a.reduce_only or a.close_position
        if reduce:
            try:
                qty = self._reduce_qty(a.symbol, a.side, qty)
            except SimError:
                a.status = "EXPIRED"  # nothing left to close
                self._changed("algo", a, reason="Reduce Only reject")
                return a.algo_id
        now = self.now_ms()
        typ = "MARKET" if a.order_type.endswith("MARKET") else "LIMIT"
        o = Order(
            self._id(),
            a.client_id,
            a.symbol,
            a.side,
            typ,
            qty or 0.0,
            a.price,
            reduce,
            a.time_in_force,
            now,
            now,
            close_position=a.close_position,
            orig_type=a.order_type,
            stop_price=a.trigger_price,
        )
        self._add_order(o)
        a.actual_order_id = o.order_id
        # placed in the matching engine: TRIGGERED (with the order's id), then the order's own updates
        a.status = "TRIGGERED"
        self._changed("algo", a)
        self._changed("order", o, exec_type="NEW")
        self._execute(o, taker=True)
        a.status = "FINISHED" if not o.open else "TRIGGERED"
        if a.status == "FINISHED":
            self._changed("algo", a)
        return a.algo_id

    def _execute_at(self, o: Order, price: float) -> None:
        """Fill what is left of ``o`` at ``price`` (the market came to it); reduce-only rules hold."""
        qty = o.qty - o.executed
        if o.reduce_only:
            try:
                qty = self._reduce_qty(o.symbol, o.side, qty)
            except SimError:
                o.status, o.update_time = "EXPIRED", self.now_ms()
                self._changed("order", o, exec_type="EXPIRED")
                return
            o.qty = o.executed + qty
        self._fill(o, qty, price)

    def random_walk(self, vol: float = 0.0005) -> None:
        with self.lock:
            for sym in self.markets:
                px = self.prices[sym] * math.exp(self.rng.gauss(0.0, vol))
                self.prices[sym] = _round(px, self.markets[sym].tick)
                self._match(sym)

    # ------------------------------------------------------------------ operator hooks (tests / chaos)

    def operator_cancel(self, symbol: str, client_id: str) -> str:
        """Cancel behind our back (venue housekeeping, another session, a human)."""
        with self.lock:
            o = self._find_order(symbol, None, client_id)
            if o is not None and o.open:
                o.status, o.update_time = "CANCELED", self.now_ms()
                self._changed("order", o, exec_type="CANCELED")
                return "order"
            a = self._find_algo(symbol, None, client_id)
            if a is not None and a.open:
                a.status, a.update_time = "CANCELED", self.now_ms()
                self._changed("algo", a)
                return "algo"
            raise _bad(-2011, "Unknown order sent.")

    def operator_fill(self, symbol: str, client_id: str) -> Order:
        """Fill a resting order at the mark price (or its limit), as if the market came to it."""
        with self.lock:
            o = self._find_order(symbol, None, client_id)
            if o is not None and o.open:
                self._execute_at(o, o.price or self.prices[symbol])
                return o
            a = self._find_algo(symbol, None, client_id)
            if a is not None and a.open:
                self._trigger(a)
                return self.orders[a.actual_order_id] if a.actual_order_id else None  # type: ignore[return-value]
            raise _bad(-2011, "Unknown order sent.")

    def fill_then_report(self, o: Order | AlgoOrder) -> None:
        """The race behind 'fill after cancel': the order executes before the cancel lands."""
        with self.lock:
            if isinstance(o, AlgoOrder):
                if o.open:
                    self._trigger(o)
            elif o.open:
                self._execute_at(o, o.price or self.prices[o.symbol])

    def set_position(self, symbol: str, amount: float, entry_price: float | None = None) -> Position:
        with self.lock:
            self.market(symbol)
            p = self.position(symbol)
            p.qty = float(amount)
            p.entry_price = (
                float(entry_price if entry_price is not None else self.prices[symbol]) if amount else 0.0
            )
            p.update_time = self.now_ms()
            self._changed("account", symbol, reason="ORDER")
            self._expire_stale_close_position(symbol)
            return p
