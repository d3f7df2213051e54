"""The lean create sends what ccxt's create_order sent, byte for byte.

For a table of intents, the same real ccxt client (the simulator's markets, no server, its HTTP fetch
recording) is driven twice: once through ccxt's unified ``create_order`` with ``create_order_args``
(the create path before), once through ``BinanceUSDM.create`` (``create_request`` posted through the
implicit endpoint methods). With the clock pinned, URL, method, headers and signed body must be equal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import ccxt
import pytest
import pytest_asyncio

from libs.common.ids import Bucket
from libs.venue.binance_usdm import BinanceUSDM
from libs.venue.error_policy import VenueError
from libs.venue.parsing import venue_order_from_ccxt
from libs.venue.requests import create_order_args, create_request
from tests.builders import intent, offline_client

BTC, ETH, SOL, XRP = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "XRP/USDT:USDT"
NOW_MS = 1_767_225_600_123

# an answer each endpoint accepts the same way; what is parsed from it is test_raw_orders' business
ORDER_ANSWER = {
    "orderId": 1,
    "symbol": "BTCUSDT",
    "status": "NEW",
    "clientOrderId": "x",
    "positionSide": "BOTH",
}


def exit_(**kw: Any) -> dict[str, Any]:
    return {"bucket": Bucket.EXIT, "reduce_only": True, **kw}


def sl(**kw: Any) -> dict[str, Any]:
    return {"bucket": Bucket.SL, "order_type": "stop_market", **kw}


def tp(**kw: Any) -> dict[str, Any]:
    return {"bucket": Bucket.TP, "order_type": "take_profit_market", **kw}


def trail(**kw: Any) -> dict[str, Any]:
    return {"bucket": Bucket.SL, "order_type": "trailing_stop_market", "reduce_only": True, **kw}


# (intent fields, the qty the router passes: intents carry unrounded sizes, and so may its reductions)
CASES: list[tuple[str, dict[str, Any], float | None]] = [
    ("market buy", dict(qty=0.0123456), 0.0123456),
    ("market sell", dict(symbol=ETH, side="sell", qty=1.23456), 1.23456),
    ("market small lot", dict(symbol=XRP, qty=123.456), 123.456),
    ("market reduced qty", dict(qty=0.05), 0.0199999),
    ("limit buy", dict(order_type="limit", price=49_999.987, qty=0.01), 0.01),
    ("limit sell", dict(symbol=SOL, side="sell", order_type="limit", price=151.23456, qty=2.5), 2.5),
    ("limit tick", dict(symbol=XRP, order_type="limit", price=13.00049, qty=10), 10.0),
    ("reduce-only market", exit_(side="sell", qty=0.01), 0.01),
    ("reduce-only limit", exit_(side="buy", order_type="limit", price=50_100.05, qty=0.3), 0.3),
    ("stop close-position sell", sl(side="sell", stop_price=49_000.04, close_position=True), None),
    ("stop close-position buy", sl(side="buy", stop_price=51_000.06, close_position=True), None),
    (
        "stop close-position, qty ignored",
        sl(side="sell", stop_price=49_000.0, close_position=True, qty=0.02),
        0.02,
    ),
    ("stop with qty", sl(side="sell", stop_price=49_000.04, reduce_only=True, qty=0.0234), 0.0234),
    ("stop with qty buy", sl(symbol=XRP, side="buy", stop_price=13.5555, reduce_only=True, qty=50), 50.0),
    ("take profit close-position", tp(side="sell", stop_price=52_000.05, close_position=True), None),
    (
        "take profit with qty",
        tp(symbol=ETH, side="buy", stop_price=2_900.009, reduce_only=True, qty=0.7),
        0.7,
    ),
    ("trailing", trail(side="sell", callback_rate=1.0, qty=0.01), 0.01),
    ("trailing odd rate", trail(side="buy", callback_rate=0.35, qty=0.01), 0.01),
    (
        "trailing activation",
        trail(side="sell", callback_rate=0.7, activation_price=51_234.56, qty=0.02),
        0.02,
    ),
    (
        "trailing activation buy",
        trail(symbol=SOL, side="buy", callback_rate=2, activation_price=149.9999, qty=1),
        1.0,
    ),
]


@pytest_asyncio.fixture
async def client() -> AsyncIterator[Any]:
    c = await offline_client(dict(ORDER_ANSWER))
    c.nonce = lambda: NOW_MS
    c.options["recvWindow"] = 1000
    yield c
    await c.close()


async def unified_send(client: Any, i: Any, qty: float | None) -> tuple:
    """What the create path before sent: ccxt's create_order with create_order_args."""
    typ, side, amount, price, params = create_order_args(i, qty)
    await client.create_order(i.symbol, typ, side, 0.0 if amount is None else amount, price, params)
    return client.sent.pop()


async def lean_send(client: Any, i: Any, qty: float | None) -> tuple:
    await BinanceUSDM(client, sync_clock=False).create(i, qty)
    return client.sent.pop()


@pytest.mark.parametrize("fields,qty", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_the_venue_receives_what_ccxt_create_order_sent(client, fields, qty):
    i = intent(**fields)
    before = await unified_send(client, i, qty)
    after = await lean_send(client, i, qty)
    assert after == before  # url, method, headers, body with its signature: the same bytes
    url, method, _, body = after
    params = dict(parse_qsl(body))
    assert method == "POST"
    assert url.endswith("/fapi/v1/algoOrder" if i.is_trigger else "/fapi/v1/order")
    assert params["timestamp"] == str(NOW_MS) and params["recvWindow"] == "1000"
    assert params["clientAlgoId" if i.is_trigger else "newClientOrderId"] == i.client_order_id


@pytest.mark.parametrize(
    "fields,qty",
    [
        (dict(qty=0.0001), 0.0001),  # below BTC's 0.001 step: ccxt refuses before sending
        (exit_(side="sell", order_type="market", close_position=True, reduce_only=False), None),
        (dict(symbol="DOGE/USDT:USDT"), 0.01),  # a market the venue does not list
    ],
    ids=["below precision", "close-position market", "unknown market"],
)
async def test_what_ccxt_refused_before_sending_is_refused_the_same(client, fields, qty):
    i = intent(**fields)
    with pytest.raises(ccxt.BaseError) as unified:
        await unified_send(client, i, qty)
    with pytest.raises(VenueError) as lean:
        await lean_send(client, i, qty)
    cause = lean.value.__cause__
    assert (type(cause), str(cause)) == (type(unified.value), str(unified.value))
    assert client.sent == []


async def test_an_order_type_the_market_does_not_list_is_refused_as_ccxt_refused_it(client):
    client.markets[BTC]["info"]["orderTypes"] = ["LIMIT", "MARKET"]
    for fields in (
        sl(side="sell", stop_price=49_000.0, close_position=True),
        trail(side="sell", callback_rate=1, qty=0.01),
    ):
        i = intent(**fields)
        with pytest.raises(ccxt.InvalidOrder) as unified:
            await unified_send(client, i, i.qty)
        with pytest.raises(ccxt.InvalidOrder) as lean:
            create_request(i, i.qty, client.markets[BTC], client, "GTC")
        assert str(lean.value) == str(unified.value)
    client.markets[BTC]["info"]["orderTypes"] = ["MARKET"]
    i = intent(order_type="limit", price=50_000.0)
    with pytest.raises(ccxt.InvalidOrder) as unified:
        await unified_send(client, i, i.qty)
    with pytest.raises(ccxt.InvalidOrder) as lean:
        create_request(i, i.qty, client.markets[BTC], client, "GTC")
    assert str(lean.value) == str(unified.value)


async def test_the_request_reads_as_binance_documents_it(client):
    stop = intent(**sl(side="sell", stop_price=49_000.04, close_position=True))
    req = create_request(stop, None, client.markets[BTC], client, "GTC")
    assert req.algo and req.params == {
        "symbol": "BTCUSDT",
        "side": "SELL",
        "clientAlgoId": stop.client_order_id,
        "newOrderRespType": "RESULT",
        "type": "STOP_MARKET",
        "triggerPrice": "49000",
        "closePosition": True,  # no quantity with closePosition (-4137)
        "algoType": "CONDITIONAL",
    }
    trailing = intent(**trail(side="sell", callback_rate=0.7, activation_price=51_234.56, qty=0.02))
    req = create_request(trailing, 0.0219, client.markets[BTC], client, "GTC")
    assert (req.params["callbackRate"], req.params["activatePrice"], req.params["quantity"]) == (
        "0.7",
        "51234.6",
        "0.021",
    )
    entry = intent(order_type="limit", price=49_999.987, qty=0.0123)
    req = create_request(entry, 0.0123, client.markets[BTC], client, "GTC")
    assert not req.algo and req.params == {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "newClientOrderId": entry.client_order_id,
        "newOrderRespType": "RESULT",
        "type": "LIMIT",
        "quantity": "0.012",
        "price": "50000",
        "timeInForce": "GTC",
    }


@pytest.mark.parametrize(
    "answer",
    [
        {**ORDER_ANSWER, "status": "FILLED", "executedQty": "0.01", "origQty": "0.01", "avgPrice": "50010.1"},
        # a shape the raw reading leaves to ccxt: read by ccxt, as before
        {**ORDER_ANSWER, "status": "FILLED", "executedQty": "0.01", "cumQuote": "500.1", "avgPrice": "0"},
    ],
    ids=["read directly", "read by ccxt"],
)
async def test_the_answer_reads_as_before(client, answer):
    i = intent(qty=0.01)
    client.answer = answer
    typ, side, amount, price, params = create_order_args(i, i.qty)
    before = venue_order_from_ccxt(
        await client.create_order(i.symbol, typ, side, amount, price, params), i.client_order_id
    )
    assert await BinanceUSDM(client, sync_clock=False).create(i, i.qty) == before


async def test_no_answer_is_ccxts_null_response(client):
    client.answer = None
    with pytest.raises(VenueError) as lean:
        await lean_send(client, intent(), 0.01)
    with pytest.raises(ccxt.NullResponse) as unified:
        await unified_send(client, intent(), 0.01)
    assert (type(lean.value.__cause__), str(lean.value.__cause__)) == (ccxt.NullResponse, str(unified.value))
