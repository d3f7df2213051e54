"""The simulator's Binance rate limiter, pure: an injected clock, no HTTP."""

import pytest

from services.simulator.config import SimulatorSettings
from services.simulator.ratelimit import (
    BAN_MAX_SEC,
    Limits,
    RateLimiter,
    injected_refusal,
    request_weight,
)

IP = "10.0.0.1"
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def at(self, sec: float) -> None:
        self.t = T0 + sec


@pytest.fixture
def clock():
    return Clock()


def limiter(clock, **kw):
    return RateLimiter(Limits(**kw), clock)


def send(rl, method="GET", path="/fapi/v1/ping", ip=IP, **params):
    return rl.admit(ip, method, path, params)


def positions(rl, ip=IP):
    return send(rl, "GET", "/fapi/v3/positionRisk", ip)


def order(rl, ip=IP):
    return send(rl, "POST", "/fapi/v1/order", ip, symbol="BTCUSDT")


def used(rl, ip=IP):
    return int(rl.headers(ip)["X-MBX-USED-WEIGHT-1M"])


@pytest.mark.parametrize(
    "method,path,with_symbol,without",
    [
        ("GET", "/fapi/v1/openOrders", 1, 40),
        ("GET", "/fapi/v1/openAlgoOrders", 1, 40),
        ("GET", "/fapi/v1/premiumIndex", 1, 10),
        ("GET", "/fapi/v1/ticker/price", 1, 2),
        ("GET", "/fapi/v2/ticker/price", 1, 2),
        ("GET", "/fapi/v3/positionRisk", 5, 5),
        ("GET", "/fapi/v2/positionRisk", 5, 5),
        ("GET", "/fapi/v2/account", 5, 5),
        ("GET", "/fapi/v3/balance", 5, 5),
        ("GET", "/fapi/v1/allOrders", 5, 5),
        ("GET", "/fapi/v1/allAlgoOrders", 5, 5),
        ("GET", "/fapi/v1/order", 1, 1),
        ("DELETE", "/fapi/v1/order", 1, 1),
        ("DELETE", "/fapi/v1/algoOrder", 1, 1),
        ("POST", "/fapi/v1/order", 0, 0),
        ("POST", "/fapi/v1/algoOrder", 0, 0),
        ("POST", "/fapi/v1/leverage", 1, 1),
        ("GET", "/fapi/v1/leverageBracket", 1, 1),
        ("GET", "/fapi/v1/exchangeInfo", 1, 1),
        ("PUT", "/fapi/v1/listenKey", 1, 1),
        ("GET", "/fapi/v9/whatever", 1, 1),
    ],
)
def test_documented_weights(method, path, with_symbol, without):
    assert request_weight(method, path, {"symbol": "BTCUSDT"}) == with_symbol
    assert request_weight(method, path, {}) == without
    assert request_weight(method, path, {"symbol": ""}) == without


def test_rolling_window_and_retry_after(clock):
    rl = limiter(clock, weight_limit_1m=10)
    assert positions(rl) is None
    clock.at(30)
    assert positions(rl) is None
    assert used(rl) == 10  # exactly at the limit is allowed
    clock.at(31)
    r = send(rl)  # 11 > 10
    assert (r.status, r.code, r.retry_after_sec) == (429, -1003, 29)  # the t=0 weight leaves at t=60
    assert r.msg == (
        "Too many requests; current limit of IP(10.0.0.1) is 10 requests per minute. "
        "Please use the websocket for live updates to avoid polling the API."
    )
    assert used(rl) == 11  # the refused request counts
    clock.at(60)  # honoured Retry-After: the t=0 weight has left the rolling window
    assert send(rl) is None
    assert used(rl) == 7
    clock.at(89.5)
    assert used(rl) == 7
    clock.at(90)
    assert used(rl) == 2


def test_retry_after_is_at_least_one_second(clock):
    rl = limiter(clock, weight_limit_1m=5)
    assert positions(rl) is None
    clock.at(59.8)
    r = send(rl)
    assert (r.status, r.retry_after_sec) == (429, 1)


def test_retry_after_when_one_request_alone_is_over_the_limit(clock):
    rl = limiter(clock, weight_limit_1m=3)
    r = send(rl, "GET", "/fapi/v1/openOrders")
    assert (r.status, r.retry_after_sec) == (429, 60)


def test_sending_before_retry_after_bans_and_bans_escalate(clock):
    rl = limiter(clock, weight_limit_1m=5, ban_base_sec=120)
    assert positions(rl) is None
    assert send(rl).status == 429  # retry after 60 s
    clock.at(1)
    r = send(rl)
    until = T0 + 1 + 120
    assert (r.status, r.code, r.retry_after_sec) == (418, -1003, 120)
    assert r.msg == (
        f"Way too many requests; IP(10.0.0.1) banned until {int(until * 1000)}. "
        "Please use the websocket for live updates to avoid bans."
    )
    clock.at(100)  # every request during the ban: the same 418, the ban does not grow
    r2 = order(rl)
    assert (r2.status, r2.msg, r2.retry_after_sec) == (418, r.msg, 21)
    assert rl.view()["order_count_1m"] == 0  # refused orders move no order counter
    assert rl.view()["ips"][IP]["bans"] == 1

    clock.at(121)  # ban over; the ping sent during the ban at t=100 still counts
    assert send(rl) is None
    assert positions(rl).status == 429  # 1 + 1 + 5 > 5: over again
    r3 = send(rl)  # and keeps on: second offence, twice as long
    assert (r3.status, r3.retry_after_sec) == (418, 240)
    clock.at(121 + 240)
    assert positions(rl) is None
    assert send(rl).status == 429
    assert send(rl).retry_after_sec == 480
    v = rl.view()["ips"][IP]
    assert (v["bans"], v["banned"], v["banned_until_ms"]) == (3, True, int((T0 + 361 + 480) * 1000))


def test_ban_is_capped_at_three_days(clock):
    rl = limiter(clock, weight_limit_1m=1, ban_base_sec=200_000)
    send(rl)
    assert send(rl).status == 429
    assert send(rl).retry_after_sec == 200_000
    clock.at(200_000)
    assert send(rl) is None
    assert send(rl).status == 429
    assert send(rl).retry_after_sec == BAN_MAX_SEC == 3 * 24 * 3600


def test_waiting_out_retry_after_is_not_an_offence(clock):
    rl = limiter(clock, weight_limit_1m=5)
    assert positions(rl) is None
    clock.at(10)
    r = send(rl)
    assert r.status == 429
    clock.at(10 + r.retry_after_sec)
    assert send(rl) is None
    assert rl.view()["ips"][IP]["bans"] == 0


def test_order_counters_ten_seconds_and_minute(clock):
    rl = limiter(clock, orders_limit_10s=3, orders_limit_1m=5)
    for t in (0, 1, 2):
        clock.at(t)
        assert order(rl) is None
    assert used(rl) == 0  # placing an order costs no IP weight
    h = rl.headers(IP)
    assert (h["X-MBX-ORDER-COUNT-10S"], h["X-MBX-ORDER-COUNT-1M"]) == ("3", "3")
    clock.at(3)
    r = order(rl)
    assert (r.status, r.code, r.retry_after_sec) == (429, -1015, 7)
    assert r.msg == "Too many new orders; current limit is 3 orders per 10 SECOND."
    assert rl.headers(IP)["X-MBX-ORDER-COUNT-10S"] == "3"  # the refused order is not counted
    clock.at(10)
    assert order(rl) is None  # t=0 left the 10 s window
    clock.at(11)
    assert order(rl) is None
    clock.at(20)
    h = rl.headers(IP)
    assert (h["X-MBX-ORDER-COUNT-10S"], h["X-MBX-ORDER-COUNT-1M"]) == ("1", "5")
    r = order(rl)
    assert (r.status, r.code, r.retry_after_sec) == (429, -1015, 40)  # t=0 leaves the minute at 60
    assert r.msg == "Too many new orders; current limit is 5 orders per 1 MINUTE."


def test_order_counters_are_account_wide_weight_is_per_ip(clock):
    rl = limiter(clock, orders_limit_10s=2)
    assert order(rl, "1.1.1.1") is None
    assert positions(rl, "1.1.1.1") is None
    assert order(rl, "2.2.2.2") is None
    assert order(rl, "2.2.2.2").code == -1015
    assert (used(rl, "1.1.1.1"), used(rl, "2.2.2.2"), used(rl, "3.3.3.3")) == (5, 0, 0)
    assert rl.headers("3.3.3.3")["X-MBX-ORDER-COUNT-10S"] == "2"


def test_ban_is_per_ip(clock):
    rl = limiter(clock, weight_limit_1m=1)
    send(rl)
    send(rl)
    assert send(rl).status == 418
    assert send(rl, ip="2.2.2.2") is None


def test_switched_off_counts_but_never_refuses(clock):
    rl = limiter(clock, weight_limit_1m=1, orders_limit_10s=1, rate_limits=False)
    for _ in range(5):
        assert send(rl, "GET", "/fapi/v1/openOrders") is None
        assert order(rl) is None
    assert used(rl) == 200
    assert rl.headers(IP)["X-MBX-ORDER-COUNT-10S"] == "5"


def test_runtime_limits_view_reset_and_advertised(clock):
    rl = limiter(clock)
    assert [x["limit"] for x in rl.advertised()] == [2400, 1200, 300]
    rl.set_limits(weight_limit_1m=2, orders_limit_10s=7)
    assert [x["limit"] for x in rl.advertised()] == [2, 1200, 7]
    send(rl)
    send(rl)
    assert send(rl).status == 429
    view = rl.view()
    assert view["weight_limit_1m"] == 2 and view["rate_limits"] is True
    assert view["ips"][IP]["used_weight_1m"] == 3
    assert view["ips"][IP]["retry_after_until_ms"] == int((T0 + 60) * 1000)
    rl.reset(Limits())
    view = rl.view()
    assert (view["weight_limit_1m"], view["orders_limit_10s"], view["ips"]) == (2400, 300, {})
    assert send(rl) is None


def test_injected_refusals_look_real_and_change_nothing(clock):
    rl = limiter(clock)
    r = injected_refusal(418, IP, clock(), rl.limits)
    assert (r.status, r.code, r.retry_after_sec) == (418, -1003, 2)
    assert f"banned until {int((T0 + 2) * 1000)}." in r.msg
    r = injected_refusal(429, IP, clock(), rl.limits)
    assert (r.status, r.code, r.retry_after_sec) == (429, -1003, 1)
    assert "current limit of IP(10.0.0.1) is 2400 requests per minute" in r.msg
    assert rl.view()["ips"] == {}


def test_settings_default_to_binance_limits_and_on():
    s = SimulatorSettings()
    assert (s.rate_limits, s.weight_limit_1m, s.orders_limit_10s, s.orders_limit_1m, s.ban_base_sec) == (
        True,
        2400,
        300,
        1200,
        120,
    )
