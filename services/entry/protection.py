"""Stage-1 protection: the stop that goes on as soon as an entry fills. Pure.

Deterministic ids (derived from the entry intent) make a redelivered fill
produce the same stop intent, which the bus and the router dedupe.
"""

from __future__ import annotations

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderIntent, Side


def _exit_side(entry_side: Side) -> Side:
    return "sell" if entry_side == "buy" else "buy"


def default_stop_price(entry_side: Side, fill_price: float, pct: float) -> float:
    return fill_price * (1 - pct) if entry_side == "buy" else fill_price * (1 + pct)


def stage1_intents(
    *,
    entry_intent_id: str,
    entry_correlation_id: str,
    symbol: str,
    entry_side: Side,
    fill_price: float,
    stop_loss_price: float | None,
    take_profit_price: float | None,
    default_stop_pct: float,
) -> list[OrderIntent]:
    """A close-position stop (always) and a close-position take-profit (when the signal asked for one)."""
    out = []
    stop = stop_loss_price or default_stop_price(entry_side, fill_price, default_stop_pct)
    for bucket, order_type, price in (
        (Bucket.SL, "stop_market", stop),
        (Bucket.TP, "take_profit_market", take_profit_price),
    ):
        if price is None:
            continue
        intent_id = make_intent_id("stage1", entry_intent_id, bucket)
        out.append(
            OrderIntent(
                intent_id=intent_id,
                correlation_id=make_correlation_id(intent_id),
                client_order_id=make_client_order_id(intent_id, bucket),
                bucket=bucket,
                symbol=symbol,
                side=_exit_side(entry_side),
                order_type=order_type,
                stop_price=price,
                close_position=True,
                parent_correlation_id=entry_correlation_id,
                source="entry.stage1",
            )
        )
    return out
