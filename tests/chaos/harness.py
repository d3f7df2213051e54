"""The whole stack as real processes, with kill -9 and restart, plus a bus tap and journal reader."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats.errors
from nats.js import JetStreamContext

from libs.common.bus import Publisher, connect_nats
from libs.common.config import NatsSettings
from libs.common.ids import Bucket, make_client_order_id, make_intent_id
from libs.common.messages import BusMessage, DecodeError, OrderTransition, Signal, SignalDecision, decode
from libs.common.replay import IntentTimeline, load_journal, order_subjects, replay_timelines
from libs.common.state_machine import OrderState
from services.simulator.testing import SimControl
from tools.natsd import NatsCluster, NatsServer
from tools.stack import SERVICES, SIMULATOR, ChildSpec, LocalStack

BTC = "BTC/USDT:USDT"

ADMIN_TOKEN = "chaos-token"
# what a bus outage may legitimately cost an entry: refused because the guard knobs could not be read
# (bus down: fail safe) or were tightened meanwhile; never lost, never sent twice
# refusals that only say the stack could not vouch for an entry right now (knobs unread or tight, orders
# still waiting for the router's answer after an outage): never a signal lost by mistake
FAIL_SAFE = ("guard_unavailable", "entries_blocked:", "stop_waiting:", "router_behind:")

FAST_ENV = {
    "SIM_TICK_MS": "0",
    "SIM_START_BALANCE": "1000000000",
    "EXCHANGE_TIMEOUT_MS": "1500",
    "GUARD_REQUIRE_KNOBS": "1",
    "GUARD_STALE_AFTER_SEC": "5",
    "RISK_ADMIN_TOKEN": ADMIN_TOKEN,
    "RISK_MIN_ENTRY_CONF": "0",
    "RISK_ENTRY_COOLDOWN_SEC": "0",
    "RISK_MAX_OPEN_ORDERS": "1000",
    "RISK_MAX_NOTIONAL_USDT": "1000000000",
    "RISK_EVAL_INTERVAL_SEC": "0.3",
    "KILL_STALE_DATA_SEC": "4",
    "KILL_API_ERROR_MAX": "1000",
    "ROUTER_RETRY_BASE_DELAY_SEC": "0.05",
    "ROUTER_RETRY_MAX_DELAY_SEC": "0.3",
    "ROUTER_ACK_WAIT_SEC": "2",
    "ENTRY_MAX_DELIVER": "20",
    "RECONCILE_INTERVAL_SEC": "0.3",
    # with the venue stream up the reconciler slows to this; it must stay under KILL_STALE_DATA_SEC or an
    # idle stack trips stale data (the defaults keep 10 s under 30 s)
    "RECONCILE_STREAM_UP_INTERVAL_SEC": "1",
    "RECONCILE_REPAIR_COOLDOWN_SEC": "1",
    "RECONCILE_PROTECTION_GAP_TTL_SEC": "5",
    "RECONCILE_SETTLE_SEC": "0.5",
    "RECONCILE_SUMMARY_HEARTBEAT_SEC": "1",
    "LOG_LEVEL": "INFO",
}


class Tap:
    """Core subscription to every subject: reconnects with the client, so it can miss an outage."""

    def __init__(self) -> None:
        self.msgs: list[BusMessage] = []
        self._cond = asyncio.Condition()

    async def on_msg(self, m: Any) -> None:
        with contextlib.suppress(DecodeError):
            self.msgs.append(decode("erl", m.subject, m.data))
        async with self._cond:
            self._cond.notify_all()

    def of(self, kind: type, **match: Any) -> list:
        return [
            m for m in self.msgs if isinstance(m, kind) and all(getattr(m, k) == v for k, v in match.items())
        ]

    async def wait_for(self, predicate: Callable[[], Any], within: float = 30.0) -> Any:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), within)
        return predicate()


def filled_or_refused_fail_safe(t: IntentTimeline) -> bool:
    """An entry intent that was traded, or refused at the router only by the fail-safe guard."""
    if t.state is OrderState.FILLED:
        return True
    reasons = [e.msg.reason for e in t.entries if isinstance(e.msg, OrderTransition)]
    return t.state is OrderState.BLOCKED and bool(reasons) and reasons[-1].startswith(FAIL_SAFE)


async def wait_entries_allowed(c: ChaosStack, within: float, *, allowed: bool = True) -> None:
    """Poll (bounded) until entry and router both read knobs that allow entries again (``allowed``
    False: that both refuse them)."""
    deadline = time.monotonic() + within

    def reads(name: str) -> bool:
        knobs = (c.get(name, "/status").get("guard") or {}).get("knobs") or {}
        return bool(knobs.get("allow_entries")) is allowed

    while not (reads("entry") and reads("router")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"entries allowed is not {allowed} after {within}s: {c.get('risk', '/guard')}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running(c: ChaosStack) -> AsyncIterator[ChaosStack]:
    """Start the stack and the bus tap; always tear both down (logs stay in ``c.dir``)."""
    try:
        await asyncio.to_thread(c.start)
        await c.connect()
        yield c
    finally:
        await c.disconnect()
        await asyncio.to_thread(c.close)


class ChaosStack:
    def __init__(
        self, cluster: NatsCluster | None = None, passwords: dict[str, str] | None = None, **env: str
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="erl-chaos-"))
        self.stack = LocalStack(self.dir, extra_env={**FAST_ENV, **env})
        self.cluster = cluster  # None: one nats-server of our own
        # per-user NATS passwords when the server runs the deployed config (services as themselves,
        # this harness as the "ops" user); None: an open server
        self.passwords = passwords
        self.sim = SimControl()
        self.tap = Tap()
        self.nc = None

    # ------------------------------------------------------------------ processes

    def start(self, services: tuple[ChildSpec, ...] = SERVICES) -> ChaosStack:
        if self.cluster is None:
            self.stack.start_nats()
        else:
            (self.dir / "logs").mkdir(parents=True, exist_ok=True)
            self.stack.nats = self.cluster.start()
        sim = self.stack.add(SIMULATOR)
        assert sim.wait_ready(), self.logs("simulator")
        self.sim.base_url = sim.url
        for spec in services:
            self.stack.add(spec, env=self.credentials(spec.name))
        for spec in services:
            assert self.stack[spec.name].wait_ready(), self.logs(spec.name)
        return self

    def credentials(self, user: str) -> dict[str, str]:
        if self.passwords is None:
            return {}
        return {"NATS_USER": user, "NATS_PASSWORD": self.passwords[user]}

    def add(self, spec: ChildSpec, **env: str) -> None:
        self.stack.add(spec, env={**self.credentials(spec.name), **env})
        assert self.stack[spec.name].wait_ready(), self.logs(spec.name)

    def kill(self, name: str) -> None:
        self.stack[name].kill()

    def restart(self, name: str) -> None:
        child = self.stack[name]
        child.stop()
        child.start()
        assert child.wait_ready(), self.logs(name)

    def nats_node(self, node: str | None = None) -> NatsServer:
        """Our one nats-server, or the named node of the cluster."""
        if self.cluster is not None:
            assert node, "name the cluster node"
            return self.cluster.nodes[node]
        assert isinstance(self.stack.nats, NatsServer)
        return self.stack.nats

    def kill_nats(self, node: str | None = None) -> None:
        self.nats_node(node).kill()

    def start_nats(self, node: str | None = None) -> None:
        self.nats_node(node).start()

    def logs(self, name: str) -> str:
        path = self.dir / "logs" / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else "(no log)"

    def url(self, name: str, path: str) -> str:
        return self.stack[name].url + path

    def get(self, name: str, path: str) -> dict:
        return httpx.get(self.url(name, path), timeout=5).json()

    def close(self) -> None:
        self.sim.close()
        self.stack.stop()
        if self.cluster is not None:
            self.cluster.close()

    # ------------------------------------------------------------------ bus

    @property
    def settings(self) -> NatsSettings:
        assert self.stack.nats
        return NatsSettings(
            url=self.stack.nats.url,
            publish_timeout_sec=2.0,
            publish_attempts=10,
            **({"user": "ops", "password": self.passwords["ops"]} if self.passwords else {}),
        )

    async def connect(self) -> None:
        self.nc = await connect_nats(self.settings, "chaos-test")
        await self.nc.subscribe("erl.>", cb=self.tap.on_msg)
        await self.nc.flush()

    async def disconnect(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    @contextlib.asynccontextmanager
    async def _journal(self) -> AsyncIterator[JetStreamContext]:
        """A fresh connection for one journal read (the tap's may be mid-reconnect)."""
        nc = await connect_nats(self.settings, "chaos-replay", fail_fast=True)
        try:
            yield nc.jetstream()
        finally:
            await nc.close()

    async def timelines(self) -> dict[str, IntentTimeline]:
        async with self._journal() as js:
            timelines, _ = await replay_timelines(js, "ERL", "erl", order_subjects("erl"))
        return timelines

    async def decisions(self) -> dict[str, SignalDecision]:
        """The entry service's journaled decision per signal id."""
        async with self._journal() as js:
            entries = await load_journal(js, "ERL", "erl", ["erl.entry.decision.>"])
        return {e.msg.signal_id: e.msg for e in entries if isinstance(e.msg, SignalDecision)}

    async def wait_journal(
        self,
        predicate: Callable[[Any], bool],
        within: float = 30.0,
        read: Callable[[], Awaitable[Any]] | None = None,
    ) -> Any:
        """Poll the journal (the durable truth) until ``predicate`` holds; bounded.

        ``read`` says what to read (default: every intent's timeline)."""
        deadline = time.monotonic() + within
        t: Any = {}
        while True:
            try:
                t = await (read or self.timelines)()
            except (nats.errors.Error, TimeoutError) as e:  # the bus is mid-outage: ask again
                last_error = e
            else:
                last_error = None
                if predicate(t):
                    return t
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"journal condition not met in {within}s; {len(t)} read; last error {last_error!r}"
                )
            await asyncio.sleep(0.2)


# ----------------------------------------------------------------------------- helpers the chaos tests share


def entry_cid(signal_id: str) -> str:
    return make_client_order_id(make_intent_id("signal", signal_id, Bucket.ENTRY), Bucket.ENTRY)


async def send_signal(c: ChaosStack, signal_id: str, **kw) -> None:
    pub = Publisher(c.nc.jetstream(), c.settings, "chaos-test")
    await pub.publish(
        Signal(**{"signal_id": signal_id, "symbol": BTC, "side": "buy", "qty": 0.01, **kw}),
        f"signal.{signal_id}",
    )


def venue_orders_by_client_id(c: ChaosStack) -> Counter:
    return Counter(o["clientOrderId"] for o in c.sim.state()["orders"])


def assert_no_duplicates(c: ChaosStack) -> None:
    dup = {cid: n for cid, n in venue_orders_by_client_id(c).items() if n > 1}
    assert dup == {}, f"duplicate orders on the venue: {dup}"


async def wait_entry(c: ChaosStack, signal_id: str, state: OrderState = OrderState.FILLED) -> None:
    """Until the tap sees the entry intent of ``signal_id`` move to ``state``."""
    cid = entry_cid(signal_id)
    await c.tap.wait_for(
        lambda: any(t.to_state is state for t in c.tap.of(OrderTransition, client_order_id=cid))
    )


async def trades_again(c: ChaosStack, signal_id: str, within: float) -> None:
    """After an outage the stack trades by itself: entries allowed again, and a new signal fills."""
    await wait_entries_allowed(c, within=within)
    await send_signal(c, signal_id)
    await wait_entry(c, signal_id)
