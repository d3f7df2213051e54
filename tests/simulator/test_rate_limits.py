"""Binance request-weight and order-count limits, through the real ccxt client.

Each 429/418 the simulator sends is also fed to ccxt's error handling as if it
came from fapi.binance.com: the exception class must be the same. A client that
was refused may hold its own later calls (Retry-After), so "sending on" after a
429 comes from a second client on the same IP, as when another process shares it.
"""

from __future__ import annotations

import json
import time

import ccxt
import ccxt.async_support as ccxt_async
import httpx
import pytest

from libs.venue.client import make_exchange

pytestmark = pytest.mark.integration

BTC = "BTC/USDT:USDT"
REAL = "https://fapi.binance.com/fapi/v1/openOrders"
IP = "127.0.0.1"
WEIGHT = "x-mbx-used-weight-1m"


def expected_class(status: int, body: str) -> type[BaseException]:
    ex = ccxt_async.binanceusdm()
    try:
        ex.handle_errors(status, "x", REAL, "GET", {}, body, json.loads(body), {}, "")
        ex.handle_http_status_code(status, "x", REAL, "GET", body)
    except ccxt.BaseError as e:
        return type(e)
    raise AssertionError(f"real-host ccxt raised nothing for {status} {body}")


@pytest.fixture
async def new_client(sim):
    made = []

    async def new(load: bool = True):
        client = make_exchange(
            api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret", timeout_ms=1000
        )
        made.append(client)
        if load:
            await client.load_markets()
        return client

    yield new
    for client in made:
        await client.close()
    sim.reset()  # never leave the shared simulator's loopback IP banned


@pytest.fixture
async def ex(new_client):
    return await new_client()


async def loaded_like(ex, new_client):
    """A second client on the same IP with ex's markets, without another exchangeInfo call."""
    other = await new_client(load=False)
    other.set_markets(ex.markets)
    return other


async def raises(coro) -> BaseException:
    try:
        await coro
    except ccxt.BaseError as e:
        return e
    raise AssertionError("no exception")


def get(sim, path: str) -> httpx.Response:
    return httpx.get(sim.base_url + path)


def post(sim, path: str, body: dict) -> httpx.Response:
    return httpx.post(sim.base_url + path, json=body)


def header(ex, name: str) -> str | None:
    return {k.lower(): v for k, v in ex.last_response_headers.items()}.get(name.lower())


def used(ex) -> int:
    return int(header(ex, WEIGHT))


def last_logged(sim) -> tuple[int, int | None]:
    last = sim.requests_log()[-1]
    return last["status"], last["code"]


async def test_headers_grow_by_the_documented_weight(sim, ex):
    assert used(ex) == 1  # exchangeInfo
    await ex.fetch_open_orders(BTC)
    assert used(ex) == 2
    await ex.fetch_open_orders()
    assert used(ex) == 42  # without a symbol: 40
    await ex.fetch_open_orders(BTC, params={"trigger": True})
    assert used(ex) == 43
    await ex.fetch_open_orders(None, params={"trigger": True})
    assert used(ex) == 83
    await ex.fetch_positions()
    assert used(ex) == 89  # ccxt reads leverageBracket (1) once first
    await ex.fetch_positions()
    assert used(ex) == 94
    await ex.fetch_balance()
    assert used(ex) == 99
    await ex.create_order(BTC, "limit", "buy", 0.01, 49_000, {"clientOrderId": "H1"})
    assert used(ex) == 99  # placing costs no IP weight ...
    assert (header(ex, "X-MBX-ORDER-COUNT-10S"), header(ex, "X-MBX-ORDER-COUNT-1M")) == ("1", "1")
    await ex.cancel_order(None, BTC, {"clientOrderId": "H1"})
    assert used(ex) == 100
    assert header(ex, "X-MBX-ORDER-COUNT-10S") is None  # ... and only order answers carry the counts
    view = sim.limits()
    assert view["ips"][IP]["used_weight_1m"] == 100
    assert (view["ips"][IP]["order_count_10s"], view["ips"][IP]["order_count_1m"]) == (1, 1)
    assert (view["ips"][IP]["bans"], view["ips"][IP]["banned_until_ms"]) == (0, None)


async def test_mark_prices_one_symbol_weighs_1_every_symbol_10_in_binances_list_form(sim, ex):
    """premiumIndex as Binance serves it: one object with a symbol (weight 1), a JSON array of every
    listed symbol's object without (weight 10); the services' one bulk mark read uses the latter."""
    start = used(ex)
    assert (await ex.fetch_mark_price(BTC))["markPrice"] == sim.price("BTCUSDT")
    assert used(ex) == start + 1
    rows = await ex.fapiPublicGetPremiumIndex()
    assert used(ex) == start + 11
    fields = {
        "symbol",
        "markPrice",
        "indexPrice",
        "estimatedSettlePrice",
        "lastFundingRate",
        "interestRate",
        "nextFundingTime",
        "time",
    }
    assert isinstance(rows, list) and all(isinstance(r, dict) and set(r) == fields for r in rows)
    listed = {r["symbol"]: r["markPrice"] for r in rows}
    assert sorted(listed) == sorted(m["id"] for m in ex.markets.values())
    assert all(isinstance(v, str) and float(v) == sim.price(s) for s, v in listed.items())
    r = get(sim, "/fapi/v1/premiumIndex?symbol=NOPEUSDT")
    assert (r.status_code, r.json()["code"]) == (400, -1121)


def test_every_fapi_answer_carries_the_weight_header(sim):
    r = get(sim, "/fapi/v1/openOrders")  # unsigned: refused, weight counted all the same
    assert r.status_code in (400, 401) and r.headers[WEIGHT] == "40"
    r = get(sim, "/fapi/v9/nothing")
    assert (r.status_code, r.headers[WEIGHT]) == (404, "41")
    sim.add_fault(kind="http_error", status=503, path="/fapi/v1/ping")
    r = get(sim, "/fapi/v1/ping")
    assert r.status_code == 503 and WEIGHT in r.headers
    assert "x-mbx-order-count-10s" not in r.headers  # order counts come on order answers only
    assert "x-mbx-used-weight-1m" not in get(sim, "/_sim/state").headers


def test_exchange_info_advertises_the_limits_in_force(sim):
    def advertised():
        info = get(sim, "/fapi/v1/exchangeInfo").json()
        return {(x["rateLimitType"], x["interval"], x["intervalNum"]): x["limit"] for x in info["rateLimits"]}

    now = sim.limits()  # the limits in force (fixtures may scale the weight limit)
    assert advertised() == {
        ("REQUEST_WEIGHT", "MINUTE", 1): now["weight_limit_1m"],
        ("ORDERS", "MINUTE", 1): now["orders_limit_1m"],
        ("ORDERS", "SECOND", 10): now["orders_limit_10s"],
    }
    sim.set_limits(weight_limit_1m=2345, orders_limit_10s=50)
    assert advertised() == {
        ("REQUEST_WEIGHT", "MINUTE", 1): 2345,
        ("ORDERS", "MINUTE", 1): now["orders_limit_1m"],
        ("ORDERS", "SECOND", 10): 50,
    }


async def test_over_the_weight_limit_429_then_sending_on_is_a_418_ban(sim, ex, new_client):
    other = await loaded_like(ex, new_client)
    sim.set_limits(weight_limit_1m=45)
    await ex.fetch_open_orders()  # 1 + 40
    err = await raises(ex.fetch_open_orders())  # 81 > 45
    body = ex.last_http_response
    assert last_logged(sim) == (429, -1003)
    assert json.loads(body) == {
        "code": -1003,
        "msg": f"Too many requests; current limit of IP({IP}) is 45 requests per minute. "
        "Please use the websocket for live updates to avoid polling the API.",
    }
    assert type(err) is expected_class(429, body)
    assert isinstance(err, ccxt.DDoSProtection)
    assert int(header(ex, "Retry-After")) == 60  # the refused 40 counts too: it must leave first
    assert used(ex) == 81
    assert sim.limits()["ips"][IP]["retry_after_until_ms"] is not None

    sent = time.time()
    ex = other
    err = await raises(ex.fetch_balance())  # within Retry-After, from the same IP: banned
    body = ex.last_http_response
    assert last_logged(sim) == (418, -1003)
    msg = json.loads(body)["msg"]
    prefix = f"Way too many requests; IP({IP}) banned until "
    assert msg.startswith(prefix) and msg.endswith(
        ". Please use the websocket for live updates to avoid bans."
    )
    until_ms = int(msg[len(prefix) :].split(".")[0])
    assert until_ms / 1000 == pytest.approx(sent + 120, abs=2)
    assert type(err) is expected_class(418, body)
    assert 118 <= int(header(ex, "Retry-After")) <= 120
    assert used(ex) == 86  # balance (5) counted although refused

    # every request during the ban, public ones and orders included, answers the same 418
    r = get(sim, "/fapi/v1/ping")
    assert (r.status_code, r.json()["msg"], r.headers[WEIGHT]) == (418, msg, "87")
    ex = await loaded_like(ex, new_client)
    err = await raises(ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "B1"}))
    assert type(err) is expected_class(418, ex.last_http_response)
    assert json.loads(ex.last_http_response)["msg"] == msg
    assert sim.position("BTCUSDT") == 0
    v = sim.limits()["ips"][IP]
    assert (v["banned"], v["bans"], v["banned_until_ms"], v["order_count_1m"]) == (True, 1, until_ms, 0)


def wait_until_unbanned(sim, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while sim.limits()["ips"][IP]["banned"]:
        assert time.monotonic() < deadline, "ban did not end"


def ban_length(sim, ex) -> float:
    """Seconds between the request that got banned and the end of its ban (both server clock)."""
    msg = json.loads(ex.last_http_response)["msg"]
    until_ms = int(msg.split("banned until ")[1].split(".")[0])
    return until_ms / 1000 - sim.requests_log()[-1]["ts"]


async def test_bans_escalate_on_repeat(sim, ex, new_client):
    sim.set_limits(weight_limit_1m=1, ban_base_sec=0.3)
    lengths = []
    for _ in range(3):
        first, second = await loaded_like(ex, new_client), await loaded_like(ex, new_client)
        assert isinstance(await raises(first.fetch_time()), ccxt.DDoSProtection)
        assert last_logged(sim) == (429, -1003)
        assert isinstance(await raises(second.fetch_time()), ccxt.DDoSProtection)
        assert last_logged(sim) == (418, -1003)
        lengths.append(ban_length(sim, second))
        wait_until_unbanned(sim)
    assert lengths == [pytest.approx(x, abs=0.05) for x in (0.3, 0.6, 1.2)]
    assert sim.limits()["ips"][IP]["bans"] == 3


async def test_order_count_limit_429(sim, ex, new_client):
    sim.set_limits(orders_limit_10s=2)
    for i in (1, 2):
        await ex.create_order(BTC, "limit", "buy", 0.01, 49_000, {"clientOrderId": f"O{i}"})
        assert header(ex, "X-MBX-ORDER-COUNT-10S") == str(i)
    err = await raises(ex.create_order(BTC, "limit", "buy", 0.01, 49_000, {"clientOrderId": "O3"}))
    body = ex.last_http_response
    assert json.loads(body) == {
        "code": -1015,
        "msg": "Too many new orders; current limit is 2 orders per 10 SECOND.",
    }
    assert type(err) is expected_class(429, body)
    assert 1 <= int(header(ex, "Retry-After")) <= 10
    # a refused order carries no order count (Binance does not promise one); it is not counted ...
    assert header(ex, "X-MBX-ORDER-COUNT-10S") is None and sim.limits()["order_count_10s"] == 2
    assert sorted(o["clientOrderId"] for o in sim.state()["orders"]) == ["O1", "O2"]  # ... nor placed
    # stop orders count on the same counters
    sim.reset()
    ex = await loaded_like(ex, new_client)
    sim.set_limits(orders_limit_1m=1)
    sim.set_position("BTCUSDT", 0.02)
    await ex.create_order(BTC, "market", "sell", 0.02, None, {"stopLossPrice": 45_000, "reduceOnly": True})
    err = await raises(ex.create_order(BTC, "market", "sell", 0.02, None, {"takeProfitPrice": 55_000}))
    assert json.loads(ex.last_http_response)["msg"] == (
        "Too many new orders; current limit is 1 orders per 1 MINUTE."
    )
    assert type(err) is expected_class(429, ex.last_http_response)


async def test_injected_429_418_look_real_but_do_not_ban(sim, ex, new_client):
    for status in (429, 418):
        ex = await loaded_like(ex, new_client)
        sim.add_fault(kind="http_error", status=status, path="/fapi/v1/openOrders")
        sent = time.time()
        err = await raises(ex.fetch_open_orders(BTC))
        body = json.loads(ex.last_http_response)
        assert type(err) is expected_class(status, ex.last_http_response)
        assert int(header(ex, "Retry-After")) >= 1
        if status == 418:
            until_ms = int(body["msg"].split("banned until ")[1].split(".")[0])
            assert sent < until_ms / 1000 <= time.time() + 2.5
        else:
            limit = sim.limits()["weight_limit_1m"]
            assert f"current limit of IP({IP}) is {limit} requests per minute" in body["msg"]
        again = await loaded_like(ex, new_client)
        assert await again.fetch_open_orders(BTC) == []  # the server holds nothing against the IP
    assert sim.limits()["ips"][IP]["bans"] == 0


async def test_limits_control_api_and_reset(sim, ex, new_client):
    keys = ("weight_limit_1m", "orders_limit_10s", "orders_limit_1m", "ban_base_sec", "rate_limits")
    configured = {k: getattr(sim.settings, k) for k in keys}
    assert configured["rate_limits"] is True
    view = sim.limits()
    assert {k: view[k] for k in keys if k != "weight_limit_1m"} == {
        k: configured[k] for k in keys if k != "weight_limit_1m"
    }
    assert view["ips"][IP]["used_weight_1m"] == 1  # the fixture's exchangeInfo
    bad = [{"weight_limit_1m": 0}, {"surprise": 1}, {"ban_base_sec": -1}]
    for body in bad:
        assert post(sim, "/_sim/limits", body).status_code == 422
    sim.set_limits(weight_limit_1m=1)
    await raises(ex.fetch_time())
    await raises((await loaded_like(ex, new_client)).fetch_time())
    assert sim.limits()["ips"][IP]["banned"]
    sim.reset()
    ex = await loaded_like(ex, new_client)
    view = sim.limits()
    assert ({k: view[k] for k in keys}, view["ips"]) == (configured, {})
    assert await ex.fetch_open_orders(BTC) == []
    assert used(ex) == 1


async def test_switched_off_counts_but_never_refuses(sim, ex):
    sim.set_limits(weight_limit_1m=1, rate_limits=False)
    for _ in range(3):
        await ex.fetch_open_orders()
    assert used(ex) == 121
