"""The whole stack as real processes, with kill -9 and restart, plus a bus tap and journal reader."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from libs.common.bus import connect_nats
from libs.common.config import NatsSettings
from libs.common.messages import BusMessage, DecodeError, decode
from libs.common.replay import IntentTimeline, order_subjects, replay_timelines
from services.simulator.testing import SimControl
from tools.stack import SERVICES, SIMULATOR, ChildSpec, LocalStack

ADMIN_TOKEN = "chaos-token"

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


class ChaosStack:
    def __init__(self, **env: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="erl-chaos-"))
        self.stack = LocalStack(self.dir, extra_env={**FAST_ENV, **env})
        self.sim = SimControl()
        self.tap = Tap()
        self.nc = None

    # ------------------------------------------------------------------ processes

    def start(self, services: tuple[ChildSpec, ...] = SERVICES) -> ChaosStack:
        self.stack.start_nats()
        sim = self.stack.add(SIMULATOR)
        assert sim.wait_ready(), self.logs("simulator")
        self.sim.base_url = sim.url
        for spec in services:
            self.stack.add(spec)
        for spec in services:
            assert self.stack[spec.name].wait_ready(), self.logs(spec.name)
        return self

    def add(self, spec: ChildSpec, **env: str) -> None:
        self.stack.add(spec, env=env)
        assert self.stack[spec.name].wait_ready(), self.logs(spec.name)

    def kill(self, name: str) -> None:
        self.stack[name].kill()

    def restart(self, name: str) -> None:
        child = self.stack[name]
        child.stop()
        child.start()
        assert child.wait_ready(), self.logs(name)

    def kill_nats(self) -> None:
        assert self.stack.nats
        self.stack.nats.kill()

    def start_nats(self) -> None:
        assert self.stack.nats
        self.stack.nats.start()

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

    # ------------------------------------------------------------------ bus

    @property
    def settings(self) -> NatsSettings:
        assert self.stack.nats
        return NatsSettings(url=self.stack.nats.url, publish_timeout_sec=2.0, publish_attempts=10)

    async def connect(self) -> None:
        self.nc = await connect_nats(self.settings, "chaos-test")
        await self.nc.subscribe("erl.>", cb=self.tap.on_msg)
        await self.nc.flush()

    async def disconnect(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def timelines(self) -> dict[str, IntentTimeline]:
        nc = await connect_nats(self.settings, "chaos-replay", fail_fast=True)
        try:
            timelines, _ = await replay_timelines(nc.jetstream(), "ERL", "erl", order_subjects("erl"))
            return timelines
        finally:
            await nc.close()

    async def wait_journal(
        self, predicate: Callable[[dict[str, IntentTimeline]], bool], within: float = 30.0
    ) -> dict:
        """Poll the journal (the durable truth) until ``predicate`` holds; bounded."""
        deadline = time.monotonic() + within
        while True:
            t = await self.timelines()
            if predicate(t):
                return t
            if time.monotonic() > deadline:
                raise TimeoutError(f"journal condition not met in {within}s; {len(t)} intents")
            await asyncio.sleep(0.2)
