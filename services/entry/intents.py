"""Signal -> entry intent. Pure: the same signal always yields the same intent, byte for byte.

The intent inherits the signal's timestamp, so a copy republished after the
bus dedup window is recognisably stale and the router refuses it instead of
placing a second entry. ``notional_usdt`` is what the entry service counted
(from the venue's mark, never the signal's ``ref_price``); it is informational:
the router computes the notional again from its own mark read.
"""

from __future__ import annotations

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderIntent, Signal


def entry_intent_from_signal(
    signal: Signal, *, default_leverage: int, notional_usdt: float | None = None
) -> OrderIntent:
    intent_id = make_intent_id("signal", signal.signal_id, Bucket.ENTRY)
    return OrderIntent(
        ts_ms=signal.ts_ms,
        intent_id=intent_id,
        correlation_id=make_correlation_id(intent_id),
        client_order_id=make_client_order_id(intent_id, Bucket.ENTRY),
        bucket=Bucket.ENTRY,
        symbol=signal.symbol,
        side=signal.side,
        order_type=signal.order_type,
        qty=signal.qty,
        price=signal.price if signal.order_type == "limit" else None,
        leverage=signal.leverage or default_leverage,
        notional_usdt=notional_usdt,
        signal_id=signal.signal_id,
        confidence=signal.confidence,
        source="entry",
    )
