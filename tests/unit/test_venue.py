"""The venue package (libs/venue): one state map, one parse, and an edge that classifies ccxt errors only."""

import ccxt
import pytest

from libs.common.ids import Bucket
from libs.common.state_machine import OrderState
from libs.venue.binance_usdm import BinanceUSDM, request_void_after
from libs.venue.error_policy import Policy, VenueError, describe
from libs.venue.limits import VenueLimits
from libs.venue.order_states import order_state
from libs.venue.parsing import position_from_ccxt, venue_order_from_ccxt
from libs.venue.requests import order_ref
from services.reconciler.belief import KnownOrder
from services.reconciler.venue_reader import lookups, order_view
from tests.builders import intent

BTC = "BTC/USDT:USDT"


@pytest.mark.parametrize(
    "status,filled,state",
    [
        ("open", 0, OrderState.ACKED),
        ("open", 0.1, OrderState.PARTIALLY_FILLED),
        ("closed", 1, OrderState.FILLED),
        ("canceled", 0, OrderState.CANCELED),
        ("canceling", 0, OrderState.CANCELED),
        ("expired", 0.2, OrderState.EXPIRED),
        ("rejected", 0, OrderState.REJECTED),
        ("triggered", 0, OrderState.UNKNOWN),  # a status we do not know: never guessed gone
        ("", 0, OrderState.UNKNOWN),
        (None, 0, OrderState.UNKNOWN),
    ],
)
def test_one_state_map(status, filled, state):
    assert order_state(status, filled) is state


def test_order_ref_names_the_order_by_client_id_and_reaches_the_algo_endpoint_for_triggers():
    assert order_ref("C1", trigger=False) == {"clientOrderId": "C1"}
    assert order_ref("C1", trigger=True) == {"clientOrderId": "C1", "trigger": True}


def _algo(order_type: str, **kw) -> dict:
    base = {
        "id": 7,
        "clientOrderId": "SL1",
        "symbol": BTC,
        "side": "sell",
        "type": "market",
        "status": "open",
        "filled": 0,
        "amount": 0,
        "triggerPrice": 90.0,
        "info": {"orderType": order_type, "closePosition": "true", "algoStatus": "NEW"},
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "raw,extra,expected",
    [
        ("STOP_MARKET", {}, "stop_market"),
        ("TAKE_PROFIT_MARKET", {}, "take_profit_market"),
        ("", {"takeProfitPrice": 110.0}, "take_profit_market"),  # ccxt's word when the raw type is absent
        ("TRAILING_STOP_MARKET", {}, "trailing_stop_market"),  # ccxt calls it "market"
    ],
)
def test_trigger_order_types_come_from_the_raw_type(raw, extra, expected):
    assert venue_order_from_ccxt(_algo(raw, **extra), is_trigger=True).order_type == expected


def test_a_conditional_order_parses_into_one_type_for_router_and_reconciler():
    o = venue_order_from_ccxt(_algo("STOP_MARKET"), is_trigger=True)
    assert (o.client_order_id, o.exchange_order_id, o.symbol, o.side) == ("SL1", "7", BTC, "sell")
    assert (o.state, o.venue_status, o.is_open) == (OrderState.ACKED, "NEW", True)
    assert (o.is_trigger, o.close_position, o.reduce_only, o.trigger_price) == (True, True, False, 90.0)
    assert o.amount == 0.0 and order_view(o).qty is None  # a close-position stop carries no size
    regular = venue_order_from_ccxt({"id": 8, "symbol": BTC, "type": "limit", "status": "open", "amount": 1})
    assert (regular.order_type, regular.client_order_id, regular.is_trigger) == ("limit", "8", False)
    reduce = venue_order_from_ccxt({"id": 9, "status": "open", "info": {"reduceOnly": "true"}}, "R1")
    assert (reduce.client_order_id, reduce.reduce_only) == ("R1", True)


@pytest.mark.parametrize(
    "status,view",
    [
        ("open", "open"),
        ("closed", "filled"),
        ("canceled", "canceled"),
        ("expired", "expired"),
        ("rejected", "rejected"),
        ("weird", "unknown"),
    ],
)
def test_the_reconcilers_view_reads_the_same_state_map(status, view):
    assert order_view(venue_order_from_ccxt({"id": 1, "symbol": BTC, "status": status})).state == view


@pytest.mark.parametrize("side,contracts,qty", [("long", 2.0, 2.0), ("short", 2.0, -2.0), (None, 0, 0.0)])
def test_position_sign(side, contracts, qty):
    p = position_from_ccxt(
        {"symbol": BTC, "side": side, "contracts": contracts, "entryPrice": 100, "markPrice": 101}
    )
    assert (p.symbol, p.qty, p.entry_price, p.mark_price) == (BTC, qty, 100.0, 101.0)


def test_request_void_after_is_the_request_validity_plus_margin():
    assert request_void_after(100.0, 5_000, 1_000) == pytest.approx(106.0)


class FakeClient:
    """The ccxt client's surface the venue uses; ``fail`` is raised by the next order call."""

    def __init__(self, fail: BaseException | None = None, answer: object = None) -> None:
        self.fail, self.answer = fail, answer
        self.venue_limits = VenueLimits()
        self.options = {"recvWindow": 3000}
        self.calls: list[tuple] = []

    async def load_markets(self):
        self.calls.append(("load_markets",))

    async def load_time_difference(self):
        self.calls.append(("load_time_difference",))

    async def _answer(self, *call):
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail
        return self.answer

    async def fetch_order(self, order_id, symbol, params=None):
        return await self._answer("fetch_order", order_id, symbol, params)

    async def cancel_order(self, order_id, symbol, params=None):
        return await self._answer("cancel_order", order_id, symbol, params)

    async def fetch_open_orders(self, symbol, since, limit, params):
        return await self._answer("fetch_open_orders", symbol, params)

    async def fetch_positions(self, symbols=None):
        return await self._answer("fetch_positions", symbols)


async def test_the_edge_classifies_ccxt_errors():
    venue = BinanceUSDM(FakeClient(ccxt.RequestTimeout("binanceusdm GET timed out")))
    with pytest.raises(VenueError) as raised:
        await venue.cancel(BTC, "C1", trigger=False)
    d = raised.value.decision
    assert (d.reason, d.error_class, d.ambiguous) == ("request_timeout", "RequestTimeout", True)
    assert isinstance(raised.value.__cause__, ccxt.RequestTimeout)
    assert describe(raised.value) == "RequestTimeout: binanceusdm GET timed out"


async def test_a_bug_of_ours_is_not_a_venue_error():
    venue = BinanceUSDM(FakeClient(KeyError("symbol")))
    with pytest.raises(KeyError):
        await venue.cancel(BTC, "C1", trigger=False)
    venue = BinanceUSDM(FakeClient(answer=[{"contracts": 1}]))  # an answer we cannot parse: a KeyError too
    with pytest.raises(KeyError):
        await venue.positions()


@pytest.mark.parametrize(
    "error",
    [
        ccxt.OrderNotFound('binanceusdm {"code":-2013,"msg":"Order does not exist."}'),
        ccxt.ExchangeError('binanceusdm {"code":-2011,"msg":"Unknown order sent."}'),  # unmapped host
    ],
)
async def test_not_found_is_none_on_both_sides(error):
    client = FakeClient(error)
    assert await BinanceUSDM(client).fetch_order(BTC, "C1", trigger=True) is None
    assert client.calls[-1] == ("fetch_order", None, BTC, {"clientOrderId": "C1", "trigger": True})
    # the reconciler reads it the same way: None, the venue does not have it
    assert await lookups(BinanceUSDM(FakeClient(error)), [known("C1", trigger=True)]) == {"C1": None}


def known(cid: str, trigger: bool = False) -> KnownOrder:
    return KnownOrder(cid, BTC, Bucket.SL, "sell", OrderState.ACKED, is_trigger=trigger)


async def test_a_lookup_the_venue_cannot_answer_is_an_error_not_absence():
    venue = BinanceUSDM(FakeClient(ccxt.ExchangeNotAvailable("binanceusdm 503 Service Unavailable")))
    with pytest.raises(VenueError) as raised:
        await venue.fetch_order(BTC, "C1", trigger=False)
    assert raised.value.decision.policy is Policy.RETRYABLE
    assert await lookups(venue, [known("C1")]) == {}  # left out: the reconciler keeps believing


async def test_markets_and_clock_load_once_and_only_the_router_syncs_the_clock():
    client = FakeClient(answer={"id": 1, "clientOrderId": "C1", "status": "canceled"})
    venue = BinanceUSDM(client)
    await venue.cancel(BTC, "C1", trigger=False)
    await venue.cancel(BTC, "C1", trigger=False)
    assert [c[0] for c in client.calls].count("load_markets") == 1
    assert ("load_time_difference",) in client.calls
    reader = FakeClient(answer=[])
    await BinanceUSDM(reader, sync_clock=False).open_orders(None, trigger=True)
    assert ("load_time_difference",) not in reader.calls
    assert venue.absent_after(10.0) == pytest.approx(14.0)  # recvWindow 3 s + the 1 s margin


async def test_resting_close_position_finds_the_kind_on_the_side():
    sl = intent(bucket=Bucket.SL, side="sell", order_type="stop_market", stop_price=90.0, close_position=True)
    tp = _algo("TAKE_PROFIT_MARKET", clientOrderId="TP1", triggerPrice=110.0)
    other_side = _algo("STOP_MARKET", clientOrderId="SLB", side="buy")
    client = FakeClient(answer=[tp, other_side, _algo("STOP_MARKET", triggerPrice=95.0)])
    assert await BinanceUSDM(client).resting_close_position(sl) == ("SL1", 95.0)
    client.answer = [tp, other_side]
    assert await BinanceUSDM(client).resting_close_position(sl) is None


async def test_position_qty_is_signed_and_summed_for_the_symbol():
    client = FakeClient(
        answer=[
            {"symbol": BTC, "side": "long", "contracts": 3},
            {"symbol": BTC, "side": "short", "contracts": 1},
            {"symbol": "ETH/USDT:USDT", "side": "long", "contracts": 5},
        ]
    )
    assert await BinanceUSDM(client).position_qty(BTC) == 2.0
    assert client.calls[-1] == ("fetch_positions", [BTC])
