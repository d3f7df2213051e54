"""The soak's invariant checker on synthetic histories, and the soak's schedule (pure parts)."""

from __future__ import annotations

import json

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import (
    GuardKnobs,
    HaltCommand,
    OrderIntent,
    OrderRetry,
    OrderTransition,
    SignalDecision,
    subject_for,
)
from libs.common.replay import JournalEntry
from libs.common.state_machine import OrderState as S
from tools.soak import build_schedule, schedule_lines
from tools.soak_invariants import (
    BAD_SIGNALS_REFUSED,
    INVARIANTS,
    JOURNAL_MATCHES_VENUE,
    LATCHES_HOLD,
    NO_ENTRY_WHILE_HALTED,
    NO_INTENT_LOST,
    NO_UNJOURNALED,
    ONE_ORDER_PER_ID,
    ONE_STOP_PER_SIDE,
    PROTECTED_AT_END,
    PROTECTED_IN_BOUND,
    RETRIES_BOUNDED,
    SERVICES_READY,
    SETTLED_IN_BOUND,
    WEIGHT_UNDER_LIMIT,
    History,
    check,
    entry_client_order_id,
    load_history,
    render,
    save_history,
    violations,
)

T0 = 1_700_000_000_000  # ms


def intent(key: str, bucket: Bucket = Bucket.ENTRY, ts: int = T0, **kw) -> OrderIntent:
    iid = make_intent_id("t", key, bucket)
    base = dict(
        ts_ms=ts,
        intent_id=iid,
        correlation_id=make_correlation_id(iid),
        client_order_id=make_client_order_id(iid, bucket),
        bucket=bucket,
        symbol="BTC/USDT:USDT",
        side="buy",
        order_type="market",
        qty=0.01,
    )
    if bucket is Bucket.SL:
        base.update(side="sell", order_type="stop_market", stop_price=49_000.0, qty=None, close_position=True)
    base.update(kw)
    return OrderIntent(**base)


def tr(i: OrderIntent, src: S, dst: S, ts: int, **kw) -> OrderTransition:
    return OrderTransition(
        ts_ms=ts,
        correlation_id=i.correlation_id,
        intent_id=i.intent_id,
        client_order_id=i.client_order_id,
        symbol=i.symbol,
        bucket=i.bucket,
        from_state=src,
        to_state=dst,
        **kw,
    )


def filled(i: OrderIntent, ts: int = T0) -> list:
    return [
        i,
        tr(i, S.CREATED, S.SUBMITTING, ts + 10, reason="attempt 1"),
        tr(i, S.SUBMITTING, S.FILLED, ts + 20),
    ]


def order(cid: str, order_id: int, status: str = "FILLED", t: int = T0, **kw) -> dict:
    return {
        "orderId": order_id,
        "symbol": "BTCUSDT",
        "status": status,
        "clientOrderId": cid,
        "origQty": "0.01",
        "executedQty": "0.01" if status == "FILLED" else "0",
        "type": "MARKET",
        "side": "BUY",
        "reduceOnly": False,
        "time": t,
        "updateTime": t,
        **kw,
    }


def algo(cid: str, algo_id: int, status: str = "NEW", created: int = T0, updated: int | None = None) -> dict:
    return {
        "algoId": algo_id,
        "clientAlgoId": cid,
        "orderType": "STOP_MARKET",
        "symbol": "BTCUSDT",
        "side": "SELL",
        "algoStatus": status,
        "triggerPrice": "49000",
        "closePosition": True,
        "reduceOnly": False,
        "quantity": "0",
        "actualOrderId": "",
        "createTime": created,
        "updateTime": updated if updated is not None else created,
    }


def create_request(cid: str, ts_ms: int) -> dict:
    return {
        "ts": ts_ms / 1000,
        "method": "POST",
        "path": "/fapi/v1/order",
        "params": {"newClientOrderId": cid},
        "status": 200,
        "code": None,
    }


def history(msgs: list, venue: dict | None = None, requests: list | None = None, **kw) -> History:
    entries = [JournalEntry(n + 1, subject_for("erl", m), m) for n, m in enumerate(msgs)]
    kw.setdefault("collected_at", T0 / 1000 + 30)
    kw.setdefault("router_unknown", [])
    return History(
        entries=entries,
        venue=venue or {"orders": [], "algo_orders": [], "positions": []},
        requests=requests or [],
        **kw,
    )


def by_name(h: History) -> dict:
    return {r.name: r for r in check(h)}


def test_a_clean_history_passes_every_invariant():
    entry = intent("e1")
    stop = intent("s1", Bucket.SL)
    msgs = [
        GuardKnobs(ts_ms=T0 - 1000, allow_entries=True),
        *filled(entry),
        stop,
        tr(stop, S.CREATED, S.SUBMITTING, T0 + 30),
        tr(stop, S.SUBMITTING, S.ACKED, T0 + 40),
    ]
    venue = {
        "orders": [order(entry.client_order_id, 1)],
        "algo_orders": [algo(stop.client_order_id, 2, created=T0 + 40)],
        "positions": [{"symbol": "BTCUSDT", "positionAmt": "0.01"}],
    }
    h = history(msgs, venue, [create_request(entry.client_order_id, T0 + 15)])
    results = check(h)
    assert [r.name for r in results] == list(INVARIANTS)
    assert violations(results) == 0, render(results)
    assert "invariant" in render(results)


def test_two_venue_orders_for_one_client_id_and_an_order_nobody_journaled():
    entry = intent("e1")
    venue = {
        "orders": [order(entry.client_order_id, 1), order(entry.client_order_id, 2), order("manual1", 3)],
        "algo_orders": [],
        "positions": [],
    }
    r = by_name(history(filled(entry), venue))
    assert len(r[ONE_ORDER_PER_ID].violations) == 1
    v = r[ONE_ORDER_PER_ID].violations[0]
    assert v.correlation_id == entry.correlation_id and any("FILLED" in line for line in v.replay)
    assert [v.what.split(":")[0] for v in r[NO_UNJOURNALED].violations] == ["manual1"]
    # the soak's own orders behind the bot's back are exempt
    assert not by_name(history(filled(entry), venue, foreign_orders=["manual1"]))[NO_UNJOURNALED].violations


def test_a_triggered_stops_market_order_is_its_execution_not_a_second_order():
    stop = intent("s1", Bucket.SL)
    a = {**algo(stop.client_order_id, 5, status="FINISHED", updated=T0 + 50), "actualOrderId": "6"}
    venue = {"orders": [order(stop.client_order_id, 6)], "algo_orders": [a], "positions": []}
    msgs = [stop, tr(stop, S.CREATED, S.SUBMITTING, T0 + 1), tr(stop, S.SUBMITTING, S.ACKED, T0 + 2)]
    msgs.append(tr(stop, S.ACKED, S.FILLED, T0 + 60))
    r = by_name(history(msgs, venue))
    assert not r[ONE_ORDER_PER_ID].violations and not r[JOURNAL_MATCHES_VENUE].violations


def test_unprotected_position_and_two_live_stops():
    s1, s2 = intent("s1", Bucket.SL), intent("s2", Bucket.SL)
    venue = {
        "orders": [],
        # s1 cancelled behind the bot's back (no update time from the venue), s2 placed before that
        "algo_orders": [
            algo(s1.client_order_id, 1, "CANCELED", T0),
            algo(s2.client_order_id, 2, "EXPIRED", T0 + 500, T0 + 900),
        ],
        "positions": [{"symbol": "BTCUSDT", "positionAmt": "0.02"}],
    }
    r = by_name(history([s1, s2], venue, behind_back_cancels={s1.client_order_id: (T0 + 700) / 1000}))
    assert len(r[PROTECTED_AT_END].violations) == 1
    assert len(r[ONE_STOP_PER_SIDE].violations) == 1
    assert "200 ms" in r[ONE_STOP_PER_SIDE].violations[0].what
    # cancelled before the second one was placed: never two
    r = by_name(history([s1, s2], venue, behind_back_cancels={s1.client_order_id: (T0 + 400) / 1000}))
    assert not r[ONE_STOP_PER_SIDE].violations


def test_an_entry_first_sent_inside_a_halt_is_a_violation_a_retry_only_a_note():
    early, late = intent("early"), intent("late")
    msgs = [
        GuardKnobs(ts_ms=T0, allow_entries=True),
        GuardKnobs(ts_ms=T0 + 10_000, allow_entries=False, mode="halted", reason="manual"),
        GuardKnobs(ts_ms=T0 + 20_000, allow_entries=True),
        *filled(early),
        *filled(late, T0 + 14_000),
    ]
    requests = [
        create_request(early.client_order_id, T0 + 9_000),
        create_request(early.client_order_id, T0 + 13_000),  # a retry of an entry gated before the halt
        create_request(late.client_order_id, T0 + 14_000),
        create_request(late.client_order_id, T0 + 14_500),
    ]
    res = by_name(history(msgs, requests=requests))[NO_ENTRY_WHILE_HALTED]
    assert [v.correlation_id for v in res.violations] == [late.correlation_id]
    assert any("2 create retries" in n for n in res.notes)
    # inside the propagation grace: not a violation
    requests = [create_request(late.client_order_id, T0 + 11_000)]
    assert not by_name(history(msgs, requests=requests))[NO_ENTRY_WHILE_HALTED].violations


def test_lost_stuck_and_unknown_intents():
    lost, stuck, unknown, tracked = intent("lost"), intent("stuck"), intent("unknown"), intent("tracked")
    msgs = [
        lost,
        stuck,
        tr(stuck, S.CREATED, S.SUBMITTING, T0 + 10),
        unknown,
        tr(unknown, S.CREATED, S.SUBMITTING, T0 + 10),
        tr(unknown, S.SUBMITTING, S.UNKNOWN, T0 + 20),
        tracked,
        tr(tracked, S.CREATED, S.SUBMITTING, T0 + 10),
        tr(tracked, S.SUBMITTING, S.UNKNOWN, T0 + 20),
    ]
    r = by_name(history(msgs, router_unknown=[tracked.client_order_id], collected_at=T0 / 1000 + 120))
    assert [v.correlation_id for v in r[NO_INTENT_LOST].violations] == [lost.correlation_id]
    bad = {v.correlation_id for v in r[SETTLED_IN_BOUND].violations}
    assert bad == {stuck.correlation_id, unknown.correlation_id}


def test_journal_and_venue_disagree():
    placed, never = intent("placed"), intent("never")
    msgs = [
        placed,
        tr(placed, S.CREATED, S.SUBMITTING, T0 + 1),
        tr(placed, S.SUBMITTING, S.ACKED, T0 + 2),
        never,
        tr(never, S.CREATED, S.SUBMITTING, T0 + 1),
        tr(never, S.SUBMITTING, S.FAILED, T0 + 2),
    ]
    venue = {
        "orders": [order(placed.client_order_id, 1, "CANCELED"), order(never.client_order_id, 2)],
        "algo_orders": [],
        "positions": [],
    }
    r = by_name(history(msgs, venue))
    assert {v.correlation_id for v in r[JOURNAL_MATCHES_VENUE].violations} == {
        placed.correlation_id,
        never.correlation_id,
    }


def retry(i: OrderIntent, ts: int, **kw) -> OrderRetry:
    base = dict(
        ts_ms=ts,
        correlation_id=i.correlation_id,
        client_order_id=i.client_order_id,
        symbol=i.symbol,
        operation="create",
        error_class="ExchangeNotAvailable",
        reason="venue_unavailable",
        policy="retryable",
        tries=1,
        attempt=2,
        delay_sec=0.5,
        elapsed_sec=1.0,
    )
    base.update(kw)
    return OrderRetry(**base)


def test_retries_beyond_attempts_or_the_elapsed_cap_or_the_recv_window():
    i = intent("r")
    ok = [
        i,
        tr(i, S.CREATED, S.SUBMITTING, T0),
        retry(i, T0 + 100, attempt=5),
        retry(i, T0 + 200, attempt=9, reason="rate_limited"),  # a venue pause costs no attempt
        tr(i, S.SUBMITTING, S.UNKNOWN, T0 + 300),
        retry(i, T0 + 5_000, operation="fetch", reason="not_found_yet", attempt=12),
        tr(i, S.UNKNOWN, S.FILLED, T0 + 6_000),
    ]
    assert not by_name(history(ok))[RETRIES_BOUNDED].violations
    bad = [
        i,
        tr(i, S.CREATED, S.SUBMITTING, T0),
        retry(i, T0 + 100, attempt=6),
        retry(i, T0 + 200, operation="fetch", elapsed_sec=19.0, delay_sec=2.0),
        tr(i, S.SUBMITTING, S.UNKNOWN, T0 + 300),
        # a lookup that began inside the window may answer late: not a violation by itself ...
        retry(i, T0 + 8_000, operation="fetch", reason="not_found_yet", attempt=1),
        # ... but one that began after the window (after the previous event) must not say "not yet"
        retry(i, T0 + 9_000, operation="fetch", reason="not_found_yet", attempt=2),
        tr(i, S.UNKNOWN, S.FILLED, T0 + 10_000),
    ]
    assert len(by_name(history(bad))[RETRIES_BOUNDED].violations) == 3
    # one lookup retried through timeouts and a ban is one lookup: it began inside the window (soak seed 21)
    slow = [
        i,
        tr(i, S.SUBMITTING, S.UNKNOWN, T0),
        retry(i, T0 + 3_000, operation="fetch", reason="request_timeout", attempt=2),
        retry(i, T0 + 9_000, operation="fetch", reason="ip_banned", attempt=2),
        retry(i, T0 + 12_000, operation="fetch", reason="not_found_yet", attempt=1),
        tr(i, S.UNKNOWN, S.FILLED, T0 + 13_000),
    ]
    assert not by_name(history(slow))[RETRIES_BOUNDED].violations
    # a router that starts counts an intent in flight as sent at its start: the window runs from there
    late = [
        i,
        tr(i, S.SUBMITTING, S.UNKNOWN, T0),
        retry(i, T0 + 8_000, operation="fetch", reason="not_found_yet"),
        retry(i, T0 + 9_000, operation="fetch", reason="not_found_yet"),  # its lookup began at +8 s
    ]
    restarted = [{"ts": (T0 + 5_000) / 1000, "process": "router", "up": True}]
    assert len(by_name(history(late))[RETRIES_BOUNDED].violations) == 1
    assert not by_name(history(late, process_events=restarted))[RETRIES_BOUNDED].violations


def test_weight_samples_and_429s_nobody_injected():
    sample = {
        "ts": T0 / 1000,
        "limits": {"weight_limit_1m": 2400, "ips": {"127.0.0.1": {"used_weight_1m": 2400, "bans": 1}}},
    }
    requests = [{"ts": 1, "method": "GET", "path": "/x", "params": {}, "status": 429, "code": -1003}] * 3
    r = by_name(history([], requests=requests, limit_samples=[sample], injected={"429": 2}))[
        WEIGHT_UNDER_LIMIT
    ]
    assert len(r.violations) == 3  # at the limit, one 429 of our own, a ban
    ok = by_name(history([], requests=requests, injected={"429": 3}))[WEIGHT_UNDER_LIMIT]
    assert not ok.violations


def test_bad_signals_must_be_refused_and_never_reach_the_venue():
    bad = {"b1": {"kind": "low_confidence", "published": True}, "b2": {"kind": "too_big", "published": True}}
    bad["b3"] = {"kind": "schema", "published": True}
    msgs = [
        SignalDecision(
            signal_id="b1", symbol="BTC/USDT:USDT", accepted=False, reason="confidence_below_floor"
        ),
        SignalDecision(signal_id="b2", symbol="BTC/USDT:USDT", accepted=False, reason="notional_cap:1>0"),
    ]
    requests = [create_request(entry_client_order_id("b2"), T0)]
    r = by_name(history(msgs, requests=requests, bad_signals=bad))[BAD_SIGNALS_REFUSED]
    assert len(r.violations) == 2  # b2 reached the venue; b3 neither refused nor dead-lettered


def test_a_running_service_that_never_gets_ready_is_a_violation():
    def sample(ts: float, alive: bool, ready: bool) -> dict:
        return {"ts": ts, "service": "reconciler", "alive": alive, "ready": ready, "reason": "bus not ready"}

    t = T0 / 1000
    # killed for 20 s and restarted: not ready while down is no fault of its own
    ok = [
        sample(t, True, True),
        *(sample(t + k, False, False) for k in range(1, 21)),
        sample(t + 25, True, True),
    ]
    assert not by_name(history([], ready_samples=ok))[SERVICES_READY].violations
    # up, but its start-up failed and nobody retries: a zombie
    stuck = [sample(t, True, True), *(sample(t + k, True, False) for k in range(1, 41))]
    r = by_name(history([], ready_samples=stuck))[SERVICES_READY]
    assert len(r.violations) == 1 and "reconciler running but not ready for 39s" in r.violations[0].what
    # a start-up the venue keeps refusing (429s to everyone) is waiting on the venue, not stuck ...
    refused = "start-up failed: VenueError: DDoSProtection: binanceusdm 429 Too Many Requests"
    waiting = [
        sample(t, True, True),
        *({**sample(t + k, True, False), "reason": refused} for k in range(1, 41)),
    ]
    limited = [
        {"ts": t + k - 0.5, "method": "GET", "path": "/fapi/v2/positionRisk", "status": 429}
        for k in range(1, 41)
    ]
    r = by_name(history([], requests=limited, ready_samples=waiting))[SERVICES_READY]
    assert not r.violations and "40 not-ready samples" in r.notes[0]
    # ... but the same answer while the venue refuses nobody is a service stuck on its own
    r = by_name(history([], ready_samples=waiting))[SERVICES_READY]
    assert len(r.violations) == 1


def stop_sample(ts: float, qty: float, *stops: tuple[float, bool]) -> dict:
    """A protection sample: a BTCUSDT position and resting SELL stops (trigger, close-position)."""
    return {
        "ts": ts,
        "positions": {"BTCUSDT": qty} if qty else {},
        "stops": [
            {
                "clientAlgoId": f"s{n}",
                "symbol": "BTCUSDT",
                "side": "SELL",
                "orderType": "STOP_MARKET",
                "triggerPrice": str(trigger),
                "quantity": "0",
                "closePosition": close,
                "reduceOnly": False,
            }
            for n, (trigger, close) in enumerate(stops)
        ],
    }


def test_a_position_without_its_stop_past_the_bound_counting_only_service_time():
    t = T0 / 1000
    asked = intent("s1", Bucket.SL, ts=T0, stop_price=49_000.0)
    # 40 s without a stop: past the bound (12 + 15 + 5 s)
    bare = [stop_sample(t + k, 0.01) for k in range(1, 41)] + [stop_sample(t + 41, 0.01, (49_000.0, True))]
    r = by_name(history([asked], protection_samples=bare))[PROTECTED_IN_BOUND]
    assert len(r.violations) == 1 and "without its stop for 40.0s" in r.violations[0].what
    # the same 40 s, of which the reconciler was down for 20: 20 s of service time, inside the bound
    down = [
        {"ts": t + 5, "process": "reconciler", "up": False},
        {"ts": t + 25, "process": "reconciler", "up": True},
    ]
    r = by_name(history([asked], protection_samples=bare, process_events=down))[PROTECTED_IN_BOUND]
    assert not r.violations and r.checks == 41
    # a stop far from the last one asked for (a stale stop) is no protection
    stale = [stop_sample(t + k, 0.01, (45_000.0, True)) for k in range(1, 41)] + [stop_sample(t + 41, 0)]
    r = by_name(history([asked], protection_samples=stale))[PROTECTED_IN_BOUND]
    assert len(r.violations) == 1 and "asked for 49000.0" in r.violations[0].detail
    # the right stop throughout: no gap
    right = [stop_sample(t + k, 0.01, (49_050.0, True)) for k in range(1, 41)]
    assert not by_name(history([asked], protection_samples=right))[PROTECTED_IN_BOUND].violations
    # a gap that began inside a stream fault waits at most for the trusted stream's sweep (60 + 15 + 5 s)
    r = by_name(history([asked], protection_samples=bare, stream_faults=[(t, t + 3)]))[PROTECTED_IN_BOUND]
    assert not r.violations
    longer = [stop_sample(t + k, 0.01) for k in range(1, 91)] + [stop_sample(t + 91, 0.01, (49_000.0, True))]
    r = by_name(history([asked], protection_samples=longer, stream_faults=[(t, t + 3)]))[PROTECTED_IN_BOUND]
    assert len(r.violations) == 1 and "bound 80s" in r.violations[0].what
    # a fault long over when the gap began is no excuse
    late = [(t - 300, t - 290)]  # (a stall ends at the latest with its silence recycle, 120 s)
    assert by_name(history([asked], protection_samples=bare, stream_faults=late))[
        PROTECTED_IN_BOUND
    ].violations


def test_an_operator_halt_must_survive_a_restart_of_risk():
    t = T0 / 1000
    halted = GuardKnobs(ts_ms=T0, allow_entries=False, mode="halted", manual_halt=True, manual_reason="ops")
    cleared = GuardKnobs(ts_ms=T0 + 12_000, allow_entries=True)
    restart = [
        {"ts": t + 5, "process": "risk", "up": False},
        {"ts": t + 10, "process": "risk", "up": True},
    ]
    r = by_name(history([halted, cleared], process_events=restart))[LATCHES_HOLD]
    assert r.checks == 1 and len(r.violations) == 1 and "operator halt" in r.violations[0].what
    # a resume journaled while risk restarted explains it
    resume = HaltCommand(ts_ms=T0 + 11_000, action="resume", reason="ops", source="api")
    assert not by_name(history([halted, resume, cleared], process_events=restart))[LATCHES_HOLD].violations
    # the halt held
    held = GuardKnobs(ts_ms=T0 + 12_000, allow_entries=False, mode="halted", manual_halt=True)
    assert not by_name(history([halted, held], process_events=restart))[LATCHES_HOLD].violations


def test_a_history_survives_the_disk(tmp_path):
    entry = intent("e1")
    h = history(
        filled(entry), {"orders": [order(entry.client_order_id, 1)], "algo_orders": [], "positions": []}
    )
    save_history(tmp_path, h)
    back = load_history(tmp_path)
    assert [e.msg for e in back.entries] == [e.msg for e in h.entries]
    assert render(check(back)) == render(check(h))


def test_the_schedule_is_a_pure_function_of_the_seed():
    a, b, c = build_schedule(3, 60), build_schedule(3, 60), build_schedule(4, 60)
    assert json.dumps(a) == json.dumps(b) and json.dumps(a) != json.dumps(c)
    actions = {e["action"] for e in a["events"]}
    assert {"signal", "exit", "price", "fault_add", "kill", "start", "halt", "resume"} <= actions
    assert [e["at"] for e in a["events"]] == sorted(e["at"] for e in a["events"])
    kinds = {
        e["params"]["rule"]["kind"]
        for d in (3, 4, 5)
        for e in build_schedule(d, 600)["events"]
        if e["action"] == "fault_add"
    }
    assert {"stream_drop", "stream_stall", "stream_delay", "listen_key_expire"} <= kinds
    kills = [e["params"]["process"] for e in a["events"] if e["action"] == "kill"]
    assert {"router", "reconciler", "risk", "entry", "nats"} <= set(kills)
    assert schedule_lines(a)[0].startswith("soak schedule: seed 3, 60s")
