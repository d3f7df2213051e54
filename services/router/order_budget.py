"""Entries get only a share of the venue's order budget, so protection always has headroom. Pure.

The venue caps orders per account (Binance USD-M: per 10 s and per minute, exchangeInfo ``rateLimits``
ORDERS) and refuses more with 429 -1015, whatever the order: a stop sent into a budget spent on entries is
refused like any other. So an entry may go out only while the account's counts, with it, stay within
``share`` of every limit; stops, take-profits, exits, repairs and replacements are never held here (they
use what entries leave, up to the full limit).
"""

from __future__ import annotations

import math

from libs.venue.limits import ORDER_WINDOWS_SEC, OrderLimits

REASON = "order_budget"


def _window(window_sec: float) -> str:
    return f"{window_sec:g}s" if window_sec < 60 else f"{window_sec / 60:g}min"


def entry_budget_refusal(limits: OrderLimits, counts: tuple[int, int], share: float) -> str:
    """Why an entry may not be sent now ("" when it may): sending it would take the account's order count
    past ``share`` of a limit. ``counts``: the orders already counted per 10 s and per minute."""
    for window_sec, count in zip(ORDER_WINDOWS_SEC, counts, strict=True):
        limit = limits.limit(window_sec)
        allowed = math.floor(share * limit)
        if count + 1 > allowed:
            return (
                f"{REASON}: {count + 1}/{limit} per {_window(window_sec)}, entries may use {share * 100:g}%"
            )
    return ""
