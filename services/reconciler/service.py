"""Reconciler service: compare venue truth with belief every tick, repair protection, publish pressure.

Thin shell around ``tick.reconcile_tick`` (decisions), ``rebuild.rebuild``
(restart) and ``belief.Belief`` (the journal's view). Repairs are reduce-only
stop intents sent through the router, which never policy-blocks them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from fastapi import FastAPI
from nats.aio.msg import Msg

from libs.common.aio import wait_event
from libs.common.bus import BusUnavailable, ConsumerLoop, ConsumerSpec, Delivery, reset_consumer, stored_ts_ms
from libs.common.config import BootSettings, ExchangeSettings, NatsSettings, ReconcilerSettings
from libs.common.ids import Bucket
from libs.common.logs import log_event
from libs.common.messages import (
    BusMessage,
    CancelIntent,
    DecodeError,
    HaltCommand,
    MismatchEvent,
    OrderIntent,
    OrderTransition,
    ProtectionGap,
    RebuildSummary,
    ReconcileSummary,
    RepairAction,
    ReplaceIntent,
    Stage1GapAssertion,
    VenueOrderFact,
    VenuePositionFact,
    VenueStreamStatus,
    decode,
)
from libs.common.service import Service
from libs.common.state_machine import TERMINAL_ORDER_STATES
from libs.common.telemetry import (
    EMERGENCY_EXITS,
    LEFTOVER_CANCELS,
    MISMATCH_STREAK,
    ORPHAN_ORDERS,
    PROTECTION_GAP_AGE,
    PROTECTION_GAP_BREACHED_SYMBOL,
    PROTECTION_GAP_BREACHES,
    PROTECTION_GAPS,
    RECONCILE_INTERVAL,
    RECONCILE_MISMATCHES,
    RECONCILE_READ_FAILURES,
    RECONCILE_REPAIR_SKIPPED,
    RECONCILE_REPAIRS,
    RECONCILE_TICKS,
    STREAM_TRUSTED,
    STREAM_UNCONFIRMED,
    UNPROTECTED_TIME,
)
from libs.venue.binance_usdm import venue_from_settings
from libs.venue.error_policy import describe
from services.reconciler.belief import Belief, KnownOrder
from services.reconciler.orders import vanished_orders
from services.reconciler.read_budget import (
    ReadPlan,
    average_tick_cost,
    next_delay,
    plan_reads,
    sweep_reserve_1m,
    symbols_to_read,
)
from services.reconciler.rebuild import rebuild
from services.reconciler.snapshot import (
    FLAT,
    PositionView,
    Snapshot,
    VenueOrderView,
    order_row,
    venue_positions,
)
from services.reconciler.state import ReconcileState
from services.reconciler.stream_trust import StreamTrust
from services.reconciler.tick import reconcile_tick
from services.reconciler.venue_reader import lookups, read_orders, read_positions, read_snapshot


def intent_symbol(intent: OrderIntent | ReplaceIntent | CancelIntent) -> str:
    return intent.new_order.symbol if isinstance(intent, ReplaceIntent) else intent.symbol


def intent_key(intent: OrderIntent | ReplaceIntent | CancelIntent) -> str:
    """Nats-Msg-Id of a repair: the intent's own id (a cancel's correlation id is one per request)."""
    if isinstance(intent, OrderIntent):
        return intent.intent_id
    if isinstance(intent, ReplaceIntent):
        return intent.new_order.intent_id
    return f"cancel.{intent.correlation_id}"


# a pushed update that says an order ended (algo orders finish, expire, are cancelled or rejected)
_ENDED_STATUSES = frozenset({"FILLED", "CANCELED", "EXPIRED", "FINISHED", "REJECTED", "EXPIRED_IN_MATCH"})


class ReconcilerService(Service):
    name = "reconciler"

    def __init__(
        self,
        nats_settings: NatsSettings,
        exchange_settings: ExchangeSettings,
        settings: ReconcilerSettings,
        boot: BootSettings | None = None,
    ) -> None:
        self.settings = settings
        self.boot = boot or BootSettings()
        # reads only: signed with our own clock (no venue clock sync, unlike the router)
        self.venue = venue_from_settings(exchange_settings, sync_clock=False)
        self.venue_limits = self.venue.limits
        self.belief = Belief(settle_sec=settings.settle_sec)
        self.state = ReconcileState(settings)
        self.rebuild_summary: RebuildSummary | None = None
        self.last_summary: ReconcileSummary | None = None
        self._last_summary_at = 0.0
        self._skipped_seen = 0
        self._breached_series: set[str] = set()  # symbols with a per-symbol breach series
        self._equity: float | None = None
        self._last_sweep = 0.0  # monotonic time of the last every-symbol read
        self._latest_orders: list[VenueOrderView] = []  # each symbol's open orders as last read
        # the venue's positions as last read (None: not read yet)
        self._latest_positions: dict[str, PositionView] | None = None
        # symbols something happened on since their orders were last read (read next tick while the
        # stream is trusted)
        self._changed: dict[str, int] = {}  # symbol -> the number of its latest event
        self._events_seen = 0
        self.trust = StreamTrust(settings.stream_confirm_sec)
        self.last_plan: ReadPlan | None = None
        self.next_delay_sec = settings.interval_sec
        self._tick_done = asyncio.Condition()
        self._wake = asyncio.Event()  # tick now (the venue stream resumed)
        self.stream_status: VenueStreamStatus | None = None  # the venue stream's last word, if it runs
        self._stream_status_at = 0.0
        self.consumer: ConsumerLoop | None = None
        super().__init__(nats_settings, settings.http_host, settings.http_port)

    # ------------------------------------------------------------------ start-up

    def _spec(self) -> ConsumerSpec:
        p = self.nats_settings.subject_prefix
        return ConsumerSpec(
            durable="reconciler",
            filter_subjects=[
                f"{p}.order.transition.>",
                f"{p}.intent.order.>",
                f"{p}.intent.replace.>",
                f"{p}.entry.stage1_gap.>",
                f"{p}.venue.order.>",  # pushed facts (foreign orders too): which symbols to read again
                f"{p}.venue.position.>",  # pushed positions: one moved behind our back is checked at once
            ],
            deliver_new=True,
            max_deliver=3,
        )

    async def prepare(self) -> None:
        # events from now on; everything before is what the venue says right now
        await reset_consumer(self.js, self.nats_settings.stream, self._spec())
        await self.venue.ensure_markets()
        if self.boot.rebuild_on_start:
            await self._rebuild()

    async def _rebuild(self) -> None:
        try:
            timelines = await self.recent_timelines(self.settings.recovery_hours)
            snap = await read_snapshot(self.venue, with_equity=False)
        except Exception as e:
            # no venue at boot: publish that fact; ticks keep trying and risk sees stale data
            self.rebuild_summary = RebuildSummary(ok=False, error=describe(e))
            await self.journal.emit(self.rebuild_summary)
            log_event(self.log, "reconcile.rebuild_failed", logging.ERROR, error=self.rebuild_summary.error)
            return
        plan = rebuild(self.belief, snap, timelines)
        froze = bool(plan.orphans) and self.boot.rebuild_freeze_on_orphans
        self.rebuild_summary = RebuildSummary(
            positions=plan.positions, open_orders=len(snap.orders), orphans=plan.orphans, froze=froze
        )
        await self.journal.emit(self.rebuild_summary)
        log_event(
            self.log,
            "reconcile.rebuilt",
            logging.WARNING if plan.orphans else logging.INFO,
            positions=plan.positions,
            orphans=[o.client_order_id for o in plan.orphans],
            froze=froze,
        )
        if froze:
            reason = f"{len(plan.orphans)} orphan order(s) at start: " + ", ".join(
                f"{o.symbol} {o.client_order_id}" for o in plan.orphans[:5]
            )
            await self.publisher.publish(
                HaltCommand(action="halt", reason=reason, source="reconciler"),
                f"boot-freeze.{self.journal_boot_id}",
            )

    @property
    def journal_boot_id(self) -> str:
        return f"{int(self.started_at * 1000)}"

    async def run_tasks(self) -> list[Awaitable[None]]:
        self.consumer = ConsumerLoop(
            self.js, self.publisher, self.nats_settings.stream, self._spec(), self.on_event, service=self.name
        )
        await self.bus.nc.subscribe(f"{self.nats_settings.subject_prefix}.venue.stream.>", cb=self._on_stream)
        return [self.consumer.run(self.stop_event), self._tick_loop()]

    async def _on_stream(self, m: Msg) -> None:
        """The venue stream's status (core NATS: only the latest matters). A resume means events may have
        been missed while it was down: read the venue now, every symbol's open orders included."""
        try:
            status = decode(self.nats_settings.subject_prefix, m.subject, m.data, stored_ts_ms(m))
        except DecodeError as e:
            log_event(self.log, "reconcile.stream_status_unreadable", logging.WARNING, error=str(e))
            return
        if not isinstance(status, VenueStreamStatus):
            return
        was_up = self.stream_up()
        self.stream_status, self._stream_status_at = status, time.time()
        self.trust.on_status(up=status.state == "up", resumed=status.resumed)
        if status.resumed:
            self._last_sweep = 0.0
            self._wake.set()
        elif was_up and status.state == "down":
            self._wake.set()  # back to the faster cadence now, not after the slow wait

    def stream_up(self) -> bool:
        """The venue stream pushes order updates right now (its status is recent and says up)."""
        st = self.stream_status
        fresh = time.time() - self._stream_status_at < self.settings.stream_status_stale_sec
        return st is not None and st.state == "up" and fresh

    @property
    def stream_trusted(self) -> bool:
        """Up, and every symbol was read since it (re)connected: ticks may read only what changed."""
        return self.trust.trusted(self.stream_up())

    # ------------------------------------------------------------------ journal events -> belief

    async def on_event(self, msg: BusMessage, delivery: Delivery) -> None:
        now = time.time()
        symbol = msg.new_order.symbol if isinstance(msg, ReplaceIntent) else getattr(msg, "symbol", None)
        if isinstance(symbol, str):
            self._mark_changed({symbol})
        if isinstance(msg, VenueOrderFact) and msg.source != self.name:
            ended = msg.state in TERMINAL_ORDER_STATES or msg.status.upper() in _ENDED_STATUSES
            self.trust.on_fact(msg.client_order_id, now, ended=ended)
        elif isinstance(msg, VenuePositionFact):
            last = self._latest_positions
            if last is not None and last.get(msg.symbol, FLAT).qty != msg.qty:
                self._wake.set()  # not what the last read said: read and check it now, not next tick
        if isinstance(msg, OrderTransition):
            self.trust.on_transition(
                msg.client_order_id, msg.from_state, msg.to_state, now, up=self.stream_up()
            )
            self.belief.apply_transition(msg, now)
            if msg.bucket is Bucket.SL and msg.to_state in TERMINAL_ORDER_STATES:
                self._wake.set()  # a stop ended (triggered, cancelled, expired): check its position now
        elif isinstance(msg, OrderIntent):
            self.belief.apply_intent(msg, now)
        elif isinstance(msg, ReplaceIntent):
            self.belief.apply_intent(msg.new_order, now)
        elif isinstance(msg, Stage1GapAssertion):
            if msg.symbol not in self.state.gaps.gaps:
                self.state.gaps.assert_gap(msg.symbol, now, f"stage1: {msg.reason}")
                await self.journal.emit(
                    ProtectionGap(
                        symbol=msg.symbol,
                        state="opened",
                        age_sec=0.0,
                        ttl_sec=self.settings.protection_gap_ttl_sec,
                        reason=f"stage1: {msg.reason}",
                    )
                )

    # ------------------------------------------------------------------ ticks

    async def _tick_loop(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            self._wake.clear()  # a wake from here on (even during this tick) asks for the next one
            try:
                await self.tick_once()
            except Exception as e:  # a bug or the bus down: log, keep ticking; risk sees the silence
                log_event(
                    self.log,
                    "reconcile.tick_failed",
                    logging.ERROR,
                    error=f"{type(e).__name__}: {e}",
                    exc_info=True,
                )
            delay = self.next_delay_sec
            if self.stream_up() and not self.state.gaps.gaps:
                # fills and cancels are pushed: REST is the slower backstop, but never while a position
                # waits for its stop (an open gap is repaired at the fast cadence)
                delay = max(delay, self.settings.stream_up_interval_sec)
            RECONCILE_INTERVAL.set(delay)
            waits = [asyncio.ensure_future(e.wait()) for e in (self.stop_event, self._wake)]
            await asyncio.wait(
                waits, timeout=max(delay - (time.monotonic() - t0), 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            for w in waits:
                w.cancel()
            # woken early: still no faster than the shortest interval (a burst of pushes, fills one after
            # the other, must not spend the venue's weight a tick per push)
            await wait_event(self.stop_event, self.settings.interval_sec - (time.monotonic() - t0))

    async def tick_once(self) -> ReconcileSummary:
        started = time.time()
        try:
            self._check_stream_confirms(started)
            snap = await self._read_venue(with_equity=self.state.tick % self.settings.equity_every_ticks == 0)
            gone = vanished_orders(self.belief, snap)
            answers = await lookups(self.venue, gone)
        except Exception as e:
            RECONCILE_READ_FAILURES.inc()
            summary = ReconcileSummary(
                tick=self.state.tick,
                mismatch_streak=self.state.streak,
                ok=False,
                error=describe(e)[:300],
            )
            await self._publish_summary(summary, force=True)
            return summary
        # an ending the router was not told of stays believed open (as if the venue could not be asked):
        # looked up and reported next tick
        for cid in await self._report_endings(gone, answers):
            del answers[cid]
        result = reconcile_tick(self.belief, snap, answers, self.state, started=started)
        for intent in result.intents:
            # repairs go to the router first: protection must not wait for bookkeeping
            try:
                await self.publisher.publish(intent, intent_key(intent))
            except BusUnavailable as e:
                # the cooldown holds the next attempt; the gap clock keeps running meanwhile
                log_event(
                    self.log,
                    "reconcile.repair_not_sent",
                    logging.ERROR,
                    symbol=intent_symbol(intent),
                    error=str(e),
                )
        for r in result.repairs:
            if r.action == "emergency_exit":
                log_event(
                    self.log,
                    "reconcile.emergency_exit",
                    logging.CRITICAL,
                    symbol=r.symbol,
                    reason=r.reason,
                    client_order_id=r.client_order_id,
                )
        for event in result.events():
            if not isinstance(event, ReconcileSummary):
                await self.journal.emit(event)
        # what this tick found or did is read again next tick
        found = [*result.mismatches, *result.repairs, *result.gap_events]
        self._mark_changed(
            {e.symbol for e in found if isinstance(e, MismatchEvent | RepairAction | ProtectionGap)}
        )
        done = result.summary
        assert done is not None  # reconcile_tick always summarises
        self._metrics(result, done)
        changed = self.last_summary is None or self.last_summary.mismatch_streak != done.mismatch_streak
        await self._publish_summary(
            done, force=bool(result.mismatches or result.repairs or result.gap_events or changed)
        )
        return done

    async def _read_venue(self, *, with_equity: bool) -> Snapshot:
        """Positions, then the open orders of the symbols this tick must read (all of them on a sweep);
        the others as last read."""
        trusted = self.stream_trusted
        STREAM_TRUSTED.set(1 if trusted else 0)
        positions = await read_positions(self.venue)
        last = self._latest_positions
        to_read = symbols_to_read(
            self._watched(positions),
            trusted=trusted,
            changed=self._changed,
            positions={s: p.qty for s, p in positions.items()},
            last_positions=None if last is None else {s: p.qty for s, p in last.items()},
        )
        regular = plan_reads(to_read, sweep=False, with_equity=with_equity)
        sweep_every = self.settings.stream_up_sweep_sec if trusted else self.settings.sweep_every_sec
        sweep = time.monotonic() - self._last_sweep >= sweep_every
        plan = plan_reads(to_read, sweep=True, with_equity=with_equity) if sweep else regular
        up_before_read = self.stream_up()
        marks = dict(self._changed)  # a symbol marked again during the read is read again next tick
        orders, equity = await read_orders(self.venue, plan)
        self._unmark({s: n for s, n in marks.items() if plan.symbols is None or s in plan.symbols})
        if plan.symbols is None:
            self._last_sweep = time.monotonic()
            self.trust.on_sweep(up_throughout=up_before_read and self.stream_up())
        else:
            # the rest: their latest read (orphans stay counted between sweeps)
            orders = orders + [o for o in self._latest_orders if o.symbol not in plan.symbols]
        self._latest_orders = orders
        self._latest_positions = positions
        self._pace(plan, regular, sweep_every)
        if equity is not None:
            self._equity = equity  # the balance is read every few ticks
        return Snapshot(positions, orders, self._equity)

    async def _report_endings(
        self, gone: list[KnownOrder], answers: dict[str, VenueOrderView | None]
    ) -> set[str]:
        """Our orders that left the open orders without the router seeing it (a stop that triggered, an
        order cancelled or expired behind our back): the router journals how they ended. Returns the
        client ids whose report could not be sent."""
        unreported: set[str] = set()
        for o in gone:
            a = answers.get(o.client_order_id)
            if a is None or a.state not in ("filled", "canceled", "expired"):
                continue
            self.trust.on_ending_read(o.client_order_id, time.time(), up=self.stream_up())
            fact = VenueOrderFact(
                client_order_id=o.client_order_id,
                symbol=o.symbol,
                is_trigger=o.is_trigger,
                status=a.state,
                source=self.name,
            )
            try:
                await self.publisher.publish(fact, f"fact.{o.client_order_id}.{a.state}")
            except BusUnavailable as e:
                unreported.add(o.client_order_id)
                log_event(self.log, "reconcile.fact_not_sent", logging.WARNING, error=str(e))
        return unreported

    def _check_stream_confirms(self, now: float) -> None:
        """An order the router placed that the stream never told us about: the stream may be stalled while
        it looks up, so read every symbol now and each tick until a full read under a stream that works."""
        late = self.trust.overdue(now)
        if not late:
            return
        STREAM_UNCONFIRMED.inc(len(late))
        self._last_sweep = 0.0
        log_event(
            self.log,
            "reconcile.stream_unconfirmed",
            logging.WARNING,
            orders=len(late),
            client_order_id=late[0],
            within_sec=self.settings.stream_confirm_sec,
        )

    def _mark_changed(self, symbols: set[str]) -> None:
        for symbol in symbols:
            self._events_seen += 1
            self._changed[symbol] = self._events_seen

    def _unmark(self, read: dict[str, int]) -> None:
        """Forget the marks a read covered (not those set again while it ran)."""
        for symbol, n in read.items():
            if self._changed.get(symbol) == n:
                del self._changed[symbol]

    def _watched(self, positions: dict) -> set[str]:
        """Symbols whose orders a per-symbol tick must read: anything with a position, an order we
        believe open, a believed position or an open protection gap."""
        return (
            set(positions)
            | {o.symbol for o in self.belief.open_orders()}
            | {s for s, q in self.belief.qty.items() if q}
            | set(self.state.gaps.gaps)
        )

    def _pace(self, plan: ReadPlan, regular: ReadPlan, sweep_every: float) -> None:
        """Time to the next tick from the regular tick's cost (sweeps have their own reserve)."""
        s = self.settings
        self.last_plan = plan
        self.next_delay_sec = next_delay(
            base_sec=s.interval_sec,
            max_sec=s.max_interval_sec,
            tick_cost=average_tick_cost(regular, s.equity_every_ticks),
            burst_cost=ReadPlan(regular.symbols, True).cost,
            used_1m=self.venue.limits.used_weight_1m,
            budget_1m=s.weight_budget_share * s.venue_weight_limit_1m,
            reserved_1m=sweep_reserve_1m(regular, sweep_every),
        )
        RECONCILE_INTERVAL.set(self.next_delay_sec)

    async def _publish_summary(self, summary: ReconcileSummary, *, force: bool) -> None:
        now = time.time()
        if force or now - self._last_summary_at >= self.settings.summary_heartbeat_sec:
            await self.journal.emit(summary)
            self._last_summary_at = now
        self.last_summary = summary
        async with self._tick_done:
            self._tick_done.notify_all()

    async def wait_ticks(self, count: int, within_sec: float = 15.0) -> ReconcileSummary:
        """Tests: wait until ``count`` more ticks have completed."""
        target = self.state.tick + count
        async with self._tick_done:
            await asyncio.wait_for(self._tick_done.wait_for(lambda: self.state.tick >= target), within_sec)
        assert self.last_summary is not None
        return self.last_summary

    def _metrics(self, result, summary: ReconcileSummary) -> None:
        RECONCILE_TICKS.observe(summary.duration_ms / 1000)
        for m in result.mismatches:
            RECONCILE_MISMATCHES.labels(m.mismatch).inc()
        for r in result.repairs:
            RECONCILE_REPAIRS.labels(r.action).inc()
            if r.action == "cancel_leftover":
                LEFTOVER_CANCELS.inc()
            elif r.action == "emergency_exit":
                EMERGENCY_EXITS.inc()
        MISMATCH_STREAK.set(summary.mismatch_streak)
        PROTECTION_GAPS.set(summary.open_gaps)
        PROTECTION_GAP_BREACHES.set(summary.gap_breaches)
        PROTECTION_GAP_AGE.set(summary.oldest_gap_sec)
        breached = set(self.state.gaps.breached())
        for symbol in self._breached_series - breached:
            PROTECTION_GAP_BREACHED_SYMBOL.remove(symbol)
        for symbol in breached:
            PROTECTION_GAP_BREACHED_SYMBOL.labels(symbol).set(1)
        self._breached_series = breached
        ORPHAN_ORDERS.set(summary.orphans)
        for g in result.gap_events:
            if g.state == "closed":
                UNPROTECTED_TIME.observe(g.age_sec)
        RECONCILE_REPAIR_SKIPPED.inc(summary.repair_skipped - self._skipped_seen)
        self._skipped_seen = summary.repair_skipped

    # ------------------------------------------------------------------ REST

    def readiness(self) -> tuple[bool, str]:
        ok, why = super().readiness()
        if ok and self.last_summary is not None and not self.last_summary.ok:
            return False, f"venue unreadable: {self.last_summary.error}"
        return ok, why

    def status(self) -> dict:
        s = self.last_summary
        return {
            "last_summary": s.model_dump(mode="json") if s else None,
            "rebuild": self.rebuild_summary.model_dump(mode="json") if self.rebuild_summary else None,
            "belief_positions": {k: v for k, v in self.belief.qty.items() if v},
            # the venue as the last tick read it (operators: `erl status` / `erl orders`)
            "positions": venue_positions(
                self._latest_positions or {},
                self._latest_orders,
                {k: round(time.time() - g.opened_at, 3) for k, g in self.state.gaps.gaps.items()},
            ),
            "open_orders": [order_row(o) for o in self._latest_orders],
            "belief_states": {k: v.value for k, v in self.state.belief_state.items()},
            "open_gaps": {k: round(time.time() - g.opened_at, 3) for k, g in self.state.gaps.gaps.items()},
            "read_plan": {
                "symbols": list(self.last_plan.symbols)
                if self.last_plan and self.last_plan.symbols
                else "all",
                "weight": self.last_plan.cost if self.last_plan else None,
                "next_tick_sec": round(self.next_delay_sec, 3),
                "venue_used_weight_1m": self.venue.limits.used_weight_1m,
            },
            "venue_stream": {
                "up": self.stream_up(),
                "trusted": self.stream_trusted,
                "unconfirmed_orders": self.trust.unconfirmed,
                "state": self.stream_status.state if self.stream_status else None,
                "status_age_sec": round(time.time() - self._stream_status_at, 3)
                if self.stream_status
                else None,
            },
        }

    def add_routes(self, app: FastAPI) -> None:
        @app.post("/reconcile")
        async def reconcile_now() -> dict:
            """Run one tick now (operators, tests)."""
            summary = await self.tick_once()
            return summary.model_dump(mode="json")

    async def on_stop(self) -> None:
        await self.venue.close()
