"""The `erl` console script: argument parsing and dispatch; the acts live in trade, ops and journal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from libs.common.config import ConfigError
from tools.erl import args as check
from tools.erl import journal, ops, trade
from tools.erl.endpoints import Endpoints, HttpError, Unreachable

EPILOG = """exit codes: 0 done; 1 bus, service or venue unreachable (or nothing found); 2 bad arguments;
3 refused (entry, router or venue); 4 no answer within --wait.
Where: NATS_URL / NATS_USER / NATS_PASSWORD / NATS_STREAM, ROUTER_HTTP_PORT, RECONCILE_HTTP_PORT,
RISK_HTTP_PORT, ENTRY_HTTP_PORT, VENUE_STREAM_HTTP_PORT, EXCHANGE_API_URL (as the services read them)."""


class Parser(argparse.ArgumentParser):
    """argparse that prints the usage problem and exits 2 (its default), naming the argument."""


def add_signal_arguments(p: argparse.ArgumentParser) -> None:
    """The signal's fields (also `python -m services.entry.cli`)."""
    p.add_argument("--symbol", required=True, help="unified symbol, e.g. BTC/USDT:USDT")
    p.add_argument("--side", required=True, choices=["buy", "sell"])
    p.add_argument("--qty", required=True, type=float, help="contracts (base units), > 0")
    p.add_argument("--confidence", type=float, default=1.0, help="0..1 (the guard has a floor)")
    p.add_argument("--leverage", type=int)
    p.add_argument("--type", dest="order_type", choices=["market", "limit"], default="market")
    p.add_argument("--price", type=float, help="limit price (caps count a limit at max(limit, venue mark))")
    p.add_argument("--ref-price", type=float, help="informational only: caps use the venue's mark price")
    p.add_argument("--stop-loss", type=float, dest="stop_loss_price", help="stage-1 stop price")
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
    p.add_argument("--signal-id", help="idempotency key (default: random); `erl replay` finds it")


def wait_argument(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument(
        "--wait",
        type=check.seconds,
        default=default,
        help=f"seconds to wait for the outcome (default {default:g}; 0 = publish and return)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="erl",
        description=__doc__ and "One command for every operator act.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "signal",
        help="publish an entry signal and print what became of it",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_signal_arguments(s)
    wait_argument(s, 5.0)

    c = sub.add_parser(
        "close",
        help="close a position: a reduce-only market EXIT",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("symbol", type=check.symbol, help="unified symbol, e.g. BTC/USDT:USDT")
    c.add_argument("--qty", type=check.positive, help="close only this much (default: the whole position)")
    c.add_argument("--close-id", help="idempotency key (default: random): the same key is the same exit")
    wait_argument(c, 15.0)

    sub.add_parser("status", help="guard, kill switch, positions with stops and gaps, services")
    o = sub.add_parser("orders", help="open orders at the venue (the reconciler's last read)")
    o.add_argument("--symbol", type=check.symbol)

    for name, what in (
        ("halt", "halt new entries (exits and stop repairs keep flowing)"),
        ("resume", "lift an operator halt and latched trips"),
    ):
        h = sub.add_parser(
            name,
            help=what,
            description=f"{what}. Token: RISK_ADMIN_TOKEN, else .run/admin-token (ERL_RUN_DIR).",
        )
        h.add_argument(
            "reason", type=check.reason, help="why (journaled): 3-500 printable characters, one line"
        )

    r = sub.add_parser(
        "replay", help="one intent's lifecycle by signal id, correlation id or client order id"
    )
    r.add_argument("key", nargs="?", help="signal id, correlation id or client order id")
    r.add_argument("--summary", action="store_true", help="counts of every intent instead")
    r.add_argument("--json", action="store_true")

    t = sub.add_parser("tail", help="the live journal, one readable line per event")
    t.add_argument("--symbol", type=check.symbol, help="only events about this symbol")
    t.add_argument("--subject", help="only subjects containing this, e.g. order.transition, entry, risk")
    t.add_argument("--since", type=check.positive, metavar="MINUTES", help="start this many minutes back")
    t.add_argument("--all", action="store_true", help="include the reconciler's and the stream's heartbeats")
    t.add_argument("--count", type=int, help="stop after this many lines")
    t.add_argument(
        "--for", dest="duration", type=check.seconds, metavar="SECONDS", help="stop after this long"
    )
    t.add_argument("--no-colour", action="store_true", help="plain text even on a terminal")

    k = sub.add_parser(
        "soak", help="the seeded fault soak (python -m tools.soak), arguments passed on", add_help=False
    )
    k.add_argument("soak_args", nargs=argparse.REMAINDER)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, Endpoints], Any]] = {
    "signal": trade.cmd_signal,
    "close": trade.cmd_close,
    "status": ops.cmd_status,
    "orders": ops.cmd_orders,
    "halt": ops.cmd_halt,
    "resume": ops.cmd_resume,
    "replay": journal.cmd_replay,
    "tail": journal.cmd_tail,
}


def main(argv: list[str] | None = None) -> int:
    # the bus client's own warnings (a refused connection) would print as bare lines: the CLI says it once
    logging.getLogger().addHandler(logging.NullHandler())
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:  # every argument (--help included) is the soak's own
        from tools import soak

        return soak.main(argv[1:])
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.cmd == "replay" and not a.summary and not a.key:
        parser.error("replay needs a KEY (signal id, correlation id or client order id) or --summary")
    try:
        ep = Endpoints.from_env()
        result = COMMANDS[a.cmd](a, ep)
        return int(asyncio.run(result) if asyncio.iscoroutine(result) else result)
    except check.UsageError as e:
        print(f"erl {a.cmd}: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"erl {a.cmd}: {e}", file=sys.stderr)
        return 2
    except Unreachable as e:
        print(f"erl {a.cmd}: unreachable: {e}", file=sys.stderr)
        return 1
    except HttpError as e:
        print(f"erl {a.cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
