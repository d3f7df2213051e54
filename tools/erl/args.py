"""Argument checks, pure: every bad value is refused (exit 2) before the bus or a service is touched."""

from __future__ import annotations

import argparse
import math
import re

from pydantic import ValidationError

from libs.common.messages import OPERATOR_REASON_MAX, Signal, check_operator_reason
from libs.venue.parsing import venue_symbol

SYMBOL = re.compile(r"^[A-Z0-9]+/[A-Z0-9]+(:[A-Z0-9]+)?$")


class UsageError(ValueError):
    """A bad argument; the message names it."""


def symbol(v: str) -> str:
    """A unified symbol such as BTC/USDT:USDT (the shape every bus message uses)."""
    if not SYMBOL.match(v):
        raise argparse.ArgumentTypeError(f"{v!r} is not a unified symbol like BTC/USDT:USDT")
    return v


def _number(v: str, what: str, *, zero_ok: bool, refused: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not {what}") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not zero_ok):
        raise argparse.ArgumentTypeError(f"{v!r} must be {refused}")
    return x


def positive(v: str) -> float:
    return _number(v, "a number", zero_ok=False, refused="a positive number")


def seconds(v: str) -> float:
    """A duration; 0 allowed (e.g. --wait 0: do not wait)."""
    return _number(v, "a number of seconds", zero_ok=True, refused="0 or more seconds")


def reason(v: str) -> str:
    """An operator reason: the risk service's rule (non-blank, printable, one line, 3..500 chars)."""
    try:
        check_operator_reason(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not 3 <= len(v) <= OPERATOR_REASON_MAX:
        raise argparse.ArgumentTypeError(f"reason must be 3 to {OPERATOR_REASON_MAX} characters")
    return v


def check_known(unified: str, markets: set[str]) -> None:
    """Refuse a symbol the venue does not list (``markets``: its exchangeInfo symbols)."""
    if venue_symbol(unified) not in markets:
        listed = ", ".join(sorted(markets)[:8]) + (" ..." if len(markets) > 8 else "")
        raise UsageError(f"unknown symbol {unified}: the venue lists {listed}")


def build_signal(a: argparse.Namespace, signal_id: str) -> Signal:
    """The signal these arguments describe; UsageError names every bad field."""
    try:
        return Signal(
            signal_id=signal_id,
            symbol=a.symbol,
            side=a.side,
            qty=a.qty,
            confidence=a.confidence,
            leverage=a.leverage,
            order_type=a.order_type,
            price=a.price,
            ref_price=a.ref_price,
            stop_loss_price=a.stop_loss_price,
            take_profit_price=a.take_profit_price,
            trailing_callback_rate=a.trailing_callback_rate,
            trailing_activation_price=a.trailing_activation_price,
            source="cli",
        )
    except ValidationError as e:
        raise UsageError(
            "invalid signal: "
            + "; ".join(f"{'.'.join(map(str, x['loc'])) or 'signal'}: {x['msg']}" for x in e.errors())
        ) from None
