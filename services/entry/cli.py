"""Publish a signal: python -m services.entry.cli --symbol BTC/USDT:USDT --side buy --qty 0.01

An alias of `erl signal` (tools/erl): the same arguments, the same checks, and it waits for entry's
decision and the order's outcome (--wait 0 to only publish). Caps (notional) are checked against the
venue's mark price, which the entry service and the router read themselves.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from libs.common.messages import Signal
from tools.erl.args import build_signal
from tools.erl.main import add_signal_arguments
from tools.erl.main import main as erl_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.entry.cli", description=__doc__)
    add_signal_arguments(p)
    return p.parse_args(argv)


def signal_from_args(a: argparse.Namespace) -> Signal:
    """The signal the CLI publishes for these arguments (raises tools.erl.args.UsageError)."""
    return build_signal(a, a.signal_id or uuid.uuid4().hex[:16])


def main(argv: list[str] | None = None) -> int:
    return erl_main(["signal", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
