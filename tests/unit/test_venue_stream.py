"""The venue stream's pure parts: a pushed order update in our types, the router's decision on a fact,
the reconnect backoff and the dedupe id."""

from __future__ import annotations

import asyncio

import ccxt
import pytest

from libs.common.messages import VenueOrderFact, decode, encode
from libs.common.state_machine import OrderState
from libs.venue.stream_events import order_update_from_event, position_updates_from_account_event
from libs.venue.user_stream import SessionEnded, StreamTiming, UserStream, end_reason, key_gone
from services.router.facts import FactAction, Known, fact_action
from services.venue_stream.service import fact_msg_id, fact_of

BTC = "BTC/USDT:USDT"
SYMBOLS = {"BTCUSDT": BTC}.get


def _order(raw: str, filled: str = "0", **o: object) -> dict:
    """A raw ORDER_TRADE_UPDATE for a limit buy of 0.02 (the venue's own field names)."""
    body = {"s": "BTCUSDT", "c": "C1", "S": "BUY", "o": "LIMIT", "q": "0.02", "p": "49000", "ap": "0"}
    body.update({"sp": "0", "X": raw, "i": 11, "z": filled, "T": 1_000, "R": False, "ps": "BOTH"})
    if float(filled):
        body["ap"] = "49000"
    return {"e": "ORDER_TRADE_UPDATE", "E": 1_001, "T": 1_000, "o": {**body, **o}}


def _algo(raw: str, **o: object) -> dict:
    """A raw ALGO_UPDATE: the conditional order itself (a reduce-only stop sell of 0.02)."""
    body = {"caid": "C1", "aid": 77, "at": "CONDITIONAL", "o": "STOP_MARKET", "s": "BTCUSDT", "S": "SELL"}
    body.update({"ps": "BOTH", "q": "0.02", "X": raw, "ai": "", "tp": "45000", "p": "0", "R": True})
    return {"e": "ALGO_UPDATE", "E": 1_001, "T": 1_000, "o": {**body, **o}}


def test_a_resting_fill_is_a_full_update():
    u = order_update_from_event(_order("FILLED", "0.02"), SYMBOLS)
    assert (u.order.state, u.order.filled, u.order.average, u.order.venue_status) == (
        OrderState.FILLED,
        0.02,
        49_000.0,
        "FILLED",
    )
    assert u.complete and u.event_ms == 1_000 and not u.order.is_trigger
    assert (u.order.symbol, u.order.side, u.order.order_type, u.order.exchange_order_id) == (
        BTC,
        "buy",
        "limit",
        "11",
    )


@pytest.mark.parametrize("raw", ["TRIGGERING", "TRIGGERED"])
def test_a_working_trigger_stays_open_until_its_order_fills(raw):
    u = order_update_from_event(_algo(raw, ai="12" if raw == "TRIGGERED" else ""), SYMBOLS)
    assert u.order.state is OrderState.ACKED and u.order.is_trigger and u.complete
    assert u.order.exchange_order_id == "77" and u.order.actual_order_id == (
        "12" if raw == "TRIGGERED" else None
    )


def test_a_finished_trigger_carries_its_fill_or_asks_for_a_lookup():
    done = order_update_from_event(_algo("FINISHED", ai="12", aq="0.02", ap="44000"), SYMBOLS)
    assert (done.order.state, done.order.filled, done.order.average, done.order.actual_order_id) == (
        OrderState.FILLED,
        0.02,
        44_000.0,
        "12",
    )
    assert done.complete
    bare = order_update_from_event(_algo("FINISHED"), SYMBOLS)
    assert bare.order.state is OrderState.FILLED and not bare.complete  # filled, but how much: look it up


def test_what_the_raw_event_says_that_ccxt_lost():
    trailing = order_update_from_event(_algo("NEW", o="TRAILING_STOP_MARKET", cp=True, q="0"), SYMBOLS)
    assert trailing.order.order_type == "trailing_stop_market" and trailing.order.close_position
    assert order_update_from_event(_algo("NEW", o="TAKE_PROFIT_MARKET"), SYMBOLS).order.order_type == (
        "take_profit_market"
    )


def test_an_unknown_market_keeps_the_venues_id():
    assert order_update_from_event(_order("NEW", s="NEWUSDT"), SYMBOLS).order.symbol == "NEWUSDT"


def test_an_unknown_status_is_partial_and_a_nameless_update_is_malformed():
    assert not order_update_from_event(_order("NEW_INSURANCE"), SYMBOLS).complete
    for bad in (
        _order("NEW", c=""),
        _order("NEW", s=None),
        _order("", "0"),
        {"e": "ORDER_TRADE_UPDATE", "o": "nope"},
        _order("FILLED", "0.02", z="lots"),
    ):
        with pytest.raises(ValueError):
            order_update_from_event(bad, SYMBOLS)


def _fact(state: OrderState | None, filled: float = 0.0, event_ms: int | None = 2_000) -> VenueOrderFact:
    return VenueOrderFact(
        client_order_id="C1", symbol=BTC, state=state, filled_qty=filled, event_ms=event_ms, status="x"
    )


@pytest.mark.parametrize(
    "known,fact,action",
    [
        (Known(OrderState.ACKED), _fact(OrderState.FILLED, 0.02), FactAction.SETTLE),
        (Known(OrderState.ACKED), _fact(OrderState.PARTIALLY_FILLED, 0.01), FactAction.SETTLE),
        (
            Known(OrderState.PARTIALLY_FILLED, 0.01),
            _fact(OrderState.PARTIALLY_FILLED, 0.015),
            FactAction.SETTLE,
        ),
        (Known(OrderState.CANCELED), _fact(OrderState.FILLED, 0.02), FactAction.SETTLE),  # late fill
        (Known(OrderState.UNKNOWN), _fact(OrderState.ACKED), FactAction.SETTLE),
        (Known(OrderState.ACKED), _fact(OrderState.ACKED), FactAction.SAME),
        (Known(OrderState.FILLED, 0.02), _fact(OrderState.FILLED, 0.02), FactAction.SAME),  # replayed
        (Known(OrderState.PARTIALLY_FILLED, 0.01), _fact(OrderState.PARTIALLY_FILLED, 0.01), FactAction.SAME),
        # never backwards: an older state, a smaller fill, an older event
        (Known(OrderState.FILLED, 0.02), _fact(OrderState.ACKED), FactAction.STALE),
        (
            Known(OrderState.PARTIALLY_FILLED, 0.015),
            _fact(OrderState.PARTIALLY_FILLED, 0.01),
            FactAction.STALE,
        ),
        (Known(OrderState.ACKED, 0.0, 3_000), _fact(OrderState.FILLED, 0.02, 2_000), FactAction.STALE),
        # partial facts (the reconciler's): a lookup while the order may still change
        (Known(OrderState.ACKED), _fact(None), FactAction.LOOKUP),
        (Known(OrderState.CANCELED), _fact(None), FactAction.LOOKUP),
        (Known(OrderState.FILLED, 0.02), _fact(None), FactAction.IGNORED),
    ],
)
def test_fact_action(known, fact, action):
    assert fact_action(known, fact) is action


def test_an_old_fact_without_the_new_fields_still_decodes():
    old = b'{"kind":"venue.order","v":1,"ts_ms":1,"client_order_id":"C1","symbol":"BTC/USDT:USDT","status":"filled"}'
    fact = decode("erl", "erl.venue.order.C1", old)
    assert isinstance(fact, VenueOrderFact) and fact.state is None and fact.filled_qty is None


def test_the_same_update_has_the_same_msg_id_and_a_new_one_another():
    u = order_update_from_event(_order("FILLED", "0.02"), SYMBOLS)
    fact = fact_of(u, "venue_stream")
    assert decode("erl", "erl.venue.order.C1", encode(fact)) == fact
    again = fact_of(order_update_from_event(_order("FILLED", "0.02"), SYMBOLS), "venue_stream")
    partial = fact_of(order_update_from_event(_order("PARTIALLY_FILLED", "0.01"), SYMBOLS), "venue_stream")
    assert fact_msg_id(fact) == fact_msg_id(again) != fact_msg_id(partial)


def test_backoff_is_bounded_and_reasons_are_named():
    t = StreamTiming(backoff_base_sec=0.5, backoff_max_sec=4)
    assert [t.backoff(n) for n in range(6)] == [0, 0.5, 1, 2, 4, 4]
    gone = ccxt.AuthenticationError('binanceusdm {"code":-1125,"msg":"This listenKey does not exist."}')
    assert key_gone(gone) and end_reason(gone) == "listen_key_gone"
    assert end_reason(ccxt.AuthenticationError("binanceusdm -2015")) == "authentication_failed"
    assert end_reason(ccxt.NetworkError("closed")) == "connection_lost"
    assert end_reason(SessionEnded("silent")) == "silent"
    assert end_reason(RuntimeError("bug")) == "internal_error:RuntimeError"


def test_a_long_stream_outage_is_stale_data_and_no_stream_is_not():
    from libs.common.config import KillSettings
    from libs.common.messages import VenueStreamStatus
    from services.risk.kill_switch import KillInputs, KillSwitch
    from services.risk.posture import stream_down_for

    def status(state: str, since: float, at: float) -> VenueStreamStatus:
        return VenueStreamStatus(
            state=state, since_ms=int(since * 1000), ts_ms=int(at * 1000), source_service="venue_stream"
        )

    assert stream_down_for(None, 1_000.0, 30) is None  # no stream service: nothing to judge
    assert stream_down_for(status("up", 900, 990), 1_000.0, 30) is None
    assert stream_down_for(status("up", 900, 950), 1_000.0, 30) == 50  # its heartbeat stopped
    assert stream_down_for(status("down", 940, 999), 1_000.0, 30) == 60

    ks = KillSwitch(KillSettings(stream_down_sec=60), started_at=0)
    fresh = dict(now=1_000.0, data_age_sec=1.0)
    assert not ks.evaluate(KillInputs(**fresh, stream_down_sec=59)).tripped
    tripped = ks.evaluate(KillInputs(**fresh, stream_down_sec=61))
    assert tripped.tripped and "stale_data" in tripped.reasons
    assert not ks.evaluate(KillInputs(**fresh, stream_down_sec=None)).tripped  # up again: released


def _account(positions, **extra):
    return {"e": "ACCOUNT_UPDATE", "E": 2, "T": 1, "a": {"m": "ORDER", "B": [], "P": positions}, **extra}


def test_positions_of_an_account_update():
    symbols = {"BTCUSDT": "BTC/USDT:USDT"}
    msg = _account(
        [
            {"s": "BTCUSDT", "pa": "-0.020", "ps": "BOTH"},
            {"s": "BTCUSDT", "pa": "1", "ps": "LONG"},  # hedge mode: not ours
            {"s": "NEWUSDT", "pa": "3", "ps": "BOTH"},  # a market we do not know
        ]
    )
    [u] = position_updates_from_account_event(msg, symbols.get)
    assert (u.symbol, u.qty, u.event_ms, u.reason) == ("BTC/USDT:USDT", -0.02, 1, "ORDER")
    assert position_updates_from_account_event(_account([]), symbols.get) == []  # a balance-only update


@pytest.mark.parametrize(
    "bad",
    [
        {"e": "ACCOUNT_UPDATE"},
        _account([{"s": "BTCUSDT"}]),
        _account([{"s": "BTCUSDT", "pa": "lots"}]),
        _account("nope"),
    ],
)
def test_an_unreadable_account_update_is_refused_not_guessed(bad):
    with pytest.raises(ValueError):
        position_updates_from_account_event(bad, {"BTCUSDT": "BTC/USDT:USDT"}.get)


class _FakeProClient:
    """What UserStream uses of a ccxt.pro client: the message handler it taps, markets, and a watch
    call that opens the connection and then waits (as watch_orders does when no order reaches ccxt)."""

    def __init__(self) -> None:
        self.connected_cb = None
        self.markets = {BTC: {"symbol": BTC, "id": "BTCUSDT"}}
        self.markets_by_id = {"BTCUSDT": [self.markets[BTC]]}
        self.seen_by_ccxt: list[dict] = []
        self.closed = asyncio.Event()

    def handle_message(self, client, message):
        self.seen_by_ccxt.append(message)

    async def load_markets(self):
        return self.markets

    def set_markets(self, markets):
        self.markets = markets

    async def watch_orders(self):
        self.connected_cb("ws://fake/private/ws")
        await self.closed.wait()
        raise ccxt.NetworkError("closed")

    async def close(self):
        self.closed.set()


async def test_order_and_account_events_are_read_from_the_tap_and_never_reach_ccxt():
    ex = _FakeProClient()
    orders, positions, malformed, downs = [], [], [], []
    up, delivered = asyncio.Event(), asyncio.Event()

    async def on_order(u):
        orders.append(u)
        if len(orders) + len(positions) == 3:
            delivered.set()

    async def on_position(u):
        positions.append(u)
        if len(orders) + len(positions) == 3:
            delivered.set()

    async def on_up():
        up.set()

    async def on_down(reason):
        downs.append(reason)
        stop.set()

    stream = UserStream(
        lambda: ex,
        StreamTiming(silence_sec=60),
        on_order=on_order,
        on_up=on_up,
        on_down=on_down,
        on_malformed=lambda info, error: malformed.append(info),
        on_position=on_position,
    )
    stop = asyncio.Event()
    run = asyncio.ensure_future(stream.run(stop))
    await up.wait()
    tap = ex.handle_message  # the session replaced it before connecting
    for msg in (
        _order("NEW"),
        _algo("NEW"),
        _order("NEW", c=""),  # malformed: counted, not delivered
        _account([{"s": "BTCUSDT", "pa": "0.02", "ps": "BOTH"}]),
        {"e": "ACCOUNT_CONFIG_UPDATE", "E": 3},
    ):
        tap(None, msg)
    await delivered.wait()
    assert [u.order.venue_status for u in orders] == ["NEW", "NEW"] and positions[0].qty == 0.02
    assert malformed == [_order("NEW", c="")["o"]]
    assert [m["e"] for m in ex.seen_by_ccxt] == ["ACCOUNT_CONFIG_UPDATE"]  # only what we do not read
    tap(None, {"e": "listenKeyExpired", "E": "5", "listenKey": "k"})
    await run
    assert downs == ["listen_key_expired"]


def test_the_stream_client_does_not_offer_permessage_deflate():
    from libs.common.config import ExchangeSettings
    from libs.venue.client import stream_client_from_settings

    settings = ExchangeSettings(
        api_url="http://127.0.0.1:1", api_key="k", api_secret="s", ws_url="ws://h:1/ws"
    )
    ws = stream_client_from_settings(settings).options["ws"]
    assert ws["compress"] == 0 and ws["cost"] == 5  # ccxt's own ws options kept
