"""The user data stream, through the real ccxt.pro binanceusdm client (issue 10, item 1).

The client reaches the simulator only through configuration, as it would a real venue: the REST
base URLs and ``urls['api']['ws']['linear']``. Every raw message it receives is recorded (ccxt
drops ``listenKeyExpired`` without a trace, see docs/user-data-stream-notes.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ccxt
import ccxt.pro
import pytest

from libs.venue.client import FAPI_URL_KEYS
from services.simulator.testing import SimulatorThread
from tests.simulator.test_strict_venue import until
from tests.simulator.venue_calls import raises

pytestmark = pytest.mark.integration

BTC = "BTC/USDT:USDT"


def pro_client(sim: Any, **options: Any) -> Any:
    ex = ccxt.pro.binanceusdm(
        {
            "apiKey": "sim-key",
            "secret": "sim-secret",
            "timeout": 2000,
            "options": {
                "fetchCurrencies": False,
                "defaultType": "swap",
                "adjustForTimeDifference": False,
                "maxRetriesOnFailure": 0,
                **options,
            },
        }
    )
    api = dict(ex.urls["api"])
    for key, path in FAPI_URL_KEYS.items():
        api[key] = sim.base_url + path
    api["ws"] = {**api["ws"], "linear": sim.ws_url}
    ex.urls["api"] = api
    return ex


class Watcher:
    """One ccxt.pro client watching orders: what it parsed, every raw message, how its watch ended."""

    def __init__(self, sim: Any, **options: Any) -> None:
        self.sim = sim
        self.ex = pro_client(sim, **options)
        self.raw: list[dict] = []
        self.orders: list[dict] = []
        self.errors: list[BaseException] = []
        self._task: asyncio.Future | None = None
        handle = self.ex.handle_message

        def tap(client: Any, message: Any) -> Any:
            self.raw.append(message)
            return handle(client, message)

        self.ex.handle_message = tap  # before the first connection: the client captures it

    async def start(self) -> Watcher:
        await self.ex.load_markets()
        self.errors.clear()
        before = len(live_connections(self.sim))
        self._task = asyncio.ensure_future(self._watch())
        await until(lambda: len(live_connections(self.sim)) > before or self.errors)
        assert not self.errors and self.sim.stream_state()["listenKey"] == self.key
        return self

    async def _watch(self) -> None:
        while True:
            try:
                got = await self.ex.watch_orders()
            except ccxt.BaseError as e:
                self.errors.append(e)
                return
            self.orders.extend(dict(o) for o in got)

    @property
    def key(self) -> str:
        return self.ex.options["linear"]["listenKey"]

    def order(self, **match: Any) -> dict | None:
        """The latest parsed update matching all of ``match``."""
        hits = [o for o in self.orders if all(o.get(k) == v for k, v in match.items())]
        return hits[-1] if hits else None

    def events(self, kind: str | None = None) -> list[dict]:
        return [m for m in self.raw if kind is None or m.get("e") == kind]

    def updates(self, cid: str) -> list[tuple[str, str]]:
        """(event, status) of every order and algo update for a client id, in arrival order."""
        out = []
        for m in self.raw:
            o = m.get("o") if isinstance(m.get("o"), dict) else {}
            if o.get("c") == cid or o.get("caid") == cid:
                out.append((m["e"], o["X"]))
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.ex.close()


@pytest.fixture
async def watcher(sim):
    w = await Watcher(sim).start()
    yield w
    await w.close()


def live_connections(sim: Any) -> list[dict]:
    return [c for c in sim.stream_state()["connections"] if c["live"]]


# ----------------------------------------------------------------------------- order and account events


async def test_a_market_order_fill_is_pushed(sim, watcher):
    ex = watcher.ex
    await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "M1"})
    await until(lambda: watcher.order(clientOrderId="M1", status="closed"))
    o = watcher.order(clientOrderId="M1", status="closed")
    assert (o["filled"], o["side"], o["type"]) == (0.01, "buy", "market")
    assert watcher.updates("M1") == [("ORDER_TRADE_UPDATE", "NEW"), ("ORDER_TRADE_UPDATE", "FILLED")]
    trade = watcher.events("ORDER_TRADE_UPDATE")[-1]["o"]
    assert (trade["x"], trade["l"], trade["z"], trade["m"]) == ("TRADE", "0.01", "0.01", False)
    assert float(trade["L"]) > 50_000  # a taker buys at the ask, above the mark
    (acct,) = watcher.events("ACCOUNT_UPDATE")
    assert acct["a"]["m"] == "ORDER" and acct["a"]["P"][0]["pa"] == "0.01"


async def test_a_resting_limit_fill_after_a_price_move_is_pushed(sim, watcher):
    await watcher.ex.create_order(BTC, "limit", "buy", 0.01, 49_000, {"clientOrderId": "L1"})
    await until(lambda: watcher.order(clientOrderId="L1", status="open"))
    sim.set_price("BTCUSDT", 48_900)
    await until(lambda: watcher.order(clientOrderId="L1", status="closed"))
    assert watcher.order(clientOrderId="L1", status="closed")["average"] == 49_000
    trade = watcher.events("ORDER_TRADE_UPDATE")[-1]["o"]
    assert (trade["x"], trade["X"], trade["L"], trade["m"]) == ("TRADE", "FILLED", "49000", True)


async def test_a_stop_trigger_shows_the_algo_update_and_the_created_orders_fill(sim, watcher):
    ex = watcher.ex
    await ex.create_order(BTC, "market", "buy", 0.02, None, {"clientOrderId": "E1"})
    stop = await ex.create_order(
        BTC,
        "market",
        "sell",
        0.02,
        None,
        {"stopLossPrice": 45_000, "reduceOnly": True, "clientOrderId": "SL1"},
    )
    await until(lambda: watcher.order(id=stop["id"], status="open"))
    sim.set_price("BTCUSDT", 44_000)
    await until(lambda: watcher.order(id=stop["id"], status="closed"))  # FINISHED
    algo = [m["o"] for m in watcher.events("ALGO_UPDATE")]
    assert [a["X"] for a in algo] == ["NEW", "TRIGGERING", "TRIGGERED", "FINISHED"]
    child = algo[2]["ai"]
    assert child and algo[1]["ai"] == "" and algo[3]["ai"] == child
    assert (algo[3]["aq"], algo[3]["act"]) == ("0.02", "MARKET")
    filled = watcher.order(id=child, status="closed")
    assert filled is not None and filled["filled"] == 0.02 and filled["info"]["ot"] == "STOP_MARKET"
    # the venue's order: algo triggered -> its order placed and filled -> algo finished
    assert watcher.updates("SL1") == [
        ("ALGO_UPDATE", "NEW"),
        ("ALGO_UPDATE", "TRIGGERING"),
        ("ALGO_UPDATE", "TRIGGERED"),
        ("ORDER_TRADE_UPDATE", "NEW"),
        ("ORDER_TRADE_UPDATE", "FILLED"),
        ("ALGO_UPDATE", "FINISHED"),
    ]
    assert watcher.events("ACCOUNT_UPDATE")[-1]["a"]["P"][0]["pa"] == "0"
    times = [int(m["E"]) for m in watcher.raw if "E" in m]
    assert times == sorted(times)


async def test_changes_behind_our_back_are_pushed(sim, watcher):
    ex = watcher.ex
    await ex.create_order(BTC, "limit", "buy", 0.01, 48_000, {"clientOrderId": "R1"})
    await until(lambda: watcher.order(clientOrderId="R1", status="open"))
    sim.cancel_behind_back("BTCUSDT", "R1")
    await until(lambda: watcher.order(clientOrderId="R1", status="canceled"))
    assert watcher.events("ORDER_TRADE_UPDATE")[-1]["o"]["x"] == "CANCELED"

    sim.set_position("BTCUSDT", 0.05, 50_000)
    await until(lambda: watcher.events("ACCOUNT_UPDATE"))
    assert watcher.events("ACCOUNT_UPDATE")[-1]["a"]["P"][0]["pa"] == "0.05"
    stop = await ex.create_order(
        BTC,
        "market",
        "sell",
        0.0,
        None,
        {"stopLossPrice": 40_000, "closePosition": True, "clientOrderId": "C1"},
    )
    await until(lambda: watcher.order(id=stop["id"], status="open"))
    sim.set_position("BTCUSDT", 0)  # flat behind our back: the venue expires the close-position stop
    await until(lambda: watcher.order(id=stop["id"], status="expired"))
    assert watcher.events("ACCOUNT_UPDATE")[-1]["a"]["P"][0]["pa"] == "0"

    await ex.create_order(
        BTC,
        "market",
        "buy",
        0.01,
        None,
        {"stopLossPrice": 60_000, "reduceOnly": False, "clientOrderId": "S2"},
    )
    await until(lambda: watcher.updates("S2"))
    sim.cancel_behind_back("BTCUSDT", "S2")
    await until(lambda: ("ALGO_UPDATE", "CANCELED") in watcher.updates("S2"))


# ----------------------------------------------------------------------------- listenKey lifecycle


async def test_one_key_per_account_and_delete_ends_every_stream(sim, watcher):
    ex = watcher.ex
    assert (await ex.fapiPrivatePostListenKey())["listenKey"] == watcher.key
    before = sim.requests_log()
    assert [(r["method"], r["status"]) for r in before if r["path"] == "/fapi/v1/listenKey"] == [
        ("POST", 200),
        ("POST", 200),
    ]
    second = await Watcher(sim).start()  # another consumer: its POST gets the same key
    try:
        assert second.key == watcher.key and len(live_connections(sim)) == 2
        await ex.fapiPrivateDeleteListenKey()
        await until(lambda: watcher.errors and second.errors)
        assert all(isinstance(w.errors[0], ccxt.NetworkError) for w in (watcher, second))
        await until(lambda: sim.stream_state()["connections"] == [])
        err = await raises(ex.fapiPrivatePutListenKey())
        assert "-1125" in str(err)
    finally:
        await second.close()


async def test_listen_key_calls_need_the_api_key_but_no_signature(sim, watcher):
    bad = pro_client(sim)
    bad.apiKey = "who"
    try:
        err = await raises(bad.fapiPrivatePostListenKey())
        assert isinstance(err, ccxt.AuthenticationError)
    finally:
        await bad.close()
    assert (await watcher.ex.fapiPrivatePutListenKey())["listenKey"] == watcher.key


async def test_keepalive_holds_the_key_and_without_it_the_key_expires():
    with SimulatorThread(listen_key_validity_sec=0.5) as sim:
        # ccxt's own keepalive is off here (see the next test): the consumer sends the PUTs
        w = await Watcher(sim, listenKeyRefreshRate=3_600_000).start()
        try:
            started = time.monotonic()
            while time.monotonic() - started < 0.8:  # past the key's validity, kept alive by PUTs
                await until(lambda: sim.stream_state()["expires_in_ms"] < 250)
                assert (await w.ex.fapiPrivatePutListenKey())["listenKey"] == w.key
            assert live_connections(sim) and not w.events("listenKeyExpired") and not w.errors
            await until(lambda: w.events("listenKeyExpired"))
            await until(lambda: w.errors)
            assert w.events("listenKeyExpired")[0]["listenKey"] == w.key
            assert sim.stream_state()["listenKey"] is None
        finally:
            await w.close()


async def test_ccxt_sends_one_keepalive_and_then_lets_the_key_expire():
    """ccxt 4.5.90 (Python) never reschedules its keepalive PUT: an idle stream's key runs out."""
    with SimulatorThread(listen_key_validity_sec=0.5) as sim:
        w = await Watcher(sim, listenKeyRefreshRate=100).start()
        try:
            await until(lambda: w.events("listenKeyExpired"), within=5)
            puts = [
                r for r in sim.requests_log() if r["method"] == "PUT" and r["path"] == "/fapi/v1/listenKey"
            ]
            assert len(puts) == 1
        finally:
            await w.close()


# ----------------------------------------------------------------------------- stream faults


async def test_drop_cuts_the_connection(sim, watcher):
    sim.add_fault(kind="stream_drop")
    await until(lambda: watcher.errors)
    assert isinstance(watcher.errors[0], ccxt.NetworkError)
    await until(lambda: sim.stream_state()["connections"] == [])


async def test_stall_keeps_the_connection_open_and_sends_nothing(sim, watcher):
    sim.add_fault(kind="stream_stall")
    await watcher.ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "ST1"})
    await until(lambda: sim.stream_state()["connections"][0]["dropped"] >= 3)  # NEW, account, fill
    (conn,) = sim.stream_state()["connections"]
    assert conn["stalled"] and conn["live"] and conn["sent"] == 0
    assert watcher.raw == [] and watcher.errors == []


async def test_a_timed_stall_loses_what_it_covered(sim, watcher):
    sim.add_fault(kind="stream_stall", delay_ms=300)
    await watcher.ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "LOST"})
    await until(lambda: not sim.stream_state()["connections"][0]["stalled"])
    await watcher.ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "SEEN"})
    await until(lambda: watcher.order(clientOrderId="SEEN", status="closed"))
    assert watcher.updates("LOST") == []


async def test_delay_holds_every_event_in_order(sim, watcher):
    sim.add_fault(kind="stream_delay", delay_ms=400, count=None)
    sent = time.monotonic()
    await watcher.ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "D1"})
    await watcher.ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "D2"})
    await until(lambda: watcher.order(clientOrderId="D2", status="closed"))
    assert time.monotonic() - sent >= 0.4
    cids = [m["o"]["c"] for m in watcher.events("ORDER_TRADE_UPDATE")]
    assert cids == ["D1", "D1", "D2", "D2"]


async def test_expiring_the_key_pushes_listen_key_expired_then_closes(sim, watcher):
    old = watcher.key
    sim.add_fault(kind="listen_key_expire")
    await until(lambda: watcher.errors)
    (expired,) = watcher.events("listenKeyExpired")
    assert expired["listenKey"] == old and isinstance(expired["E"], str)  # a string, as Binance sends it
    assert "-1125" in str(await raises(watcher.ex.fapiPrivatePutListenKey()))

    # ccxt keeps the dead key (it ignores listenKeyExpired): its next watch would sit silent on it
    assert watcher.key == old
    watcher.ex.options["linear"] = {
        **watcher.ex.options["linear"],
        "listenKey": None,
        "lastAuthenticatedTime": 0,
    }
    await watcher.start()
    assert watcher.key != old
    await watcher.ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "AFTER"})
    await until(lambda: watcher.order(clientOrderId="AFTER", status="closed"))


async def test_a_dead_key_connection_is_accepted_and_stays_silent(sim, watcher):
    old = watcher.key
    await watcher.ex.fapiPrivateDeleteListenKey()
    await until(lambda: watcher.errors)
    watcher.errors.clear()
    watcher._task = asyncio.ensure_future(watcher._watch())  # ccxt reconnects with the key it cached
    await until(lambda: len(sim.stream_state()["connections"]) == 1)
    assert watcher.key == old and live_connections(sim) == []
    await watcher.ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "Q1"})
    assert sim.stream_state()["connections"][0]["sent"] == 0
