"""User data stream payloads and listenKey rules, without a network: field names as Binance documents them.

Field lists: developers.binance.com, USDS-M futures user data streams (Event: Order Update,
Event: Algo Order Update, Event: Balance and Position Update, Event: User Data Stream Expired).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.simulator.engine import Engine, SimError
from services.simulator.faults import FaultRule
from services.simulator.listenkey import ListenKeys
from services.simulator.user_events import UserEvents, listen_key_expired

ORDER_FIELDS = set(
    "s c S o f q p ap sp x X i l z L N n T t b a m R wt ot ps cp AP cr pP si ss rp V pm gtd".split()
)
ORDER_ONLY_SOMETIMES = {"N", "n"} | {"AP", "cr"}  # commission when charged; trailing-stop fields
ALGO_FIELDS = set("caid aid at o s S ps f q X ai ap aq act tp p V wt pm cp pP R tt gtd rm".split())
ALGO_ONCE_PLACED = {"ap", "aq", "act"}  # only once the trigger placed an order in the matching engine
BALANCE_FIELDS = {"a", "wb", "cw", "bc"}
POSITION_FIELDS = {"s", "pa", "ep", "bep", "cr", "up", "mt", "iw", "ps", "ma"}


class Recorder:
    """The engine's listener, turning each change into its payload as the stream would."""

    def __init__(self, engine: Engine) -> None:
        self.events = UserEvents(engine)
        self.out: list[dict[str, Any]] = []
        engine.listener = self

    def __call__(self, kind: str, subject: Any, detail: dict[str, Any]) -> None:
        if kind == "order":
            self.out.append(
                self.events.order_update(
                    subject,
                    detail["exec_type"],
                    detail.get("last_qty", 0.0),
                    detail.get("last_price", 0.0),
                    detail.get("realized", 0.0),
                )
            )
        elif kind == "algo":
            self.out.append(self.events.algo_update(subject, detail.get("reason", "")))
        else:
            self.events.note_realized(subject, detail.get("realized", 0.0))
            self.out.append(self.events.account_update(subject, detail["reason"]))

    def seq(self) -> list[tuple[str, str]]:
        """(event, status or reason) in emission order."""
        return [(m["e"], m["o"]["X"] if "o" in m else m["a"]["m"]) for m in self.out]


@pytest.fixture
def rec() -> Recorder:
    return Recorder(Engine(["BTCUSDT"], start_balance=100_000.0, half_spread_bps=0.0))


def test_order_trade_update_fields(rec):
    e = rec.events.engine
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.01, price=None, client_id="A1")
    new, _, trade = rec.out
    assert rec.seq() == [
        ("ORDER_TRADE_UPDATE", "NEW"),
        ("ACCOUNT_UPDATE", "ORDER"),
        ("ORDER_TRADE_UPDATE", "FILLED"),
    ]
    for m in (new, trade):
        assert set(m) == {"e", "E", "T", "o"} and m["E"] >= m["T"]
        assert set(m["o"]) == ORDER_FIELDS - ORDER_ONLY_SOMETIMES
    o = trade["o"]
    assert (o["c"], o["x"], o["X"], o["l"], o["z"], o["L"], o["ap"], o["R"], o["ps"]) == (
        "A1",
        "TRADE",
        "FILLED",
        "0.01",
        "0.01",
        "50000",
        "50000",
        False,
        "BOTH",
    )
    assert new["o"]["x"] == "NEW" and new["o"]["l"] == "0" and new["o"]["i"] == o["i"]
    assert trade["o"]["t"] > 0 and new["o"]["t"] == 0


def test_account_update_fields_and_realized_profit(rec):
    e = rec.events.engine
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.1, price=None, client_id="A1")
    e.set_price("BTCUSDT", 51_000)
    e.place_order(symbol="BTCUSDT", side="SELL", type="MARKET", qty=0.1, price=None, client_id="A2")
    acct = [m for m in rec.out if m["e"] == "ACCOUNT_UPDATE"][-1]
    assert set(acct) == {"e", "E", "T", "a"} and set(acct["a"]) == {"m", "B", "P"}
    (b,), (p,) = acct["a"]["B"], acct["a"]["P"]
    assert set(b) == BALANCE_FIELDS and set(p) == POSITION_FIELDS
    assert (b["a"], b["wb"], p["pa"], p["cr"], p["mt"]) == ("USDT", "100100", "0", "100", "cross")
    assert rec.out[-1]["o"]["rp"] == "100"


def test_algo_update_fields_and_trigger_sequence(rec):
    e = rec.events.engine
    e.set_position("BTCUSDT", 0.02, 50_000)
    rec.out.clear()
    a = e.place_algo(
        symbol="BTCUSDT",
        side="SELL",
        order_type="STOP_MARKET",
        qty=0.02,
        price=None,
        trigger_price=45_000,
        client_id="S1",
        reduce_only=True,
    )
    e.set_price("BTCUSDT", 44_000)
    assert rec.seq() == [
        ("ALGO_UPDATE", "NEW"),
        ("ALGO_UPDATE", "TRIGGERING"),
        ("ALGO_UPDATE", "TRIGGERED"),
        ("ORDER_TRADE_UPDATE", "NEW"),
        ("ACCOUNT_UPDATE", "ORDER"),
        ("ORDER_TRADE_UPDATE", "FILLED"),
        ("ALGO_UPDATE", "FINISHED"),
    ]
    algos = [m for m in rec.out if m["e"] == "ALGO_UPDATE"]
    for m in algos:
        assert set(m) == {"e", "E", "T", "o"}
    assert set(algos[0]["o"]) == ALGO_FIELDS - ALGO_ONCE_PLACED and algos[0]["o"]["ai"] == ""
    assert set(algos[2]["o"]) == ALGO_FIELDS
    child = rec.out[3]["o"]
    assert algos[2]["o"]["ai"] == str(child["i"]) and algos[3]["o"]["aid"] == a.algo_id
    assert (child["o"], child["ot"], child["R"], child["sp"]) == ("MARKET", "STOP_MARKET", True, "45000")
    assert (algos[3]["o"]["aq"], algos[3]["o"]["act"], algos[3]["o"]["caid"]) == ("0.02", "MARKET", "S1")


def test_expiries_and_cancels_are_pushed(rec):
    e = rec.events.engine
    e.set_position("BTCUSDT", 0.01, 50_000)
    e.place_algo(
        symbol="BTCUSDT",
        side="SELL",
        order_type="STOP_MARKET",
        qty=None,
        price=None,
        trigger_price=40_000,
        client_id="C1",
        close_position=True,
    )
    e.place_order(
        symbol="BTCUSDT",
        side="SELL",
        type="LIMIT",
        qty=0.01,
        price=52_000,
        client_id="TP",
        reduce_only=True,
    )
    e.place_order(symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.01, price=49_000, client_id="B1")
    rec.out.clear()
    e.operator_cancel("BTCUSDT", "B1")
    e.set_position("BTCUSDT", 0)  # flat behind our back: the close-position stop expires
    e.set_price("BTCUSDT", 52_000)  # the reduce-only limit reaches its price with nothing to reduce
    assert rec.seq() == [
        ("ORDER_TRADE_UPDATE", "CANCELED"),
        ("ACCOUNT_UPDATE", "ORDER"),
        ("ALGO_UPDATE", "EXPIRED"),
        ("ORDER_TRADE_UPDATE", "EXPIRED"),
    ]
    assert [m["o"]["x"] for m in rec.out if m["e"] == "ORDER_TRADE_UPDATE"] == ["CANCELED", "EXPIRED"]


def test_a_trigger_with_nothing_to_reduce_expires_with_a_reason(rec):
    e = rec.events.engine
    e.set_position("BTCUSDT", 0.01, 50_000)
    e.place_algo(
        symbol="BTCUSDT",
        side="SELL",
        order_type="STOP_MARKET",
        qty=0.01,
        price=None,
        trigger_price=45_000,
        client_id="S1",
        reduce_only=True,
    )
    e.set_position("BTCUSDT", 0)
    rec.out.clear()
    e.set_price("BTCUSDT", 44_000)
    assert rec.seq() == [("ALGO_UPDATE", "TRIGGERING"), ("ALGO_UPDATE", "EXPIRED")]
    assert rec.out[-1]["o"]["rm"] == "Reduce Only reject"


def test_listen_key_expired_event():
    m = listen_key_expired("k" * 64, 1_700_000_000_000)
    assert m == {"e": "listenKeyExpired", "E": "1700000000000", "listenKey": "k" * 64}


# ----------------------------------------------------------------------------- listenKey rules


def test_one_key_per_account_extended_by_post_and_put():
    keys = ListenKeys(validity_ms=1000)
    k = keys.create(0)
    assert len(k) == 64 and keys.create(500) == k and keys.current.expires_ms == 1500
    assert keys.keepalive(1400) == k and keys.current.expires_ms == 2400
    assert keys.keepalive(1400, k) == k
    assert keys.due(2399) is None and keys.due(2400) == k
    assert keys.create(2400) != k  # expired: a new key


@pytest.mark.parametrize("how", ["expired", "closed", "never", "other"])
def test_keepalive_on_a_dead_key_is_1125(how):
    keys = ListenKeys(validity_ms=1000)
    if how != "never":
        k = keys.create(0)
    now = 1000 if how == "expired" else 0
    if how == "closed":
        assert keys.close(0) == k
    with pytest.raises(SimError) as err:
        keys.keepalive(now, "x" * 64 if how == "other" else None)
    assert (err.value.code, err.value.msg) == (-1125, "This listenKey does not exist.")
    with pytest.raises(SimError):
        keys.close(now, "x" * 64 if how == "other" else None)


def test_stream_faults_validate():
    with pytest.raises(ValidationError):
        FaultRule(kind="stream_delay")
    assert FaultRule(kind="stream_stall").delay_ms == 0


# ----------------------------------------------------------------------------- the REST side, in the app


def test_listen_key_endpoints_need_the_api_key_only_and_weigh_one(sim):
    with httpx.Client(base_url=sim.base_url) as c:
        key = {"X-MBX-APIKEY": "sim-key"}
        r1 = c.post("/fapi/v1/listenKey", headers=key)
        r2 = c.post("/fapi/v1/listenKey", headers=key)
        assert r1.status_code == 200 and r1.json() == r2.json()
        w1, w2 = (int(r.headers["X-MBX-USED-WEIGHT-1M"]) for r in (r1, r2))
        assert w2 == w1 + 1
        assert c.put("/fapi/v1/listenKey", headers=key).json() == r1.json()
        bad = c.post("/fapi/v1/listenKey", headers={"X-MBX-APIKEY": "who"})
        assert (bad.status_code, bad.json()["code"]) == (401, -2015)
        wrong = c.put("/fapi/v1/listenKey?listenKey=nope", headers=key)
        assert (wrong.status_code, wrong.json()["code"]) == (400, -1125)
        assert c.delete("/fapi/v1/listenKey", headers=key).json() == {}
        assert c.put("/fapi/v1/listenKey", headers=key).json()["code"] == -1125
        state = c.get("/_sim/stream").json()
        assert state["listenKey"] is None and state["port"] > 0 and state["connections"] == []
