import hashlib
import hmac

import pytest
from pydantic import ValidationError

from services.simulator.auth import check_signed_request, split_signature
from services.simulator.config import SimulatorSettings
from services.simulator.engine import SimError
from services.simulator.faults import FaultBook, FaultRule


def signed(payload: str, secret: str = "s") -> str:
    return payload + "&signature=" + hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def check(payload, key="k", ts=1000, now=1000):
    check_signed_request(
        api_key_header=key,
        payload=payload,
        timestamp_ms=ts,
        recv_window_ms=None,
        now_ms=now,
        api_key="k",
        api_secret="s",
        default_recv_window_ms=5000,
    )


def test_signature_ok_and_failures():
    check(signed("symbol=BTCUSDT&timestamp=1000"))
    for payload, key, ts, now, code in [
        (signed("a=1"), "wrong", 1000, 1000, -2015),
        ("a=1&signature=deadbeef", "k", 1000, 1000, -1022),
        ("a=1", "k", 1000, 1000, -1102),
        (signed("a=1"), "k", 1000, 7000, -1021),
    ]:
        with pytest.raises(SimError) as e:
            check(payload, key, ts, now)
        assert e.value.code == code
    assert split_signature("a=1&signature=x") == ("a=1", "x")


def test_rules_match_and_count_down():
    book = FaultBook()
    book.add(FaultRule(kind="http_error", status=503, method="POST", path="/fapi/v1/order", count=2))
    book.add(FaultRule(kind="latency", delay_ms=5, count=None, symbol="ETHUSDT"))
    assert book.take(("http_error",), "GET", "/fapi/v1/order", None) == []
    assert len(book.take(("http_error",), "POST", "/fapi/v1/order", "BTCUSDT")) == 1
    assert len(book.take(("http_error",), "POST", "/fapi/v1/order", "BTCUSDT")) == 1
    assert book.take(("http_error",), "POST", "/fapi/v1/order", "BTCUSDT") == []  # spent
    assert book.take(("latency",), "GET", "/x", "BTCUSDT") == []
    assert len(book.take(("latency",), "GET", "/x", "ETHUSDT")) == 1
    assert [r.view()["hits"] for r in book.rules] == [2, 1]


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "http_error"},
        {"kind": "binance_error"},
        {"kind": "latency"},
        {"kind": "nonsense"},
        {"kind": "latency", "delay_ms": 5, "surprise": 1},
    ],
)
def test_bad_rules_rejected(rule):
    with pytest.raises(ValidationError):
        FaultRule(**rule)


def test_settings_validation():
    assert SimulatorSettings(symbols="3").symbol_list()[-1] == "S003USDT"
    assert len(SimulatorSettings(symbols="200").symbol_list()) == 203
    with pytest.raises(ValidationError):
        SimulatorSettings(symbols="BTC-PERP")
