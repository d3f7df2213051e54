import json

import ccxt
import ccxt.async_support as ccxt_async
import pytest

from libs.common.error_policy import (
    Modification,
    Policy,
    classify_order_error_policy,
    parse_binance_code,
    parse_http_status,
)

FAPI = "https://fapi.binance.com/fapi/v1/order"


def raised_by_ccxt(status: int, body: dict | str, url: str = FAPI) -> BaseException:
    """The exception real ccxt raises for this HTTP response from the real venue."""
    ex = ccxt_async.binanceusdm()
    text = body if isinstance(body, str) else json.dumps(body)
    parsed = body if isinstance(body, dict) else None
    try:
        ex.handle_errors(status, "reason", url, "POST", {}, text, parsed, {}, "")
        ex.handle_http_status_code(status, "reason", url, "POST", text)
    except ccxt.BaseError as e:
        return e
    raise AssertionError("ccxt raised nothing")


CASES = [
    # code, policy, reason, ambiguous, modification
    (-1003, Policy.RETRYABLE, "rate_limited", False, None),
    (-1007, Policy.RETRYABLE, "venue_timeout_unknown_status", True, None),
    (
        -1021,
        Policy.RETRYABLE_WITH_MODIFICATION,
        "timestamp_outside_recv_window",
        False,
        Modification.RESYNC_CLOCK,
    ),
    (-1022, Policy.FATAL, "bad_signature", False, None),
    (-2011, Policy.IDEMPOTENT_SAFE, "unknown_order", False, None),
    (-2013, Policy.IDEMPOTENT_SAFE, "order_does_not_exist", False, None),
    (-2015, Policy.FATAL, "auth_rejected", False, None),
    (-2019, Policy.FATAL, "insufficient_margin", False, None),
    (
        -2021,
        Policy.RETRYABLE_WITH_MODIFICATION,
        "would_immediately_trigger",
        False,
        Modification.TRIGGER_CROSSED,
    ),
    (
        -2022,
        Policy.RETRYABLE_WITH_MODIFICATION,
        "reduce_only_rejected",
        False,
        Modification.RESIZE_REDUCE_ONLY,
    ),
    (-4116, Policy.IDEMPOTENT_SAFE, "duplicate_client_order_id", False, None),
    (
        -4130,
        Policy.RETRYABLE_WITH_MODIFICATION,
        "close_position_order_exists",
        False,
        Modification.PROTECTION_EXISTS,
    ),
    (-4164, Policy.FATAL, "notional_too_small", False, None),
]


@pytest.mark.parametrize("code,policy,reason,ambiguous,modification", CASES)
def test_binance_codes_from_real_ccxt_exceptions(code, policy, reason, ambiguous, modification):
    err = raised_by_ccxt(400, {"code": code, "msg": "whatever the venue says"})
    d = classify_order_error_policy(err)
    assert (d.policy, d.reason, d.code, d.ambiguous, d.modification) == (
        policy,
        reason,
        code,
        ambiguous,
        modification,
    )
    assert d.error_class == type(err).__name__


@pytest.mark.parametrize(
    "status,policy,ambiguous",
    [
        (429, Policy.RETRYABLE, False),
        (418, Policy.RETRYABLE, False),
        (500, Policy.RETRYABLE, True),
        (502, Policy.RETRYABLE, True),
        (503, Policy.RETRYABLE, True),
        (504, Policy.RETRYABLE, True),
    ],
)
def test_http_statuses(status, policy, ambiguous):
    err = raised_by_ccxt(status, "<html>busy</html>")
    d = classify_order_error_policy(err)
    assert d.policy is policy and d.ambiguous is ambiguous
    if status == 418:
        assert d.reason == "ip_banned"


def test_timeouts_and_network_errors_are_ambiguous_retryable():
    for err in (ccxt.RequestTimeout("binanceusdm POST x timed out"), ccxt.NetworkError("reset by peer")):
        d = classify_order_error_policy(err)
        assert d.policy is Policy.RETRYABLE and d.ambiguous


def test_unknown_text_is_fatal():
    for err in (ccxt.ExchangeError("binanceusdm something new happened"), RuntimeError("boom"), ValueError()):
        d = classify_order_error_policy(err)
        assert d.policy is Policy.FATAL and d.reason == "unclassified"
    assert classify_order_error_policy(text="totally novel failure").policy is Policy.FATAL


def test_text_fallback_when_ccxt_lost_the_code():
    # ccxt against an unknown host raises plain ExchangeError; the text still tells us what happened
    err = ccxt.ExchangeError('binanceusdm {"msg":"ReduceOnly Order is rejected."}')
    d = classify_order_error_policy(err)
    assert d.policy is Policy.RETRYABLE_WITH_MODIFICATION and d.code == -2022


def test_code_beats_class():
    # an InvalidOrder that is really a duplicate client id must not be fatal
    err = ccxt.InvalidOrder('binanceusdm {"code":-4116,"msg":"ClientOrderId is duplicated."}')
    assert classify_order_error_policy(err).policy is Policy.IDEMPOTENT_SAFE


def test_explicit_code_argument():
    assert classify_order_error_policy(code=-2011).policy is Policy.IDEMPOTENT_SAFE


def test_parsers():
    assert parse_binance_code('binanceusdm {"code":-2011,"msg":"Unknown order sent."}') == -2011
    assert parse_binance_code('binanceusdm {"code":"-1003"}') == -1003
    assert parse_binance_code('binanceusdm {not json} "code": -2019') == -2019
    assert parse_binance_code("no code here") is None
    assert parse_http_status("binanceusdm 429 Too Many Requests {}") == 429
    assert parse_http_status("binanceusdm {}") is None
