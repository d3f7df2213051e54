"""Publish a signal: python -m services.entry.cli --symbol BTC/USDT:USDT --side buy --qty 0.01

Caps (notional) are checked against the venue's mark price, which the entry
service and the router read themselves; no price given here lowers what an
entry counts (a limit counts at max(limit, mark))."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from pydantic import ValidationError

from libs.common.bus import BusUnavailable, Publisher, connect_nats
from libs.common.config import NatsSettings, load
from libs.common.messages import Signal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m services.entry.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--symbol", required=True, help="unified symbol, e.g. BTC/USDT:USDT")
    p.add_argument("--side", required=True, choices=["buy", "sell"])
    p.add_argument("--qty", required=True, type=float)
    p.add_argument("--confidence", type=float, default=1.0)
    p.add_argument("--leverage", type=int)
    p.add_argument("--type", dest="order_type", choices=["market", "limit"], default="market")
    p.add_argument("--price", type=float, help="limit price (caps count a limit at max(limit, venue mark))")
    p.add_argument(
        "--ref-price",
        type=float,
        help="informational only (journaled with the signal): caps use the venue's mark price",
    )
    p.add_argument("--stop-loss", type=float, dest="stop_loss_price")
    p.add_argument("--take-profit", type=float, dest="take_profit_price")
    p.add_argument(
        "--trailing-callback",
        type=float,
        dest="trailing_callback_rate",
        help="stage-1 trailing stop: retrace in percent from the best price (0.1-10, 1 = 1%%)",
    )
    p.add_argument(
        "--trailing-activation",
        type=float,
        dest="trailing_activation_price",
        help="the trailing stop starts tracking once price reaches this (default: at once)",
    )
    p.add_argument("--signal-id", help="idempotency key (default: random)")
    return p.parse_args(argv)


async def publish_signal(settings: NatsSettings, signal: Signal) -> int:
    nc = await connect_nats(settings, "signal-cli", fail_fast=True)
    try:
        ack = await Publisher(nc.jetstream(), settings, "signal-cli").publish(
            signal, f"signal.{signal.signal_id}"
        )
        return ack.seq
    finally:
        await nc.close()


def signal_from_args(a: argparse.Namespace) -> Signal:
    """The signal the CLI publishes for these arguments (raises ValidationError)."""
    return Signal(
        signal_id=a.signal_id or uuid.uuid4().hex,
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


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        signal = signal_from_args(a)
    except ValidationError as e:
        for err in e.errors():
            print(f"invalid signal: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    settings = load(NatsSettings)
    try:
        seq = asyncio.run(publish_signal(settings, signal))
    except (BusUnavailable, OSError, Exception) as e:
        print(f"could not publish to {settings.url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"signal {signal.signal_id} stored at journal seq {seq}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
