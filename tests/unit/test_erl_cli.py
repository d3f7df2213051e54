"""`erl`: arguments refused before anything is touched (exit 2, the argument named), and what it prints."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import GuardKnobs, OrderTransition, SignalDecision
from libs.common.replay import JournalEntry
from libs.common.state_machine import OrderState
from tools.erl import args, fmt
from tools.erl.main import build_parser, main
from tools.erl.trade import entry_ids

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_script_is_erl() -> None:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["scripts"]["erl"] == "tools.erl.main:main"


@pytest.mark.parametrize(
    "argv, named",
    [
        (["close", "BTCUSDT"], "unified symbol"),
        (["close", "BTC/USDT:USDT", "--qty", "-1"], "positive"),
        (["close", "BTC/USDT:USDT", "--qty", "nan"], "positive"),
        (["signal", "--symbol", "BTC/USDT:USDT", "--side", "long", "--qty", "1"], "--side"),
        (["signal", "--symbol", "BTC/USDT:USDT", "--side", "buy", "--qty", "1", "--wait", "-1"], "--wait"),
        (["halt", "   "], "blank"),
        (["halt", "bad\x07bell"], "printable"),
        (["resume", "x" * 501], "500"),
        (["orders", "--symbol", "btc"], "unified symbol"),
        (["replay"], "KEY"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(argv: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err


def test_a_bad_signal_names_every_bad_field_before_the_bus(capsys, monkeypatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")  # never reached: refused first
    rc = main(["signal", "--symbol", "BTCUSDT", "--side", "buy", "--qty", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "invalid signal" in err and "qty" in err and "symbol" in err


def test_every_subcommand_has_help(capsys) -> None:
    for cmd in ("signal", "close", "status", "orders", "halt", "resume", "replay", "tail"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: erl " + cmd in capsys.readouterr().out


def test_unknown_symbols_are_refused_against_the_venue_list() -> None:
    args.check_known("BTC/USDT:USDT", {"BTCUSDT", "ETHUSDT"})
    with pytest.raises(args.UsageError, match="unknown symbol DOGE/USDT:USDT"):
        args.check_known("DOGE/USDT:USDT", {"BTCUSDT", "ETHUSDT"})


def test_reason_rule_matches_the_risk_service() -> None:
    assert args.reason("maintenance") == "maintenance"
    for bad in ("", "  ", "ab", "a\nb", "tab\there"):
        with pytest.raises(argparse.ArgumentTypeError):
            args.reason(bad)


def test_signal_ids_are_the_ones_entry_derives() -> None:
    intent_id = make_intent_id("signal", "s-1", Bucket.ENTRY)
    assert entry_ids("s-1") == (make_correlation_id(intent_id), make_client_order_id(intent_id, Bucket.ENTRY))


def test_decision_and_order_lines() -> None:
    refused = SignalDecision(
        signal_id="s1", symbol="BTC/USDT:USDT", accepted=False, reason="cooldown", guard_mode="normal"
    )
    assert fmt.decision_line(refused) == "decision  REFUSED: cooldown (guard normal)"
    ok = SignalDecision(
        signal_id="s1", symbol="BTC/USDT:USDT", accepted=True, correlation_id="cabc", guard_mode="normal"
    )
    assert fmt.decision_line(ok) == "decision  accepted (guard normal): intent cabc"
    t = OrderTransition(
        correlation_id="cabc",
        intent_id="iabc",
        client_order_id="ENTRYabc",
        symbol="BTC/USDT:USDT",
        bucket=Bucket.ENTRY,
        from_state=OrderState.SUBMITTING,
        to_state=OrderState.FILLED,
        reason="venue_ack",
        filled_qty=0.01,
        avg_price=50010.0,
    )
    assert fmt.transition_line(t) == "order     FILLED (venue_ack) filled 0.01 @ 50010"
    assert fmt.settled_enough(OrderState.ACKED) and not fmt.settled_enough(OrderState.SUBMITTING)
    assert fmt.severity(t) == "ok"


def test_status_screen_shows_guard_trips_positions_stops_gaps_and_services() -> None:
    guard = {
        "knobs": {
            "mode": "halted",
            "allow_entries": False,
            "reason": "operator halt",
            "manual_reason": "maint",
        },
        "manual_halt": True,
        "kill_switch": {"tripped": True, "reasons": ["stale_data"], "trips": {"stale_data": 1}},
    }
    recon = {
        "ready": True,
        "ready_reason": "ready",
        "uptime_sec": 3,
        "positions": {
            "BTC/USDT:USDT": {
                "qty": 0.01,
                "entry_price": 50010,
                "mark_price": 50000,
                "stops": [49009.8],
                "gap_sec": None,
            },
            "ETH/USDT:USDT": {
                "qty": -1,
                "entry_price": 3000,
                "mark_price": 3000,
                "stops": [],
                "gap_sec": 4.2,
            },
        },
        "open_orders": [{"symbol": "BTC/USDT:USDT"}],
    }
    lines = fmt.status_screen(guard, {"reconciler": recon, "router": "http://x: Connection refused"}, recon)
    text = "\n".join(lines)
    assert "guard     halted  ENTRIES BLOCKED  (operator halt)" in text
    assert "operator halt: maint" in text and "TRIPPED: stale_data" in text
    assert "stop 49009.8" in text and "stop NONE  GAP open 4s" in text
    assert "orders    1 open" in text
    assert "router        DOWN" in text and "reconciler    ready" in text


def test_orders_table_names_the_bucket() -> None:
    coid = make_client_order_id(make_intent_id("x", "y", Bucket.SL), Bucket.SL)
    rows = fmt.orders_table(
        [
            {
                "symbol": "BTC/USDT:USDT",
                "client_order_id": coid,
                "type": "stop_market",
                "side": "sell",
                "qty": None,
                "trigger_price": 49000.0,
                "reduce_only": False,
                "close_position": True,
            }
        ]
    )
    assert " SL " in rows[1] and "all" in rows[1] and "49000" in rows[1] and "close-position" in rows[1]
    assert fmt.orders_table([]) == ["no open orders"]


def test_tail_lines_filters_and_colour() -> None:
    knobs = JournalEntry(
        7, "erl.risk.guard.all", GuardKnobs(mode="halted", allow_entries=False, reason="operator halt")
    )
    line = fmt.journal_line(knobs)
    assert "#7" in line and "halted ENTRIES BLOCKED" in line
    assert fmt.paint(line, fmt.severity(knobs.msg), True).startswith("\033[33m")
    assert fmt.paint(line, "warn", False) == line
    dec = JournalEntry(
        8,
        "erl.entry.decision.s1",
        SignalDecision(signal_id="s1", symbol="ETH/USDT:USDT", accepted=False, reason="cooldown"),
    )
    assert fmt.matches(dec, "erl", "ETH/USDT:USDT", None, False)
    assert not fmt.matches(dec, "erl", "BTC/USDT:USDT", None, False)
    assert fmt.matches(dec, "erl", None, "entry", False) and not fmt.matches(
        dec, "erl", None, "order.transition", False
    )
