"""The raw stream parse against the ccxt path it replaced, on the events the simulator pushes.

Until issue 14 every ``ORDER_TRADE_UPDATE`` / ``ALGO_UPDATE`` went through ccxt.pro's handler (its
``parse_ws_order`` and order cache) and our ``stream_update_from_ccxt``; now libs/venue/stream_events.py
reads the raw event. A fact's message id is made of the update (services/venue_stream fact_msg_id), so
for a restart across the change to duplicate nothing, both paths must give the same ``VenueOrderFact``
for the same event. ``_via_ccxt`` is the old path, kept here as the reference.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import ccxt.pro
import pytest

from libs.common.state_machine import OrderState
from libs.venue.parsing import venue_order_from_ccxt
from libs.venue.stream_events import ORDER_EVENTS, StreamOrderUpdate, order_update_from_event
from services.simulator import wire
from services.simulator.engine import Engine
from services.simulator.user_events import UserEvents
from services.venue_stream.service import fact_msg_id, fact_of

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def _ccxt_stream_update(order: dict[str, Any]) -> StreamOrderUpdate:
    """The old ``libs.venue.parsing.stream_update_from_ccxt``, verbatim: ccxt's unified order -> ours."""
    info = order.get("info") or {}
    raw = str(info.get("X") or "")
    if not order.get("clientOrderId") or not order.get("symbol") or not raw:
        raise ValueError(f"stream order update without client id, symbol or status: {info!r}"[:300])
    is_algo = "aid" in info or "caid" in info
    parsed = venue_order_from_ccxt(order, is_trigger=is_algo)
    state, filled, average = parsed.state, parsed.filled, parsed.average
    if is_algo and raw in ("TRIGGERING", "TRIGGERED"):
        state = OrderState.ACKED
    elif is_algo and raw == "FINISHED":
        filled = float(info.get("aq") or 0)
        average = float(info["ap"]) if info.get("ap") and float(info["ap"]) else None
    actual = info.get("ai") if is_algo else None
    update = replace(
        parsed,
        state=state,
        venue_status=raw,
        filled=filled,
        average=average,
        actual_order_id=str(actual) if actual else None,
    )
    event_ms = info.get("T") or order.get("lastUpdateTimestamp") or order.get("timestamp")
    complete = state is not OrderState.UNKNOWN and not (state is OrderState.FILLED and filled <= 0)
    return StreamOrderUpdate(update, int(event_ms) if event_ms else None, complete)


class _Client:
    """What ccxt's handler needs of a connection: somewhere to resolve the watchers' futures."""

    subscriptions: dict = {}

    def resolve(self, *_: Any) -> None:
        pass


class Venue:
    """A simulator engine and what its user data stream pushes, as JSON on the wire."""

    def __init__(self) -> None:
        self.engine = Engine(SYMBOLS, start_balance=1_000_000.0, half_spread_bps=0.0)
        self.events = UserEvents(self.engine)
        self.out: list[dict[str, Any]] = []
        self.engine.listener = self._on_change

    def _on_change(self, kind: str, subject: Any, d: dict[str, Any]) -> None:
        if kind == "order":
            args = (d["exec_type"], d.get("last_qty", 0.0), d.get("last_price", 0.0), d.get("realized", 0.0))
            msg = self.events.order_update(subject, *args)
        elif kind == "algo":
            msg = self.events.algo_update(subject, d.get("reason", ""))
        else:
            self.events.note_realized(subject, d.get("realized", 0.0))
            msg = self.events.account_update(subject, d["reason"])
        self.out.append(json.loads(json.dumps(msg, separators=(",", ":"))))  # as the wire carries it

    def stop(self, cid: str, side: str, trigger: float, **kw: Any) -> None:
        args: dict[str, Any] = dict(order_type="STOP_MARKET", qty=None, price=None, reduce_only=False)
        args.update(kw)
        self.engine.place_algo(symbol="BTCUSDT", side=side, trigger_price=trigger, client_id=cid, **args)


def _scenario() -> list[dict[str, Any]]:
    """Entries and their stops through every update the router reads a fact from."""
    v = Venue()
    e = v.engine
    e.set_price("BTCUSDT", 50_000)
    # an entry at market: NEW, FILLED
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.02, price=None, client_id="E1")
    # a resting entry: NEW, PARTIALLY_FILLED (a partial fill as the matching engine reports it), FILLED
    rest = e.place_order(symbol="BTCUSDT", side="BUY", type="LIMIT", qty=0.02, price=49_000, client_id="E2")
    e._fill(rest, 0.005, 49_000)
    e.set_price("BTCUSDT", 48_900)
    # a reduce-only stop with a size: NEW, then triggered (TRIGGERING, TRIGGERED, its order, FINISHED)
    v.stop("S1", "SELL", 48_000, qty=0.01, reduce_only=True)
    e.set_price("BTCUSDT", 47_900)
    # a close-position stop: NEW, EXPIRED when the position goes flat
    v.stop("S2", "SELL", 40_000, close_position=True)
    e.place_order(symbol="BTCUSDT", side="SELL", type="MARKET", qty=0.03, price=None, client_id="X1")
    # a close-position stop that triggers (its order has no size of its own)
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.02, price=None, client_id="E3")
    v.stop("S3", "SELL", 47_000, close_position=True)
    e.set_price("BTCUSDT", 46_900)
    # a stop canceled; a reduce-only stop with nothing left to reduce expires (Reduce Only reject)
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.02, price=None, client_id="E4")
    v.stop("S4", "SELL", 45_000, qty=0.02, reduce_only=True)
    e.operator_cancel("BTCUSDT", "S4")
    v.stop("S5", "SELL", 44_000, qty=0.02, reduce_only=True)
    e.set_position("BTCUSDT", 0)
    e.set_price("BTCUSDT", 43_900)
    # a stop-limit that triggers and rests: TRIGGERED stays (with its quantity read as filled by ccxt)
    e.set_price("BTCUSDT", 50_000)
    e.place_order(symbol="BTCUSDT", side="BUY", type="MARKET", qty=0.02, price=None, client_id="E5")
    v.stop("S6", "SELL", 49_000, order_type="STOP", qty=0.02, price=49_500.0, reduce_only=True)
    e.set_price("BTCUSDT", 48_900)
    # a trailing stop: NEW, triggered on the retrace
    v.stop(
        "T1", "SELL", 0.0, order_type="TRAILING_STOP_MARKET", qty=0.02, reduce_only=True, callback_rate=1.0
    )
    e.set_price("BTCUSDT", 48_000)
    # a resting limit canceled behind our back; a reduce-only limit with nothing to reduce expires
    e.place_order(symbol="ETHUSDT", side="BUY", type="LIMIT", qty=1.0, price=2_900, client_id="L1")
    e.operator_cancel("ETHUSDT", "L1")
    e.place_order(symbol="ETHUSDT", side="BUY", type="MARKET", qty=1.0, price=None, client_id="E6")
    e.place_order(
        symbol="ETHUSDT", side="SELL", type="LIMIT", qty=1.0, price=3_100, client_id="L2", reduce_only=True
    )
    e.set_position("ETHUSDT", 0)
    e.set_price("ETHUSDT", 3_200)
    return [m for m in v.out if m["e"] in ORDER_EVENTS]


EVENTS = _scenario()


def test_the_scenario_pushes_every_update_the_table_is_about():
    seen = {(m["e"], m["o"]["X"]) for m in EVENTS}
    order = {("ORDER_TRADE_UPDATE", s) for s in ("NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED")}
    algo = {("ALGO_UPDATE", s) for s in ("NEW", "TRIGGERING", "TRIGGERED", "FINISHED", "CANCELED", "EXPIRED")}
    assert order | algo <= seen
    assert any(m["o"].get("o") == "TRAILING_STOP_MARKET" and m["o"]["X"] == "FINISHED" for m in EVENTS)
    assert any(m["o"].get("cp") is True and m["o"]["X"] == "FINISHED" for m in EVENTS)
    assert any(m["o"].get("rm") == "Reduce Only reject" for m in EVENTS)


@pytest.fixture(scope="module")
def ccxt_client() -> Any:
    ex = ccxt.pro.binanceusdm({"options": {"fetchCurrencies": False, "defaultType": "swap"}})
    info = wire.exchange_info(Engine(SYMBOLS))
    ex.set_markets([ex.parse_market(m) for m in info["symbols"]])
    # ccxt's trade cache (watch_my_trades) is no part of the order path, and it raises on an order's
    # second fill without a commission (as the simulator pushes them): ArgumentsRequired from
    # currency_to_precision, out of the receive loop, which then stopped reading until the silence
    # check ended the session. The order cache is what the old path read.
    ex.handle_my_trade = lambda client, message: None
    return ex


def _via_ccxt(ex: Any, msg: dict[str, Any]) -> StreamOrderUpdate:
    """ccxt.pro's handler files the event in its order cache; the old watch loop read it from there."""
    ex.handle_message(_Client(), json.loads(json.dumps(msg)))  # it writes into the event: its own copy
    return _ccxt_stream_update(dict(ex.orders[-1]))


def _symbols(ex: Any) -> dict[str, str]:
    return {vid: ms[0]["symbol"] for vid, ms in ex.markets_by_id.items()}


@pytest.mark.parametrize(
    "msg", EVENTS, ids=lambda m: f"{m['e']}-{m['o'].get('c') or m['o']['caid']}-{m['o']['X']}"
)
def test_the_raw_event_gives_the_fact_the_ccxt_path_gave(ccxt_client, msg):
    old = _via_ccxt(ccxt_client, msg)
    new = order_update_from_event(msg, _symbols(ccxt_client).get)
    # (ts_ms is when the fact was built: the two may straddle a millisecond)
    assert fact_of(new, "venue_stream").model_dump(exclude={"ts_ms"}) == fact_of(
        old, "venue_stream"
    ).model_dump(exclude={"ts_ms"})
    assert fact_msg_id(fact_of(new, "venue_stream")) == fact_msg_id(fact_of(old, "venue_stream"))
    assert (new.event_ms, new.complete) == (old.event_ms, old.complete)
    # the rest of the order too, but for what ccxt lost and the raw event says (no fact carries it)
    assert replace(new.order, close_position=False, order_type=old.order.order_type) == old.order
    if msg["o"].get("cp") is True:
        assert new.order.close_position
    if msg["e"] == "ALGO_UPDATE" and msg["o"]["o"] == "TRAILING_STOP_MARKET":
        assert new.order.order_type == "trailing_stop_market"
