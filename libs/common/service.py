"""Thin service shell shared by every microservice: NATS + journal + REST + metrics + signals.

A service subclasses ``Service`` and implements ``run_tasks`` (its bus work)
plus ``status``. The REST side is always up, even while NATS is unreachable,
so ``/healthz`` answers and ``/readyz`` says why the service is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import datetime as dt
import functools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import uvicorn
import uvloop
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from libs.common.bus import Publisher, connect_nats, ensure_journal, stored_ts_ms
from libs.common.config import NatsSettings
from libs.common.journal import Journal
from libs.common.logs import RateLimitedLog, log_event
from libs.common.messages import DecodeError, VenueBan, decode
from libs.common.replay import IntentTimeline, order_subjects, replay_timelines
from libs.common.telemetry import HTTP_REQUESTS, VENUE_BANNED_UNTIL, VENUE_BANS, preinit
from libs.venue.limits import VenueLimits, VenuePause


class _QuietServer(uvicorn.Server):
    """uvicorn server that leaves signal handling to the service (it re-raises signals otherwise)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class Bus:
    """What a service has once its bus is connected: never None from then on (no Optional, no asserts)."""

    nc: NatsClient
    js: JetStreamContext
    publisher: Publisher
    journal: Journal


class Service:
    name: str = "service"
    # set by services that talk to the venue (their exchange client's limits) before Service.__init__:
    # an IP ban learned from their own responses is journaled (``venue.ban``) and one learned from the
    # bus pauses their venue calls too (the ban is on the key / IP, not on the process)
    venue_limits: VenueLimits | None = None

    def __init__(self, nats_settings: NatsSettings, http_host: str, http_port: int) -> None:
        self.nats_settings = nats_settings
        self.http_host, self.http_port = http_host, http_port
        self.log = logging.getLogger(f"erl.{self.name}")
        self.stop_event = asyncio.Event()
        self.nc: NatsClient | None = None  # the connection while it is being made, kept or closed
        self._bus: Bus | None = None  # set once connected: handlers read it through ``bus``
        self._not_ready_reason = ""  # why start-up has not finished, when it failed
        self.started_at = time.time()
        self._tasks: list[asyncio.Task] = []
        self._server: _QuietServer | None = None
        self._bus_ready = asyncio.Event()
        preinit(self.name)
        if self.venue_limits is not None:
            self.venue_limits.listeners.append(self._on_venue_pause)
        self.app = self._make_app()

    # ------------------------------------------------------------------ the connected bus

    @property
    def connected(self) -> bool:
        return self._bus is not None

    @property
    def bus(self) -> Bus:
        """The connected bus. Handlers, consumers and prepare run only once it is up; anything earlier is a
        bug of ours and raises rather than passing None along."""
        if self._bus is None:
            raise RuntimeError(f"{self.name}: the bus is not connected yet")
        return self._bus

    @property
    def js(self) -> JetStreamContext:
        return self.bus.js

    @property
    def publisher(self) -> Publisher:
        return self.bus.publisher

    @property
    def journal(self) -> Journal:
        return self.bus.journal

    # ------------------------------------------------------------------ to override

    async def prepare(self) -> None:
        """One-off start-up work once the bus is up (journal recovery...); the service is ready after it."""

    async def run_tasks(self) -> list[Awaitable[None]]:
        """Coroutines to run once the bus is ready (consumers, watchers, loops)."""
        return []

    def status(self) -> dict:
        return {}

    def readiness(self) -> tuple[bool, str]:
        if not self._bus_ready.is_set():
            return False, self._not_ready_reason or "bus not ready"
        if self.nc is None or not self.nc.is_connected:
            return False, "nats disconnected"
        return True, "ok"

    def add_routes(self, app: FastAPI) -> None:
        """Extra REST routes."""

    async def on_stop(self) -> None:
        """Release service resources (exchange clients ...)."""

    async def recent_timelines(self, hours: float) -> dict[str, IntentTimeline]:
        """Intent lifecycles journaled in the last ``hours`` (start-up recovery; raises if unreadable)."""
        if self._bus is None:
            raise RuntimeError("the journal is unreadable before the bus is connected")
        prefix = self.nats_settings.subject_prefix
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
        timelines, _ = await replay_timelines(
            self.js,
            self.nats_settings.stream,
            prefix,
            order_subjects(prefix),
            since=since,
            keep_entries=False,
        )
        return timelines

    # ------------------------------------------------------------------ REST

    def _make_app(self) -> FastAPI:
        app = FastAPI(title=f"erl-{self.name}", version="0.1.0")
        service = self.name

        @app.middleware("http")
        async def timing(request: Request, call_next: Callable) -> Response:
            t = time.perf_counter()
            response = await call_next(request)
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            HTTP_REQUESTS.labels(service, request.method, path, str(response.status_code)).observe(
                time.perf_counter() - t
            )
            return response

        @app.get("/healthz")
        async def healthz() -> dict:
            return {"status": "ok", "service": service}

        @app.get("/readyz")
        async def readyz() -> JSONResponse:
            ok, why = self.readiness()
            return JSONResponse({"ready": ok, "reason": why}, status_code=200 if ok else 503)

        @app.get("/status")
        async def status() -> dict:
            ok, why = self.readiness()
            return {
                "service": service,
                "ready": ok,
                "ready_reason": why,
                "uptime_sec": round(time.time() - self.started_at, 1),
                "nats_connected": bool(self.nc and self.nc.is_connected),
                "journal_backlog": self.journal.backlog if self.journal else None,
                **({"venue": self.venue_limits.status()} if self.venue_limits else {}),
                **self.status(),
            }

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        self.add_routes(app)
        return app

    # ------------------------------------------------------------------ venue bans

    def _on_venue_pause(self, pause: VenuePause) -> None:
        """A new or longer pause in our venue limits: metric, and the journal when it is our own 418."""
        if pause.kind != "ban":
            return
        VENUE_BANNED_UNTIL.labels(self.name).set(pause.until)
        VENUE_BANS.labels(self.name, pause.source).inc()
        if pause.source == "bus":
            log_event(
                self.log,
                "venue.ban_learned",
                logging.ERROR,
                banned_for_sec=round(pause.until - time.time(), 3),
                capped=pause.capped,
                reason=pause.message,
            )
            return
        if self._bus is not None:
            self._bus.journal.emit_nowait(
                VenueBan(
                    banned_until_ms=int(pause.until * 1000),
                    retry_after_sec=pause.retry_after_sec,
                    venue_banned_until_ms=int(pause.venue_until * 1000) if pause.venue_until else None,
                    capped=pause.capped,
                    source_service=self.name,
                    reason=pause.message[:500],
                )
            )

    async def _on_ban_message(self, venue_limits: VenueLimits, m: Msg) -> None:
        try:
            ban = decode(self.nats_settings.subject_prefix, m.subject, m.data, stored_ts_ms(m))
        except DecodeError as e:
            log_event(self.log, "venue.ban_unreadable", logging.WARNING, subject=m.subject, error=str(e))
            return
        if isinstance(ban, VenueBan):
            venue_limits.learn(
                ban.banned_until_ms / 1000,
                retry_after_sec=ban.retry_after_sec,
                message=f"{ban.source_service}: {ban.reason}",
            )

    @property
    def bound_port(self) -> int | None:
        if self._server is None or not self._server.started:
            return None
        for server in self._server.servers:
            for sock in server.sockets:
                return sock.getsockname()[1]
        return None

    # ------------------------------------------------------------------ lifecycle

    async def _connect_until_up(self) -> tuple[NatsClient, JetStreamContext] | None:
        """Connect (and make sure the journal stream exists), retrying until it works; None if stopped first."""
        limited = RateLimitedLog(self.log, 15.0)
        while not self.stop_event.is_set():
            try:
                self.nc = nc = await connect_nats(self.nats_settings, self.name)
                js = nc.jetstream()
                await ensure_journal(js, self.nats_settings)
                return nc, js
            except Exception as e:
                limited("bus.connect_failed", error=f"{type(e).__name__}: {e}")
                if self.nc is not None:
                    with contextlib.suppress(Exception):
                        await self.nc.close()
                    self.nc = None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), 1.0)
        return None

    async def _connect_bus(self) -> Journal | None:
        """Connect, then prepare; the journal once the service is ready, None if stopped first."""
        connected = await self._connect_until_up()
        if connected is None or self.stop_event.is_set():
            return None
        nc, js = connected
        publisher = Publisher(js, self.nats_settings, self.name)
        journal = Journal(publisher, self.name)
        self._bus = Bus(nc, js, publisher, journal)
        if self.venue_limits is not None:
            # core NATS is enough: a ban matters only while it lasts, and the stream keeps the record
            await nc.subscribe(
                f"{self.nats_settings.subject_prefix}.venue.ban.>",
                cb=functools.partial(self._on_ban_message, self.venue_limits),
            )
        await self._prepare_until_done()
        if self.stop_event.is_set():
            return None
        self._bus_ready.set()
        log_event(self.log, "service.bus_ready", service=self.name)
        return journal

    async def start(self) -> None:
        """Start REST and bus work in the running loop; returns once REST is listening."""
        config = uvicorn.Config(
            self.app,
            host=self.http_host,
            port=self.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server = _QuietServer(config)
        self._tasks.append(asyncio.ensure_future(self._server.serve()))
        while not self._server.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # surfaces bind errors
                raise RuntimeError("REST server exited during start")
            await asyncio.sleep(0.01)
        self._tasks.append(asyncio.ensure_future(self._bus_then_tasks()))
        log_event(self.log, "service.started", service=self.name, port=self.bound_port)

    async def _prepare_until_done(self) -> None:
        """Start-up work can fail on a venue or journal hiccup (a 429 on exchangeInfo): try again with
        backoff, loudly; a service must never sit up but not ready without saying why."""
        delay = 0.5
        while not self.stop_event.is_set():
            try:
                await self.prepare()
                return
            except Exception as e:
                log_event(
                    self.log,
                    "service.prepare_failed",
                    logging.ERROR,
                    error=f"{type(e).__name__}: {e}",
                    retry_in_sec=delay,
                )
                self._not_ready_reason = f"start-up failed: {type(e).__name__}: {e}"[:300]
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), delay)
                delay = min(delay * 2, 15.0)

    async def _bus_then_tasks(self) -> None:
        try:
            journal = await self._connect_bus()
        except Exception as e:  # never die silently: say it, and let the supervisor see an unready service
            log_event(self.log, "service.bus_task_failed", logging.CRITICAL, error=f"{type(e).__name__}: {e}")
            raise
        if journal is None:  # stopped first
            return
        work = [journal.run_flusher(self.stop_event), *await self.run_tasks()]
        results = await asyncio.gather(*work, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                self.log.error("task ended with %r", r)

    async def wait_ready(self, within_sec: float = 10.0) -> None:
        await asyncio.wait_for(self._bus_ready.wait(), within_sec)

    async def stop(self) -> None:
        self.stop_event.set()
        if self._bus is not None:
            self._bus.journal.wake()
        if self._server is not None:
            self._server.should_exit = True
        _, pending = await asyncio.wait(self._tasks, timeout=10.0)
        for t in pending:
            t.cancel()
        await self.on_stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        log_event(self.log, "service.stopped", service=self.name)

    async def crash(self) -> None:
        """Tests only: die like a killed process (no drain, handlers abandoned mid-flight)."""
        # cancel first: setting stop_event would start a graceful drain. Cancel until done: under 3.11 a
        # cancel landing as an awaited reply arrives is swallowed inside library code (nats-py's request
        # awaits asyncio.wait_for), and the task runs on as if nothing happened
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self.stop_event.set()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        await self.on_stop()

    async def serve_forever(self) -> None:
        """Entry point for ``python -m services.X``: run until SIGINT/SIGTERM, then shut down cleanly.

        ``ERL_PROFILE=<dir>`` (benchmarks only) profiles the run with cProfile on this process's CPU
        clock (time waiting for I/O or for a core does not count) and writes ``<dir>/<service>-<pid>.prof``
        on a clean stop.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        profile_dir = os.environ.get("ERL_PROFILE", "").strip()
        profiler = cProfile.Profile(time.process_time) if profile_dir else None
        if profiler is not None:
            profiler.enable()
        await self.start()
        await self.stop_event.wait()
        await self.stop()
        if profiler is not None:
            profiler.disable()
            os.makedirs(profile_dir, exist_ok=True)
            profiler.dump_stats(os.path.join(profile_dir, f"{self.name}-{os.getpid()}.prof"))


def run_service(service: Service) -> None:
    """``python -m services.X``: serve on uvloop, libuv's event loop in C (the loop's own work per bus
    message and per venue call was the largest single share of a service's CPU on the plain loop)."""
    uvloop.run(service.serve_forever())
