"""What the real venue's ccxt client would raise, and a helper to catch what ours raises."""

from __future__ import annotations

import json
from typing import Any

import ccxt
import ccxt.async_support as ccxt_async

REAL = "https://fapi.binance.com/fapi/v1/order"


def expected_class(status: int, body: str) -> type[BaseException]:
    """What ccxt raises for this HTTP answer when it comes from the real venue's host."""
    ex = ccxt_async.binanceusdm()
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    try:
        ex.handle_errors(status, "x", REAL, "POST", {}, body, parsed, {}, "")
        ex.handle_http_status_code(status, "x", REAL, "POST", body)
    except ccxt.BaseError as e:
        return type(e)
    raise AssertionError(f"real-host ccxt raised nothing for {status} {body}")


async def raises(coro: Any) -> BaseException:
    try:
        await coro
    except ccxt.BaseError as e:
        return e
    raise AssertionError("no exception")
