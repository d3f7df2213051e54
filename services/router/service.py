"""Router service: JetStream intents in, ccxt orders out, every step journaled.

Thin shell: decoding, ordering and dead-lettering are in ``ConsumerLoop``, one per lane (entries;
protection: stops, take-profits, exits, repairs, replaces), so protection never waits behind entries; the
decisions are in ``policy`` / ``submit`` / ``cancel`` / ``replace`` / ``ledger``.
What lives here is the wiring, the in-memory registry of recent orders, the
intent ledger (every intent's last journaled state: an intent is never sent
twice, whatever the bus redelivers), and the resolver that keeps asking the
venue about orders whose outcome is still unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterator

import nats.js.errors
from fastapi import FastAPI, HTTPException

from libs.common.aio import wait_event
from libs.common.bus import ConsumerLoop, ConsumerSpec, Delivery
from libs.common.config import ExchangeSettings, GuardSettings, NatsSettings, RouterSettings
from libs.common.guard import GuardView
from libs.common.journal import EventSink
from libs.common.logs import RateLimitedLog, log_event
from libs.common.marks import MarkCache
from libs.common.messages import (
    BusMessage,
    CancelIntent,
    Lane,
    OrderIntent,
    OrderTransition,
    ReplaceIntent,
    VenueOrderFact,
    decode,
    transition_subjects,
)
from libs.common.retry import RetryPolicy
from libs.common.service import Service
from libs.common.state_machine import OPEN_ORDER_STATES, OrderState, can_transition
from libs.common.telemetry import (
    INTENT_LATENCY,
    INTENTS,
    LEVERAGE_CAPPED,
    NOT_RESENT,
    ORDERS,
    POLICY_BLOCKS,
    ROUTER_BACKLOG,
    ROUTER_ENTRY_LAG,
    UNKNOWN_ORDERS,
    VENUE_FACTS,
)
from libs.venue.binance_usdm import venue_from_settings
from libs.venue.error_policy import VenueError
from libs.venue.parsing import VenueOrder
from services.router.cancel import cancel_order
from services.router.facts import FactAction, Known, fact_action
from services.router.ledger import MAY_EXIST, Admission, IntentLedger, LedgerEntry, LedgerSink, admit
from services.router.lifecycle import Lifecycle
from services.router.load import LagWindow, entry_age_sec, measure, report_due
from services.router.lookup import lookup_intent
from services.router.order_budget import entry_budget_refusal
from services.router.policy import entry_policy
from services.router.replace import cancel_replace_order
from services.router.retrying import Budget
from services.router.submit import OrderSubmitter, SubmitOutcome

# one look at the venue, no retry (the resolver asks again on its next round); its elapsed cap (the
# library default, whatever ROUTER_RETRY_* say) still bounds waiting out a venue pause
SINGLE_TRY = RetryPolicy(max_attempts=1)
REGISTRY_SIZE = 10_000
RECOVERY_HOURS = 24.0  # the journal window the ledger is loaded from at boot
VERIFY_GIVE_UP_SEC = 60.0  # stop re-checking an acknowledged cancel the venue cannot answer about
# each lane's durable consumer (tools/nats_config.py lets only the router create them)
LANE_DURABLES = {Lane.ENTRY: "router", Lane.PROTECT: "router-protect"}


class RouterService(Service):
    name = "router"

    def __init__(
        self,
        nats_settings: NatsSettings,
        exchange_settings: ExchangeSettings,
        settings: RouterSettings,
        guard_settings: GuardSettings | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.exchange_settings = exchange_settings
        self.guard_settings = guard_settings or GuardSettings()
        self.retry_policy = settings.retry_policy
        self.rng = rng or random.Random()
        self.venue = venue_from_settings(exchange_settings)
        # complete from boot on; _load_ledger extends it back over the journal's recovery window
        self.ledger = IntentLedger(RECOVERY_HOURS * 3600, complete_since=time.time())
        self.sink: EventSink  # the journal, recording every transition in the ledger too (prepare)
        self.submitter: OrderSubmitter  # sends through that sink; keeps the leverage it set (prepare)
        self.venue_limits = self.venue.limits
        # the notional cap's price: the venue's mark, read by the router itself (never an intent's number)
        self.marks = MarkCache(
            self.venue.mark_prices,
            fresh_sec=settings.mark_cache_sec,
            max_stale_sec=settings.mark_max_stale_sec,
            service=self.name,
        )
        self.orders: OrderedDict[str, Lifecycle] = OrderedDict()  # client_order_id -> lifecycle
        self.unknown: dict[str, Lifecycle] = {}
        # cancel acknowledged: look once more after a while, a fill may have raced the cancel
        self.verify: dict[str, tuple[Lifecycle, float]] = {}
        self.guard: GuardView | None = None
        self.consumer: ConsumerLoop | None = None  # the entry lane
        self.protect: ConsumerLoop | None = None  # the protect lane
        self.counts: dict[str, int] = {}
        self.entry_lag = LagWindow(settings.load_window_sec)  # how late entries are: risk sheds on it
        super().__init__(nats_settings, settings.http_host, settings.http_port)
        self._limited = RateLimitedLog(self.log)

    # ------------------------------------------------------------------ wiring

    async def prepare(self) -> None:
        self.sink = LedgerSink(self.journal, self.ledger)
        self.submitter = OrderSubmitter(self.venue, self.sink)
        await self._load_order_limits()
        await self._load_ledger()

    async def run_tasks(self) -> list[Awaitable[None]]:
        self.guard = GuardView(
            self.bus.nc,
            self.nats_settings.kv_bucket,
            require_knobs=self.guard_settings.require_knobs,
            stale_after_sec=self.guard_settings.stale_after_sec,
        )
        handled = asyncio.Condition()
        self.consumer = self._lane(Lane.ENTRY, handled)
        self.protect = self._lane(Lane.PROTECT, handled)
        return [
            self.guard.run(self.stop_event),
            self._consume_when_guard_loaded(),
            # protection needs no knobs (exits are never gated on them): it flows from the start
            self.protect.run(self.stop_event),
            self._resolver(),
            self._report_load(),
        ]

    def _lane(self, lane: Lane, handled: asyncio.Condition) -> ConsumerLoop:
        """One lane's durable consumer. Each has its own delivery window (max_ack_pending) and its own
        in-flight bound, so however many entries wait, a stop, an exit or a repair is delivered and
        handled at once (issue 14). Venue facts (the venue stream's order updates, orders the reconciler
        found gone) ride in their order's lane: they stay ordered with it."""
        p = self.nats_settings.subject_prefix
        subjects = [f"{p}.intent.*.{lane.value}.*", f"{p}.venue.order.{lane.value}.*"]
        if lane is Lane.PROTECT:
            # subjects without a lane token (published before lanes existed): handled, never stranded
            subjects += [f"{p}.intent.*.*", f"{p}.venue.order.*"]
        spec = ConsumerSpec(
            durable=LANE_DURABLES[lane],
            filter_subjects=subjects,
            ack_wait_sec=self.settings.ack_wait_sec,
            max_deliver=self.settings.max_deliver,
            max_ack_pending=self.settings.max_in_flight,
        )
        return ConsumerLoop(
            self.js,
            self.publisher,
            self.nats_settings.stream,
            spec,
            self.handle,
            service=self.name,
            key_fn=_symbol_of,
            max_in_flight=self.settings.max_in_flight,
            before_ack=self.journal.flush,
            handled_cond=handled,
        )

    async def _consume_when_guard_loaded(self) -> None:
        """Entries arriving before the knobs load would be refused as 'guard_unavailable'; wait a little.

        If the knobs cannot be read within the staleness window the entry lane consumes anyway:
        a cancel of an entry must flow, and entries stay blocked until the view is live.
        """
        guard = self.guard
        assert guard is not None and self.consumer is not None
        with contextlib.suppress(TimeoutError):
            await guard.wait_until(lambda k: guard.loaded, self.guard_settings.stale_after_sec)
        await self.consumer.run(self.stop_event)

    def budget(self, policy: RetryPolicy | None = None) -> Budget:
        """A fresh budget for one intent; it also bounds venue pauses for the calls made under it."""
        return Budget(policy or self.retry_policy, rng=self.rng, limits=self.venue_limits)

    def _remember(self, life: Lifecycle) -> None:
        self.orders[life.intent.client_order_id] = life
        self.orders.move_to_end(life.intent.client_order_id)
        while len(self.orders) > REGISTRY_SIZE:
            self.orders.popitem(last=False)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # ------------------------------------------------------------------ handlers

    async def handle(self, msg: BusMessage, delivery: Delivery) -> None:
        if isinstance(msg, OrderIntent):
            await self.on_order(msg, delivery)
        elif isinstance(msg, CancelIntent):
            await self.on_cancel(msg)
        elif isinstance(msg, ReplaceIntent):
            await self.on_replace(msg)
        elif isinstance(msg, VenueOrderFact):
            await self.on_venue_fact(msg)

    async def on_order(self, intent: OrderIntent, delivery: Delivery) -> None:
        INTENTS.labels(self.name, "order", intent.bucket.value).inc()
        if not intent.is_exit and not delivery.redelivered:  # a redelivery's age is ack_wait, not queueing
            now = time.time()
            self.entry_lag.add(now, entry_age_sec(intent.ts_ms, now))
        t0 = time.perf_counter()
        known = self.orders.get(intent.client_order_id)
        if known is not None and known.state not in (OrderState.CREATED,):
            # already handled in this process (redelivery after a lost ack): nothing to send
            self._count("duplicate_delivery")
            return
        entry = self.ledger.get(intent.client_order_id) or await self._journaled(intent)
        admission = admit(entry.state if entry else None)
        if admission in (Admission.OPEN, Admission.SETTLED):
            # journaled as resting or ended: sending it again could only place it twice
            assert entry is not None
            self._count(f"not_resent_{admission.value}")
            NOT_RESENT.labels(admission.value).inc()
            log_event(
                self.log,
                "order.not_resent",
                logging.WARNING,
                correlation_id=intent.correlation_id,
                client_order_id=intent.client_order_id,
                state=entry.state.value,
                redelivered=delivery.redelivered,
            )
            if admission is Admission.OPEN:
                self._remember(Lifecycle(intent, self.sink, state=entry.state))
            return
        life = Lifecycle(intent, self.sink, state=entry.state if entry else OrderState.CREATED)
        if entry is not None:  # sent before, by us or a predecessor: void a recvWindow after that
            life.absent_after = self.venue.absent_after(entry.at)
        self._remember(life)
        budget = self.budget()
        try:
            outcome = await self.submitter.resolve_if_sent(life, budget, redelivered=delivery.redelivered)
            if outcome is None:  # never sent (or proven absent): the policy decides right before a send
                refusal = await self._gate(life)
                if refusal:
                    await life.move(OrderState.BLOCKED, refusal)
                    outcome = SubmitOutcome(OrderState.BLOCKED, refusal, life)
                else:
                    outcome = await self.submitter.send(life, budget)
        except Exception:
            await self._internal_error(life)
            raise
        INTENT_LATENCY.observe(time.perf_counter() - t0)
        ORDERS.labels(intent.bucket.value, outcome.state.value).inc()
        self._count(f"order_{outcome.state.value}")
        if outcome.state is OrderState.UNKNOWN:
            self._track_unknown(life)

    async def _gate(self, life: Lifecycle) -> str:
        """Entry-only policy + leverage cap (``life.leverage``: the submitter sets it on the venue before
        sending); returns a refusal reason or ""."""
        intent = life.intent
        guard = self.guard.current() if self.guard else None
        # the notional cap's price, read only when an entry could pass (cached: no venue call per entry)
        mark = None
        if not intent.is_exit and guard is not None and guard.allow_entries:
            mark = await self.marks.get(intent.symbol)
        decision = entry_policy(
            intent,
            guard,
            hard_max_leverage=self.settings.max_leverage,
            max_age_sec=self.settings.intent_max_age_sec,
            now_ms=int(time.time() * 1000),
            mark_price=mark,
        )
        refusal = decision.reason if not decision.allowed else self._entry_budget_refusal(intent)
        if refusal:
            POLICY_BLOCKS.labels(self.name, refusal.split(":", 1)[0]).inc()
            return refusal
        if decision.leverage is None:
            return ""
        if decision.leverage_capped:
            LEVERAGE_CAPPED.inc()
        life.leverage = decision.leverage
        return ""

    def _entry_budget_refusal(self, intent: OrderIntent) -> str:
        """An entry the order budget leaves room for is counted from now (concurrent entries see it)."""
        if intent.is_exit:
            return ""
        limits = self.venue.limits
        refusal = entry_budget_refusal(
            limits.order_limits, limits.order_counts(), self.settings.entry_order_share
        )
        if not refusal:
            limits.reserve_order(intent.client_order_id)
        return refusal

    async def _load_order_limits(self) -> None:
        """The venue's order limits, read once at start; Binance's defaults when it cannot be read."""
        try:
            limits = await self.venue.load_order_limits()
        except VenueError as e:
            limits = self.venue.limits.order_limits
            log_event(self.log, "router.order_limits_unread", logging.WARNING, error=str(e))
        log_event(
            self.log,
            "router.order_limits",
            per_10s=limits.per_10s,
            per_1m=limits.per_1m,
            source=limits.source,
        )

    async def on_cancel(self, msg: CancelIntent) -> None:
        INTENTS.labels(self.name, "cancel", "-").inc()
        life = self.orders.get(msg.client_order_id)
        if life is not None and life.state in (OrderState.ACKED, OrderState.PARTIALLY_FILLED):
            await life.move(OrderState.CANCEL_PENDING, msg.reason or "cancel requested")
        entry = self.ledger.get(msg.client_order_id)
        report = await cancel_order(
            self.venue,
            self.sink,
            self.budget(),
            symbol=msg.symbol,
            client_order_id=msg.client_order_id,
            trigger=msg.is_trigger,
            correlation_id=msg.correlation_id,
            may_exist=entry is not None and entry.state in MAY_EXIST,
            order_correlation_id=entry.correlation_id if entry else None,
        )
        self._count(f"cancel_{report.outcome}")
        if life is None or life.state is not OrderState.CANCEL_PENDING:
            return
        if report.outcome == "canceled":
            await life.move(OrderState.CANCELED, "cancel acked", order=report.order)
            self.verify[msg.client_order_id] = (life, time.time() + self.settings.cancel_verify_after_sec)
        elif report.outcome == "filled":
            await life.move(OrderState.FILLED, "filled before cancel", order=report.order)
        elif report.outcome == "unknown":
            await life.move(OrderState.UNKNOWN, f"cancel outcome unknown: {report.reason}")
            self._track_unknown(life)
        elif report.order is not None and report.order.state is not OrderState.UNKNOWN:
            await life.move(report.order.state, f"cancel {report.outcome}", order=report.order)
        elif report.outcome == "already_gone":
            await life.move(OrderState.CANCELED, "already gone")
        else:
            await life.move(OrderState.ACKED, f"cancel {report.outcome}: {report.reason}")

    async def on_replace(self, msg: ReplaceIntent) -> None:
        INTENTS.labels(self.name, "replace", msg.new_order.bucket.value).inc()
        submitter = self.submitter
        new = self.ledger.get(msg.new_order.client_order_id) or await self._journaled(msg.new_order)
        absent: Lifecycle | None = None  # the replacement, journaled UNKNOWN and then proven never placed
        if new is not None and admit(new.state) is Admission.RESOLVE:
            # maybe sent before (by a predecessor that died, or journaled without a transition): find out
            life = Lifecycle(msg.new_order, self.sink, state=new.state)
            life.absent_after = self.venue.absent_after(new.at)
            found = await submitter.resolve_if_sent(life, self.budget())
            if found is None:
                new, absent = None, life  # proven absent: the replace was never carried out; carry it out now
            else:
                self._remember(life)
                if found.state is OrderState.UNKNOWN:
                    self._track_unknown(life)
        if new is not None:
            # the replacement was sent before (this replace delivered again): never place it twice
            self._count("replace_not_repeated")
            NOT_RESENT.labels(admit(new.state).value).inc()
            log_event(
                self.log,
                "order.replace_not_repeated",
                logging.WARNING,
                correlation_id=msg.correlation_id,
                new_client_order_id=msg.new_order.client_order_id,
                state=new.state.value,
            )
            return
        old = self.ledger.get(msg.old_client_order_id)
        outcome = await cancel_replace_order(
            self.venue,
            self.sink,
            submitter,
            msg,
            self.budget(),
            max_attempts=self.settings.cancel_replace_max_attempts,
            strict=self.settings.replace_strict_transitions,
            old_may_exist=old is None or old.state in MAY_EXIST,
            new_life=absent,
        )
        self._count(f"replace_{outcome.state.value}")
        if absent is not None and absent.state is OrderState.UNKNOWN:
            # journaled UNKNOWN, proven absent, and not sent after all (the old order filled, or the
            # cancel could not be verified): it ends here, or it would hold the reconciler's repairs off
            # as a stop still in flight (soak seed 13)
            await absent.move(OrderState.MOOT, f"not replaced: {outcome.reason}")
        if outcome.new_lifecycle is not None:
            self._remember(outcome.new_lifecycle)
            if outcome.new_lifecycle.state is OrderState.UNKNOWN:
                self._track_unknown(outcome.new_lifecycle)

    async def _internal_error(self, life: Lifecycle) -> None:
        """A bug of ours (never a venue refusal: those arrive classified) broke off handling ``life``. If
        it may have been sent, whether it reached the venue is unknown: the resolver finds out. The
        exception itself goes on to the consumer, which logs it and lets the bus redeliver."""
        self._count("internal_error")
        if life.state in (OrderState.SUBMITTING, OrderState.RETRY_WAIT):
            with contextlib.suppress(Exception):  # the journal itself may be what failed
                await life.move(OrderState.UNKNOWN, "internal_error")
        if life.state is OrderState.UNKNOWN:
            self._track_unknown(life)

    async def _report_load(self) -> None:
        """Publish the entry load (router.load) for risk: every ROUTER_LOAD_EVERY_SEC while loaded,
        every ROUTER_LOAD_IDLE_EVERY_SEC idle. Published directly, not through the journal's queue,
        which is what grows under load."""
        s, last = self.settings, None
        while not self.stop_event.is_set():
            await wait_event(self.stop_event, s.load_every_sec)
            c = self.consumer
            load = measure(
                self.entry_lag,
                time.time(),
                backlog=c.num_pending if c else None,
                in_flight=c.in_flight if c else 0,
                handled=self.entry_lag.count,
            )
            ROUTER_ENTRY_LAG.set(load.lag_sec)
            ROUTER_BACKLOG.set((load.backlog or 0) + load.in_flight)
            if not report_due(load, last, every_sec=s.load_every_sec, idle_every_sec=s.load_idle_every_sec):
                continue
            try:
                await self.publisher.publish(load, f"router.load.{load.ts_ms}")
            except Exception as e:  # BusUnavailable and friends: risk treats a silent router as unknown load
                self._limited("router.load_unpublished", logging.WARNING, error=f"{type(e).__name__}: {e}")
                continue
            last = load

    # ------------------------------------------------------------------ unknown outcomes

    def _track_unknown(self, life: Lifecycle) -> None:
        self.unknown[life.intent.client_order_id] = life
        UNKNOWN_ORDERS.set(len(self.unknown))

    async def _resolver(self) -> None:
        """Keep asking the venue about orders we could not resolve; never forget them. Also look again
        at orders whose cancel was acknowledged a while ago, and keep the ledger to its horizon."""
        while not self.stop_event.is_set():
            await wait_event(self.stop_event, self.settings.resolve_every_sec)
            for cid, life in list(self.unknown.items()):
                with self._logged_internal_error(cid):
                    await self.resolve_once(life)
                if life.state is not OrderState.UNKNOWN:
                    self.unknown.pop(cid, None)
            UNKNOWN_ORDERS.set(len(self.unknown))
            now = time.time()
            self.ledger.prune(now)  # bounded: older intents are checked in the journal itself
            for cid, (life, due) in list(self.verify.items()):
                verified = False
                with self._logged_internal_error(cid):
                    verified = due <= now and await self.late_truth(life, "filled despite the cancel ack")
                if verified:
                    self.verify.pop(cid, None)
                elif now > due + VERIFY_GIVE_UP_SEC:  # the reconciler's drift check is the backstop
                    self.verify.pop(cid, None)
                    log_event(self.log, "order.cancel_unverified", logging.WARNING, client_order_id=cid)

    @contextlib.contextmanager
    def _logged_internal_error(self, client_order_id: str) -> Iterator[None]:
        """One order's bug must not stop the resolver for every other order: log it and go on."""
        try:
            yield
        except Exception as e:
            self._count("internal_error")
            log_event(
                self.log,
                "router.internal_error",
                logging.ERROR,
                client_order_id=client_order_id,
                error=f"{type(e).__name__}: {e}",
                exc_info=True,
            )

    async def on_venue_fact(self, fact: VenueOrderFact) -> None:
        """A venue fact about one of our orders the router did not see happen: a stream update (settled
        from directly) or the reconciler's "gone from open orders" (looked up). Never adopted: a client id
        the router does not know is an orphan, reported."""
        life = self.orders.get(fact.client_order_id)
        if life is None:
            known_id = self.ledger.get(fact.client_order_id) is not None
            self._fact_outcome(FactAction.IGNORED.value if known_id else "orphan", fact)
            return
        last = life.last_order
        known = Known(life.state, last.filled if last else 0.0, life.venue_event_ms)
        action = fact_action(known, fact)
        self._fact_outcome(action.value, fact)
        if action is FactAction.SETTLE:
            assert fact.state is not None
            await life.move(fact.state, f"venue: {fact.status} ({fact.source})", order=_order_of(fact))
            life.venue_event_ms = fact.event_ms or life.venue_event_ms
        elif action is FactAction.SAME:
            life.venue_event_ms = fact.event_ms or life.venue_event_ms
        elif action is FactAction.LOOKUP and not await self.late_truth(
            life, f"venue: {fact.status or 'gone from open orders'} ({fact.source})"
        ):
            self.verify[fact.client_order_id] = (life, time.time())  # the resolver keeps asking

    def _fact_outcome(self, outcome: str, fact: VenueOrderFact) -> None:
        VENUE_FACTS.labels(outcome).inc()
        self._count(f"venue_fact_{outcome}")
        if outcome in ("orphan", "stale"):
            log_event(
                self.log,
                f"order.venue_fact_{outcome}",
                logging.WARNING if outcome == "orphan" else logging.DEBUG,
                client_order_id=fact.client_order_id,
                symbol=fact.symbol,
                status=fact.status,
                source=fact.source,
                event_ms=fact.event_ms,
            )

    async def late_truth(self, life: Lifecycle, reason: str) -> bool:
        """Look ``life``'s order up and journal the venue's final word (a triggered stop ends FILLED
        with the fill of the order it created). False when the venue could not say."""
        intent = life.intent
        res = await lookup_intent(self.venue, self.sink, self.budget(SINGLE_TRY), intent)
        if not res.known or res.order is None:
            return False
        order = res.order
        if order.actual_order_id and order.state is OrderState.FILLED:
            with contextlib.suppress(VenueError):  # the algo's own answer still says how it ended
                made = await self.venue.fetch_by_id(
                    intent.symbol, order.actual_order_id, intent.client_order_id
                )
                order = dataclasses.replace(made, client_order_id=intent.client_order_id)
        if order.state is not life.state and can_transition(life.state, order.state):
            await life.move(order.state, reason, order=order)
            self._count(f"late_truth_{order.state.value}")
        return True

    async def resolve_once(self, life: Lifecycle) -> None:
        intent = life.intent
        single_try = self.budget(SINGLE_TRY)
        started = time.time()
        res = await lookup_intent(self.venue, self.sink, single_try, intent)
        if not res.known:
            return
        if res.order is None:
            if life.absent_after is None or started < life.absent_after:
                return  # not found *yet*: the last send can still be accepted
            # never reached the venue: the intent failed; protection gaps are the reconciler's to repair
            await life.move(OrderState.FAILED, "resolver: not on venue")
        else:
            await life.settle(res.order, "resolver")
        log_event(self.log, "order.resolved", correlation_id=intent.correlation_id, state=life.state.value)

    async def _load_ledger(self) -> None:
        """At boot: every intent's last journaled state goes into the ledger; intents whose outcome is
        still open go back to the resolver. If the journal cannot be read the ledger covers only what
        this process sees: older intents are then checked one by one (``_journaled``)."""
        boot = time.time()
        try:
            timelines = await self.recent_timelines(RECOVERY_HOURS)
        except Exception as e:
            log_event(self.log, "router.recover_failed", logging.ERROR, error=f"{type(e).__name__}: {e}")
            return
        self.ledger.complete_since = boot - RECOVERY_HOURS * 3600
        recovered = 0
        for t in timelines.values():
            if t.intent is None:
                continue
            cid = t.intent.client_order_id
            if t.state is None:
                # journaled as an intent but no transition survived: a predecessor may have sent it
                # just before it died, so it counts as sent at the latest now
                self.ledger.record(cid, OrderState.SUBMITTING, boot, t.correlation_id)
                continue
            at = (t.state_ts_ms or 0) / 1000
            self.ledger.record(cid, t.state, at, t.correlation_id)
            if admit(t.state) is Admission.RESOLVE:
                life = Lifecycle(t.intent, self.sink, state=t.state)
                if t.state is not OrderState.UNKNOWN:
                    await life.move(OrderState.UNKNOWN, "recovered at boot")
                life.absent_after = self.venue.absent_after(at)
                self._remember(life)
                self._track_unknown(life)
                recovered += 1
            elif t.state in OPEN_ORDER_STATES:
                self._remember(Lifecycle(t.intent, self.sink, state=t.state))
            elif t.state is OrderState.CANCELED and at > boot - self._verify_window_sec():
                # a cancel acknowledged shortly before a predecessor died: its check for a fill that
                # raced the cancel died with it, so this process makes it
                life = Lifecycle(t.intent, self.sink, state=t.state)
                self._remember(life)
                self.verify[cid] = (life, at + self.settings.cancel_verify_after_sec)
        log_event(
            self.log,
            "router.recovered",
            unknown=recovered,
            to_verify=len(self.verify),
            intents=len(timelines),
        )

    def _verify_window_sec(self) -> float:
        """How long after its ack a cancel is still checked for a racing fill."""
        return self.settings.cancel_verify_after_sec + VERIFY_GIVE_UP_SEC

    async def _journaled(self, intent: OrderIntent) -> LedgerEntry | None:
        """An intent the ledger does not know: never handled, unless it predates what the ledger covers
        (then the journal itself is asked: one direct get of its last transition)."""
        if self.ledger.covers(intent.ts_ms / 1000):
            return None
        prefix = self.nats_settings.subject_prefix
        last = None  # the latest of its transitions, whichever state (or subject form) it is under
        for subject in transition_subjects(prefix, intent.correlation_id):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                raw = await self.js.get_last_msg(self.nats_settings.stream, subject)
                if last is None or (raw.seq or 0) > (last.seq or 0):
                    last = raw
        if last is None:
            # no transition on record, and too old for the ledger to vouch for: treat it as maybe sent
            return LedgerEntry(OrderState.SUBMITTING, time.time(), intent.correlation_id)
        stored = int(last.time.timestamp() * 1000) if last.time else None
        t = decode(prefix, last.subject or "", last.data or b"", stored)
        assert isinstance(t, OrderTransition)
        return LedgerEntry(t.to_state, t.ts_ms / 1000, t.correlation_id)

    # ------------------------------------------------------------------ REST

    def status(self) -> dict:
        return {
            "counts": dict(sorted(self.counts.items())),
            "unknown_orders": sorted(self.unknown),
            "tracked_orders": len(self.orders),
            "guard": self.guard.status() if self.guard else None,
            "marks": self.marks.status(),
            "consumer_in_flight": {
                "entry": self.consumer.in_flight if self.consumer else 0,
                "protect": self.protect.in_flight if self.protect else 0,
            },
            "consumer_pending": self.consumer.num_pending if self.consumer else None,
            "entry_lag_sec": round(self.entry_lag.max(time.time()), 3),
            "retry_policy": {
                "max_attempts": self.retry_policy.max_attempts,
                "max_elapsed_sec": self.retry_policy.max_elapsed_sec,
            },
        }

    def add_routes(self, app: FastAPI) -> None:
        @app.get("/orders/{client_order_id}")
        async def order(client_order_id: str) -> dict:
            life = self.orders.get(client_order_id)
            if life is None:
                raise HTTPException(404, f"no order {client_order_id} in the router's recent registry")
            return {
                "client_order_id": client_order_id,
                "correlation_id": life.intent.correlation_id,
                "state": life.state.value,
                "reason": life.reason,
                "attempt": life.attempt,
            }

    async def on_stop(self) -> None:
        await self.marks.close()
        await self.venue.close()


def _order_of(fact: VenueOrderFact) -> VenueOrder:
    """A full venue fact as the venue order it describes (what a lookup would have answered)."""
    assert fact.state is not None
    return VenueOrder(
        client_order_id=fact.client_order_id,
        exchange_order_id=fact.exchange_order_id,
        state=fact.state,
        venue_status=fact.status,
        filled=fact.filled_qty or 0.0,
        amount=None,
        average=fact.avg_price,
        actual_order_id=fact.actual_order_id,
        symbol=fact.symbol,
        is_trigger=fact.is_trigger,
    )


def _symbol_of(msg: BusMessage) -> str:
    if isinstance(msg, ReplaceIntent):
        return msg.new_order.symbol
    return getattr(msg, "symbol", "-")
