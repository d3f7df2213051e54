import json

import ccxt
import ccxt.async_support as ccxt_async
import pytest

from libs.venue.error_policy import (
    Modification,
    Policy,
    classify_order_error_policy,
    parse_binance_code,
    parse_http_status,
)

FAPI = "https://fapi.binance.com/fapi/v1/order"
RM = Policy.RETRYABLE_WITH_MODIFICATION


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
    # venue load: retryable, refused before handling (not ambiguous)
    (-1008, Policy.RETRYABLE, "venue_overloaded", False, None),
    (-1015, Policy.RETRYABLE, "order_rate_limited", False, None),
    (-4131, Policy.RETRYABLE, "price_protection_rejected", False, None),
    # the position is not what the order assumed: re-read it, resize or end MOOT
    (-4118, RM, "reduce_only_check_failed", False, Modification.RESIZE_REDUCE_ONLY),
    (-4129, RM, "no_position_for_close_order", False, Modification.RESIZE_REDUCE_ONLY),
    (-4509, RM, "no_position_for_close_order", False, Modification.RESIZE_REDUCE_ONLY),
    # malformed or refused for itself: resending the same request cannot help
    (-1100, Policy.FATAL, "illegal_characters", False, None),
    (-1102, Policy.FATAL, "mandatory_parameter_missing", False, None),
    (-1106, Policy.FATAL, "parameter_not_required", False, None),
    (-1111, Policy.FATAL, "precision_over_maximum", False, None),
    (-1116, Policy.FATAL, "invalid_order_type", False, None),
    (-1121, Policy.FATAL, "invalid_symbol", False, None),
    (-4003, Policy.FATAL, "quantity_not_positive", False, None),
    (-4014, Policy.FATAL, "price_not_tick_multiple", False, None),
    (-4016, Policy.FATAL, "limit_price_outside_band", False, None),
    (-4024, Policy.FATAL, "limit_price_outside_band", False, None),
    (-1131, Policy.FATAL, "recv_window_too_large", False, None),
    (-4028, Policy.FATAL, "invalid_leverage", False, None),
    (-4120, Policy.FATAL, "use_algo_order_endpoint", False, None),
    (-4137, Policy.FATAL, "close_position_with_quantity", False, None),
    (-5000, Policy.FATAL, "invalid_path", False, None),
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


BAN_MSG = "Way too many requests; IP(127.0.0.1) banned until 1700000123456. Please use the websocket."


@pytest.mark.parametrize("status", [418, 429, 400])
def test_ip_ban_is_its_own_decision_whatever_the_status(status):
    # the body's -1003 alone would read as a plain rate limit: the ban is in the text
    err = raised_by_ccxt(status, {"code": -1003, "msg": BAN_MSG})
    d = classify_order_error_policy(err)
    assert (d.policy, d.reason, d.code, d.ambiguous, d.venue_pause) == (
        Policy.RETRYABLE,
        "ip_banned",
        -1003,
        False,
        True,
    )


def test_rate_limit_429_is_a_venue_pause_not_a_ban():
    err = raised_by_ccxt(
        429, {"code": -1003, "msg": "Too many requests; current limit of IP(1.2.3.4) is 2400."}
    )
    d = classify_order_error_policy(err)
    assert (d.reason, d.venue_pause) == ("rate_limited", True)
    assert not classify_order_error_policy(code=-1008).venue_pause  # overloaded: an attempt like any other


def test_order_count_429_is_a_venue_pause_that_spends_the_order_budget():
    # what the venue answers past its order limit: refused, never placed (not ambiguous)
    err = raised_by_ccxt(
        429, {"code": -1015, "msg": "Too many new orders; current limit is 300 orders per 10 SECOND."}
    )
    d = classify_order_error_policy(err)
    assert (d.reason, d.code, d.ambiguous, d.venue_pause, d.order_budget_spent) == (
        "order_rate_limited",
        -1015,
        False,
        True,
        True,
    )
    assert not classify_order_error_policy(code=-1003).order_budget_spent  # the IP's weight: not orders


@pytest.mark.parametrize(
    "text,code",
    [
        ("ReduceOnly Order Failed. Please check your existing position and open orders.", -4118),
        ("Reduce only check failed.", -4118),
        ("TIF GTE can only be used with open positions or open orders.", -4509),
        ("The counterparty's best price does not meet the PERCENT_PRICE filter limit.", -4131),
        ("Limit price can't be higher than 51234.5.", -4016),
        ("Limit price can't be lower than 48000.", -4016),
        ("Quantity must be zero with closePosition equals true.", -4137),
        ("Precision is over the maximum defined for this asset.", -1111),
        ("Price not increased by tick size.", -4014),
        ("Illegal characters found in parameter 'newClientOrderId'.", -1100),
        ("Parameter 'reduceOnly' sent when not required.", -1106),
        ("Too many new orders; current limit is 300 orders per 10 SECOND.", -1015),
        ("Server is currently overloaded with other requests.", -1008),
    ],
)
def test_messages_without_a_code_still_map(text, code):
    d = classify_order_error_policy(ccxt.ExchangeError(f'binanceusdm {{"msg":"{text}"}}'))
    assert d.code == code and d.reason == classify_order_error_policy(code=code).reason


def test_ban_text_without_a_code():
    d = classify_order_error_policy(ccxt.DDoSProtection(f"binanceusdm {BAN_MSG}"))
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
