"""Everything `erl` prints, pure: decisions, the status screen, order tables, journal lines, colours."""

from __future__ import annotations

import datetime as dt
from typing import Any

from libs.common.ids import bucket_of_client_order_id
from libs.common.messages import (
    BusMessage,
    DeadLetter,
    GuardKnobs,
    HaltCommand,
    KillSwitchEvent,
    MismatchEvent,
    OrderTransition,
    ProtectionGap,
    RebuildSummary,
    ReconcileSummary,
    RepairAction,
    Signal,
    SignalDecision,
    Stage1GapAssertion,
    VenueBan,
    VenueOrderFact,
    VenueStreamStatus,
)
from libs.common.replay import JournalEntry, describe
from libs.common.state_machine import OrderState

COLOURS = {"error": "\033[31m", "warn": "\033[33m", "ok": "\033[32m", "info": ""}
RESET = "\033[0m"
BAD_STATES = frozenset({OrderState.REJECTED, OrderState.FAILED, OrderState.BLOCKED, OrderState.UNKNOWN})


def paint(text: str, severity: str, colour: bool) -> str:
    code = COLOURS.get(severity, "")
    return f"{code}{text}{RESET}" if colour and code else text


# ----------------------------------------------------------------------------- signal / close


def decision_line(d: SignalDecision) -> str:
    if d.accepted:
        return f"decision  accepted (guard {d.guard_mode or '-'}): intent {d.correlation_id}"
    return f"decision  REFUSED: {d.reason} (guard {d.guard_mode or '-'})"


def transition_line(t: OrderTransition) -> str:
    parts = [f"order     {t.to_state.value}", f"({t.reason})" if t.reason else ""]
    if t.filled_qty:
        parts.append(f"filled {t.filled_qty:g}" + (f" @ {t.avg_price:g}" if t.avg_price else ""))
    if t.error_class:
        parts.append(f"[{t.error_class} {t.code if t.code is not None else ''}]".replace(" ]", "]"))
    return " ".join(p for p in parts if p)


def settled_enough(state: OrderState) -> bool:
    """Where `erl signal` / `erl close` stop waiting: a final state, or resting at the venue."""
    return state in (
        OrderState.FILLED,
        OrderState.CANCELED,
        OrderState.EXPIRED,
        OrderState.ACKED,
        *BAD_STATES - {OrderState.UNKNOWN},
    )


# ----------------------------------------------------------------------------- status / orders


def _age(sec: float | None) -> str:
    return "-" if sec is None else f"{sec:.0f}s"


def status_screen(guard: dict | None, services: dict[str, dict | str], reconciler: dict | None) -> list[str]:
    """One screen: guard mode and why, kill-switch trips, positions with stops and gaps, open orders,
    every service's readiness. ``services``: name -> its /status, or the error text when unreachable."""
    out: list[str] = []
    knobs = (guard or {}).get("knobs") or {}
    if guard is None:
        out.append("guard     UNKNOWN (risk unreachable)")
    else:
        entries = "entries allowed" if knobs.get("allow_entries") else "ENTRIES BLOCKED"
        why = knobs.get("reason") or ""
        out.append(f"guard     {knobs.get('mode', '?')}  {entries}" + (f"  ({why})" if why else ""))
        manual = knobs.get("manual_reason") or "-"
        if guard.get("manual_halt") and manual not in why:
            out.append(f"          operator halt: {manual}")
        ks = guard.get("kill_switch") or {}
        trips = ks.get("trips") or {}
        reasons = ks.get("reasons") or []
        out.append(
            f"kill      {'TRIPPED: ' + ', '.join(reasons) if ks.get('tripped') else 'not tripped'}"
            + (
                f"  (trips so far: {', '.join(f'{k} {v}' for k, v in sorted(trips.items()))})"
                if trips
                else ""
            )
        )
    out.append("positions")
    positions = (reconciler or {}).get("positions")
    if reconciler is None:
        out.append("  (reconciler unreachable)")
    elif not positions:
        out.append("  none")
    else:
        for sym, p in positions.items():
            stops = ", ".join(f"{s:g}" for s in p.get("stops") or []) or "NONE"
            gap = p.get("gap_sec")
            out.append(
                f"  {sym:<16} {p['qty']:>+12g}  entry {p.get('entry_price') or 0:g}  mark {p.get('mark_price') or 0:g}"
                f"  stop {stops}" + (f"  GAP open {_age(gap)}" if gap is not None else "")
            )
    orders = (reconciler or {}).get("open_orders") or []
    out.append(f"orders    {len(orders)} open" + ("  (erl orders lists them)" if orders else ""))
    out.append("services")
    for name, s in services.items():
        if isinstance(s, str):
            out.append(f"  {name:<13} DOWN      {s}")
        else:
            ready = "ready" if s.get("ready") else "NOT READY"
            out.append(f"  {name:<13} {ready:<9} {s.get('ready_reason', '')}  up {s.get('uptime_sec', '?')}s")
    return out


def orders_table(orders: list[dict]) -> list[str]:
    if not orders:
        return ["no open orders"]
    rows = [
        f"{'SYMBOL':<16} {'CLIENT ID':<33} {'KIND':<6} {'TYPE':<22} {'SIDE':<5} {'QTY':>10} {'TRIGGER':>10}  FLAGS"
    ]
    for o in sorted(orders, key=lambda o: (o["symbol"], o["client_order_id"])):
        bucket = bucket_of_client_order_id(o["client_order_id"])
        flags = ",".join(
            f
            for f, on in (("reduce-only", o.get("reduce_only")), ("close-position", o.get("close_position")))
            if on
        )
        qty = "all" if o.get("close_position") and not o.get("qty") else f"{o.get('qty') or 0:g}"
        trig = f"{o['trigger_price']:g}" if o.get("trigger_price") else "-"
        rows.append(
            f"{o['symbol']:<16} {o['client_order_id']:<33} {bucket.value if bucket else 'other':<6} "
            f"{o.get('type', ''):<22} {o.get('side', ''):<5} {qty:>10} {trig:>10}  {flags}"
        )
    return rows


# ----------------------------------------------------------------------------- tail


def severity(m: BusMessage) -> str:
    if isinstance(m, DeadLetter | VenueBan):
        return "error"
    if isinstance(m, KillSwitchEvent):
        return "error" if m.newly_tripped else "ok"
    if isinstance(m, OrderTransition):
        if m.to_state in BAD_STATES:
            return "error"
        return "ok" if m.to_state is OrderState.FILLED else "info"
    if isinstance(m, ProtectionGap):
        return "error" if m.state == "breached" else "warn" if m.state == "opened" else "ok"
    if isinstance(m, SignalDecision):
        return "info" if m.accepted else "warn"
    if isinstance(m, Stage1GapAssertion | MismatchEvent | RepairAction | HaltCommand):
        return "warn"
    if isinstance(m, GuardKnobs):
        return "info" if m.allow_entries else "warn"
    if getattr(m, "kind", "") == "order.retry":
        return "warn"
    return "info"


def _symbol(m: BusMessage) -> str | None:
    s = getattr(m, "symbol", None)
    if s is None and hasattr(m, "new_order"):
        s = m.new_order.symbol
    return s


KIND_WIDTH = 28  # as replay's describe() pads it: tail and replay lines line up


def _fields(m: BusMessage, *skip: str) -> str:
    """The rest of a message as key=value, for kinds without a line of their own (never raw JSON)."""
    data = m.model_dump(mode="json", exclude={"v", "ts_ms", "kind", *skip}, exclude_none=True)
    return " ".join(f"{k}={v}" for k, v in data.items() if v not in ("", [], {}))


def journal_line(e: JournalEntry) -> str:
    """One readable line per journal event (intents and order events as replay prints them)."""
    m = e.msg
    ts = dt.datetime.fromtimestamp(m.ts_ms / 1000, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    head = f"{ts} {('#' + str(e.seq)) if e.seq else 'live':<8} {getattr(m, 'kind', type(m).__name__):<{KIND_WIDTH}}"
    if isinstance(m, Signal):
        return f"{head} {m.signal_id} {m.side} {m.qty:g} {m.symbol} {m.order_type} conf={m.confidence:g}"
    if isinstance(m, SignalDecision):
        what = f"accepted -> {m.correlation_id}" if m.accepted else f"REFUSED {m.reason}"
        return f"{head} {m.signal_id} {m.symbol} {what}"
    if isinstance(m, GuardKnobs):
        entries = "entries allowed" if m.allow_entries else "ENTRIES BLOCKED"
        return f"{head} {m.mode} {entries} rev={m.revision}" + (f" ({m.reason})" if m.reason else "")
    if isinstance(m, HaltCommand):
        return f"{head} {m.action} by {m.source}: {m.reason}"
    if isinstance(m, KillSwitchEvent):
        return f"{head} tripped={m.tripped} new={m.newly_tripped} released={m.released} reasons={m.reasons}"
    if isinstance(m, ReconcileSummary):
        return f"{head} tick {m.tick} streak {m.mismatch_streak} ok={m.ok}" + (
            f" {m.error}" if m.error else ""
        )
    if isinstance(m, VenueOrderFact):
        what = m.state or f"gone ({m.status})"
        fill = (
            f" filled={m.filled_qty:g}" + (f" @ {m.avg_price:g}" if m.avg_price else "")
            if m.filled_qty
            else ""
        )
        return f"{head} {m.client_order_id} {m.symbol} {what}{fill} from {m.source}"
    if isinstance(m, RebuildSummary):
        return f"{head} positions={m.positions} open_orders={m.open_orders} orphans={len(m.orphans)} froze={m.froze}"
    if isinstance(m, VenueStreamStatus):
        return (
            f"{head} {m.state}" + (" resumed" if m.resumed else "") + (f" ({m.reason})" if m.reason else "")
        )
    if isinstance(
        m, ProtectionGap | RepairAction | Stage1GapAssertion | MismatchEvent | DeadLetter | VenueBan
    ):
        return f"{head} {_fields(m)}"
    line = describe(e)
    if line.endswith(m.model_dump_json()):  # describe() has no line for it either
        line = f"{head} {_fields(m)}"
    sym = _symbol(m)
    return line if sym is None or sym in line else f"{line} {sym}"


def matches(e: JournalEntry, prefix: str, symbol: str | None, subject: str | None, everything: bool) -> bool:
    """tail's filter: a symbol, a subject family (``order.transition`` or any subject part), and the
    reconciler's heartbeats hidden unless ``everything``."""
    m = e.msg
    if not everything and isinstance(m, ReconcileSummary) and m.ok:
        return False
    if not everything and getattr(m, "kind", "") == "venue.stream":
        return False
    if symbol is not None and _symbol(m) != symbol:
        return False
    if subject is not None:
        rest = e.subject.removeprefix(prefix + ".")
        if not (rest.startswith(subject) or subject in rest):
            return False
    return True


def json_default(o: Any) -> Any:
    return str(o)
