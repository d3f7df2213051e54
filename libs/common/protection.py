"""Protective order intents (stop-loss, take-profit, trailing stop, market exit), built in one place. Pure.

The entry service's stage-1 protection and the reconciler's repairs both build
their orders here, so a stop means the same order whoever asks for it:

- stop-loss: a close-position ``STOP_MARKET`` on the closing side (closes the
  whole position whatever its size; one per direction on Binance, -4130);
- take-profit: a close-position ``TAKE_PROFIT_MARKET`` on the closing side;
- trailing stop: a reduce-only ``TRAILING_STOP_MARKET`` with a size (Binance
  refuses close-position trailing stops, -4136), a callback rate in percent and
  an optional activation price;
- market exit: a reduce-only market order for the whole position (the
  reconciler's emergency exit).

Ids are derived from ``(id_scope, key)``: the same request (a redelivered fill)
is the same order, which the bus and the router dedupe. ``source`` only says who
asked, in the intent.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderIntent, OrderType, Side


def exit_side(position_side: Side) -> Side:
    """The side that closes a position opened by ``position_side`` orders (long: sell)."""
    return "sell" if position_side == "buy" else "buy"


def position_side(position_qty: float) -> Side:
    """The side that opened a signed position (long > 0: buy)."""
    return "buy" if position_qty > 0 else "sell"


def on_protective_side(position_side: Side, stop_price: float, ref_price: float) -> bool:
    """Whether a stop at ``stop_price`` is still below (long) / above (short) ``ref_price``."""
    return stop_price < ref_price if position_side == "buy" else stop_price > ref_price


def default_stop_price(position_side: Side, ref_price: float, pct: float) -> float:
    """``pct`` away from ``ref_price`` on the losing side of a position opened by ``position_side``."""
    return ref_price * (1 - pct) if position_side == "buy" else ref_price * (1 + pct)


class _Ids(TypedDict):
    intent_id: str
    correlation_id: str
    client_order_id: str


class _Stamp(TypedDict):
    ts_ms: NotRequired[int]  # absent: the intent is stamped now


class _Stage1Common(TypedDict):
    symbol: str
    position_side: Side
    source: str
    id_scope: str
    key: str
    parent_correlation_id: str | None


def _ids(id_scope: str, key: str, bucket: Bucket) -> _Ids:
    intent_id = make_intent_id(id_scope, key, bucket)
    return {
        "intent_id": intent_id,
        "correlation_id": make_correlation_id(intent_id),
        "client_order_id": make_client_order_id(intent_id, bucket),
    }


def _stamp(ts_ms: int | None) -> _Stamp:
    return {} if ts_ms is None else {"ts_ms": ts_ms}


def _close_position_trigger(
    bucket: Bucket,
    order_type: OrderType,
    *,
    symbol: str,
    position_side: Side,
    trigger: float,
    source: str,
    id_scope: str,
    key: str,
    parent_correlation_id: str | None,
    ts_ms: int | None,
) -> OrderIntent:
    return OrderIntent(
        **_ids(id_scope, key, bucket),
        **_stamp(ts_ms),
        bucket=bucket,
        symbol=symbol,
        side=exit_side(position_side),
        order_type=order_type,
        stop_price=trigger,
        close_position=True,
        parent_correlation_id=parent_correlation_id,
        source=source,
    )


def stop_loss(
    *,
    symbol: str,
    position_side: Side,
    stop_price: float,
    source: str,
    id_scope: str,
    key: str,
    parent_correlation_id: str | None = None,
    ts_ms: int | None = None,
) -> OrderIntent:
    """A close-position stop for the position opened by ``position_side``."""
    return _close_position_trigger(
        Bucket.SL,
        "stop_market",
        symbol=symbol,
        position_side=position_side,
        trigger=stop_price,
        source=source,
        id_scope=id_scope,
        key=key,
        parent_correlation_id=parent_correlation_id,
        ts_ms=ts_ms,
    )


def take_profit(
    *,
    symbol: str,
    position_side: Side,
    price: float,
    source: str,
    id_scope: str,
    key: str,
    parent_correlation_id: str | None = None,
    ts_ms: int | None = None,
) -> OrderIntent:
    """A close-position take-profit for the position opened by ``position_side``."""
    return _close_position_trigger(
        Bucket.TP,
        "take_profit_market",
        symbol=symbol,
        position_side=position_side,
        trigger=price,
        source=source,
        id_scope=id_scope,
        key=key,
        parent_correlation_id=parent_correlation_id,
        ts_ms=ts_ms,
    )


def trailing_activation(
    position_side: Side, activation_price: float | None, ref_price: float
) -> float | None:
    """The activation price to send, or None (track from the start).

    Binance refuses a trailing stop whose activation is already reached (-2021: a sell trailing stop
    needs its activation above the market, a buy one below), and a crossed stop is what the router
    turns into a market exit. An activation on the wrong side of ``ref_price`` is dropped instead:
    the stop then tracks from the moment it is placed.
    """
    if activation_price is None or not ref_price:
        return activation_price
    beyond = activation_price > ref_price if position_side == "buy" else activation_price < ref_price
    return activation_price if beyond else None


def trailing_stop(
    *,
    symbol: str,
    position_side: Side,
    qty: float,
    callback_rate: float,
    activation_price: float | None,
    ref_price: float,
    source: str,
    id_scope: str,
    key: str,
    parent_correlation_id: str | None = None,
    ts_ms: int | None = None,
) -> OrderIntent:
    """A reduce-only trailing stop of ``qty``: once price has reached ``activation_price`` (at once
    without one), it closes when price retraces ``callback_rate`` percent from the best price since."""
    return OrderIntent(
        **_ids(f"{id_scope}.trailing", key, Bucket.SL),
        **_stamp(ts_ms),
        bucket=Bucket.SL,
        symbol=symbol,
        side=exit_side(position_side),
        order_type="trailing_stop_market",
        qty=qty,
        callback_rate=callback_rate,
        activation_price=trailing_activation(position_side, activation_price, ref_price),
        reduce_only=True,
        parent_correlation_id=parent_correlation_id,
        source=source,
    )


def market_exit(
    *,
    symbol: str,
    position_qty: float,
    source: str,
    id_scope: str,
    key: str,
    ts_ms: int | None = None,
) -> OrderIntent:
    """Close the whole signed position ``position_qty`` at market, reduce-only (never opens or flips)."""
    return OrderIntent(
        **_ids(id_scope, key, Bucket.EXIT),
        **_stamp(ts_ms),
        bucket=Bucket.EXIT,
        symbol=symbol,
        side=exit_side(position_side(position_qty)),
        order_type="market",
        qty=abs(position_qty),
        reduce_only=True,
        source=source,
    )


def stage1_intents(
    *,
    entry_intent_id: str,
    entry_correlation_id: str,
    symbol: str,
    entry_side: Side,
    fill_price: float,
    qty: float | None,
    stop_loss_price: float | None,
    take_profit_price: float | None,
    default_stop_pct: float,
    trailing_callback_rate: float | None = None,
    trailing_activation_price: float | None = None,
) -> list[OrderIntent]:
    """Stage-1 protection for a fresh fill: a close-position stop (always, first), a close-position
    take-profit and a trailing stop of ``qty`` (when the signal asked for them)."""
    common: _Stage1Common = {
        "symbol": symbol,
        "position_side": entry_side,
        "source": "entry.stage1",
        # the ids stage-1 always had: a fill redelivered across an upgrade must not get a second stop
        "id_scope": "stage1",
        "key": entry_intent_id,
        "parent_correlation_id": entry_correlation_id,
    }
    stop = stop_loss_price or default_stop_price(entry_side, fill_price, default_stop_pct)
    out = [stop_loss(**common, stop_price=stop)]
    if take_profit_price is not None:
        out.append(take_profit(**common, price=take_profit_price))
    if trailing_callback_rate is not None and qty:
        out.append(
            trailing_stop(
                **common,
                qty=qty,
                callback_rate=trailing_callback_rate,
                activation_price=trailing_activation_price,
                ref_price=fill_price,
            )
        )
    return out
