"""Entry service: signals in, guarded entry intents out, stage-1 protection after fills.

Guard knobs are read-only here (KV watch); when they cannot be read, no new
entries. The notional cap counts at the venue's mark price this service reads
itself (cached, bounded staleness; a signal's ``ref_price`` is informational
only); when no mark can be read, no new entries either. Every decision is
journaled (``entry.decision``). When an entry
fills, a close-position stop (and optional take-profit) is sent at once; if
the stop cannot be placed, a ``Stage1GapAssertion`` starts the reconciler's
gap clock immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass

import nats.js.errors

from libs.common.bus import BusUnavailable, ConsumerLoop, ConsumerSpec, Delivery
from libs.common.config import EntrySettings, ExchangeSettings, GuardSettings, NatsSettings
from libs.common.guard import GuardView
from libs.common.ids import Bucket
from libs.common.logs import log_event
from libs.common.marks import MarkCache, read_marks
from libs.common.messages import (
    BusMessage,
    GuardKnobs,
    OrderIntent,
    OrderTransition,
    Signal,
    SignalDecision,
    Stage1GapAssertion,
    transition_filters,
)
from libs.common.protection import stage1_intents
from libs.common.service import Service
from libs.common.state_machine import TERMINAL_ORDER_STATES, OrderState
from libs.common.telemetry import ENTRY_BLOCKS, SIGNALS, STAGE1_GAPS, Children
from libs.venue.client import limits_from_settings, make_exchange
from services.entry.intents import entry_intent_from_signal
from services.entry.policy import Waiting, entry_decision
from services.entry.waiting import Unanswered

REMEMBER = 10_000
_SIGNALS = Children(SIGNALS)
STOP_FAILED = frozenset({OrderState.REJECTED, OrderState.FAILED, OrderState.BLOCKED})
# the transitions ``on_transition`` acts on (fills of entries, ends of entries and stops, stops placed);
# the consumer is handed only these: about half of all transitions are SUBMITTING alone
FILLS_STATES = TERMINAL_ORDER_STATES | STOP_FAILED | {OrderState.ACKED, OrderState.PARTIALLY_FILLED}


@dataclass
class EntryContext:
    intent: OrderIntent
    signal: Signal | None
    protected: bool = False
    # the intent is known to be in the journal (its publish acked, or the journal holds it); until then
    # it counts as open (it may have been stored) and is sent again under its own msg id
    stored: bool = True
    decided: bool = True  # its acceptance is journaled
    knobs: GuardKnobs | None = None  # the knobs it was accepted under


class EntryService(Service):
    name = "entry"

    def __init__(
        self,
        nats_settings: NatsSettings,
        settings: EntrySettings,
        guard_settings: GuardSettings | None = None,
        exchange_settings: ExchangeSettings | None = None,
    ) -> None:
        self.settings = settings
        self.guard_settings = guard_settings or GuardSettings()
        ex = exchange_settings or ExchangeSettings()
        # public calls only (the venue's mark price for the notional cap)
        self.ex = make_exchange(
            api_url=ex.api_url,
            api_key="",
            api_secret="",
            timeout_ms=ex.timeout_ms,
            venue_limits=limits_from_settings(ex),
        )
        self.venue_limits = self.ex.venue_limits
        self.guard: GuardView | None = None
        self.entries: OrderedDict[str, EntryContext] = OrderedDict()  # entry client id -> context
        self.stops: dict[
            str, tuple[str, str]
        ] = {}  # stage-1 stop client id -> (entry correlation id, symbol)
        self.open_entries: set[str] = set()
        self.unsent: set[str] = set()  # accepted entries whose intent publish failed: not yet stored
        # sent and not yet answered by the router: entries, and the stage-1 orders of filled ones (positions
        # waiting for their stop hold new entries back)
        self.entries_waiting = Unanswered(settings.unanswered_expire_sec)
        self.stops_waiting = Unanswered(settings.unanswered_expire_sec)
        self.max_waiting = Waiting(settings.max_entries_waiting, settings.stop_waiting_sec)
        self.last_entry_at: dict[str, float] = {}
        self.marks = MarkCache(
            lambda symbols: read_marks(self.ex, symbols),
            fresh_sec=settings.price_cache_sec,
            max_stale_sec=settings.price_max_stale_sec,
            service=self.name,
        )
        self.counts: dict[str, int] = {}
        super().__init__(nats_settings, settings.http_host, settings.http_port)

    async def prepare(self) -> None:
        """Open entries survive a restart: count them from the journal."""
        try:
            timelines = await self.recent_timelines(hours=1)
        except Exception as e:
            log_event(self.log, "entry.recover_failed", logging.ERROR, error=f"{type(e).__name__}: {e}")
            return
        for t in timelines.values():
            if (
                t.intent is not None
                and t.intent.bucket is Bucket.ENTRY
                and t.state not in TERMINAL_ORDER_STATES
            ):
                self.open_entries.add(t.intent.client_order_id)
                self._remember(EntryContext(t.intent, None))

    async def run_tasks(self) -> list[Awaitable[None]]:
        prefix = self.nats_settings.subject_prefix
        self.guard = GuardView(
            self.bus.nc,
            self.nats_settings.kv_bucket,
            require_knobs=self.guard_settings.require_knobs,
            stale_after_sec=self.guard_settings.stale_after_sec,
        )
        signals = ConsumerLoop(
            self.js,
            self.publisher,
            self.nats_settings.stream,
            ConsumerSpec("entry", [f"{prefix}.signal.>"], max_deliver=self.settings.max_deliver),
            self.handle,
            service=self.name,
            key_fn=lambda m: getattr(m, "symbol", "-"),
            before_ack=self.journal.flush,
        )
        fills = ConsumerLoop(
            self.js,
            self.publisher,
            self.nats_settings.stream,
            # new on first creation (never protect fills from before this service existed), then resume
            ConsumerSpec(
                "entry-fills",
                transition_filters(prefix, FILLS_STATES),
                deliver_new=True,
                max_ack_pending=1024,
            ),
            self.on_transition,
            service=self.name,
            before_ack=self.journal.flush,
        )
        self.consumer, self.fills = signals, fills
        return [
            self.guard.run(self.stop_event),
            self._signals_when_guard_loaded(signals),
            fills.run(self.stop_event),
            self._send_unsent_until_stopped(),
        ]

    async def _signals_when_guard_loaded(self, signals: ConsumerLoop) -> None:
        """Signals before the first knob read would all be refused as 'guard_unavailable': wait a little."""
        guard = self.guard
        assert guard is not None
        with contextlib.suppress(TimeoutError):
            await guard.wait_until(lambda k: guard.loaded, self.guard_settings.stale_after_sec)
        await signals.run(self.stop_event)

    def _remember(self, ctx: EntryContext) -> None:
        self.entries[ctx.intent.client_order_id] = ctx
        while len(self.entries) > REMEMBER:
            old_cid, _ = self.entries.popitem(last=False)
            self.open_entries.discard(old_cid)
            self.unsent.discard(old_cid)
            self.entries_waiting.answered(old_cid)

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # ------------------------------------------------------------------ signals

    async def handle(self, msg: BusMessage, delivery: Delivery) -> None:
        if isinstance(msg, Signal):
            await self.on_signal(msg)

    async def on_signal(self, signal: Signal) -> None:
        knobs = self.guard.current() if self.guard else None
        intent = entry_intent_from_signal(signal, default_leverage=self.settings.default_leverage)
        ctx = self.entries.get(intent.client_order_id)
        if ctx is not None:
            # accepted before (redelivered, or its intent recovered from the journal): that decision
            # stands and is never taken again (its own open entry would refuse it); finish sending it
            self._count("duplicate_signal")
            ctx.signal = ctx.signal or signal  # a recovered entry gets its signal's stop prices back
            await self._send(ctx)
            return
        # the caps' price is the venue's mark read here (cached, bounded staleness), never the signal's
        # ref_price or limit alone; read only when an entry could pass
        mark = await self.marks.get(signal.symbol) if knobs is not None and knobs.allow_entries else None
        decision = entry_decision(
            signal,
            knobs,
            now=time.time(),
            last_entry_at=self.last_entry_at.get(signal.symbol),
            open_entries=len(self.open_entries),
            mark_price=mark,
            waiting=self._waiting(),
            max_waiting=self.max_waiting,
        )
        if not decision.accepted:
            ENTRY_BLOCKS.labels(decision.reason.split(":", 1)[0]).inc()
            await self._decided(signal, knobs, decision.reason, None)
            return
        intent = intent.model_copy(update={"notional_usdt": decision.notional_usdt})
        ctx = EntryContext(intent, signal, stored=False, decided=False, knobs=knobs)
        self._remember(ctx)
        self.open_entries.add(intent.client_order_id)
        self.entries_waiting.sent(intent.client_order_id, time.monotonic())
        self.last_entry_at[signal.symbol] = time.time()
        await self._send(ctx)

    def _waiting(self) -> Waiting:
        now = time.monotonic()
        return Waiting(self.entries_waiting.count(now), self.stops_waiting.oldest_sec(now))

    async def _send(self, ctx: EntryContext) -> None:
        """Store an accepted entry's intent, then journal its acceptance, each once.

        A failed publish leaves the intent's fate open (it may have been stored without an ack), so the
        entry stays counted as open and the publish is repeated under the same msg id (the journal stores
        it once) by the signal's redelivery or, if that never comes, by ``_send_unsent_until_stopped``.
        Beyond the dedup window a repeat could store a second copy, so from the second attempt on the
        journal is asked first. A late intent is not a late order: the router refuses entries older than its
        ``intent_max_age_sec``, and that refusal ends the open entry."""
        cid = ctx.intent.client_order_id
        if not ctx.stored:
            try:
                if cid in self.unsent and await self._journaled(ctx.intent):
                    self._count("unsent_found_stored")
                else:
                    await self.publisher.publish(ctx.intent, ctx.intent.intent_id)
            except Exception:
                if cid not in self.unsent:
                    self.unsent.add(cid)
                    self._count("intent_publish_failed")
                raise
            ctx.stored = True
        self.unsent.discard(cid)
        if not ctx.decided and ctx.signal is not None:
            ctx.decided = True
            await self._decided(ctx.signal, ctx.knobs, "", ctx.intent)

    async def _journaled(self, intent: OrderIntent) -> bool:
        """Is ``intent`` in the journal? One direct get of its subject (the stream leader answers)."""
        try:
            await self.js.get_last_msg(self.nats_settings.stream, self.publisher.subject(intent))
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def _send_unsent_until_stopped(self) -> None:
        """Entries whose signal will not come again (dead-lettered, or the bus was away for longer than its
        redeliveries) are sent from here; until then each stays an open entry."""
        while not self.stop_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), self.settings.unsent_retry_sec)
            for cid in sorted(self.unsent):
                ctx = self.entries.get(cid)
                if ctx is None:
                    self.unsent.discard(cid)
                    continue
                try:
                    await self._send(ctx)
                except Exception as e:
                    log_event(
                        self.log,
                        "entry.unsent_retry_failed",
                        logging.WARNING,
                        client_order_id=cid,
                        error=f"{type(e).__name__}: {e}",
                    )
                    break  # the bus is still away: the next round tries again

    async def _decided(
        self, signal: Signal, knobs: GuardKnobs | None, refusal: str, intent: OrderIntent | None
    ) -> None:
        """Count, journal and log one decision (``intent`` None = refused for ``refusal``)."""
        outcome = "sent" if intent is not None else "refused"
        _SIGNALS(outcome).inc()
        self._count(outcome)
        await self.journal.emit(
            SignalDecision(
                signal_id=signal.signal_id,
                symbol=signal.symbol,
                accepted=intent is not None,
                reason=refusal,
                correlation_id=intent.correlation_id if intent else None,
                guard_mode=knobs.mode if knobs else None,
            )
        )
        log_event(
            self.log,
            f"entry.{outcome}",
            # an accepted signal is routine (and journaled with its decision); a refusal is worth a look
            logging.DEBUG if intent is not None else logging.INFO,
            signal_id=signal.signal_id,
            symbol=signal.symbol,
            reason=refusal,
            correlation_id=intent.correlation_id if intent else None,
            client_order_id=intent.client_order_id if intent else None,
        )

    # ------------------------------------------------------------------ fills -> stage-1 protection

    async def on_transition(self, msg: BusMessage, delivery: Delivery) -> None:
        if not isinstance(msg, OrderTransition):
            return
        # every state handed to us is an answer of the router
        self.entries_waiting.answered(msg.client_order_id)
        self.stops_waiting.answered(msg.client_order_id)
        if msg.bucket is Bucket.ENTRY:
            await self._on_entry_transition(msg)
        elif msg.client_order_id in self.stops and msg.to_state in STOP_FAILED:
            entry_correlation_id, symbol = self.stops.pop(msg.client_order_id)
            STAGE1_GAPS.inc()
            self._count("stage1_gap")
            await self.journal.emit(
                Stage1GapAssertion(
                    correlation_id=entry_correlation_id,
                    symbol=symbol,
                    reason=f"stop {msg.to_state.value}: {msg.reason}",
                    stop_client_order_id=msg.client_order_id,
                )
            )
            log_event(
                self.log,
                "entry.stage1_gap",
                logging.ERROR,
                symbol=symbol,
                correlation_id=entry_correlation_id,
                reason=msg.reason,
            )
        elif msg.client_order_id in self.stops and (
            msg.to_state is OrderState.ACKED or msg.to_state in TERMINAL_ORDER_STATES
        ):
            self.stops.pop(msg.client_order_id, None)  # placed, or over without a gap of its own to assert

    def _track_entry(self, t: OrderTransition) -> EntryContext | None:
        """An entry's transition: an ended one is no longer open; any one proves its intent is stored."""
        if t.to_state in TERMINAL_ORDER_STATES:
            self.open_entries.discard(t.client_order_id)
        ctx = self.entries.get(t.client_order_id)
        if ctx is not None:
            ctx.stored = True  # the router acted on it (its acceptance is still journaled by ``_send``)
        return ctx

    async def _on_entry_transition(self, t: OrderTransition) -> None:
        ctx = self._track_entry(t)
        if t.to_state not in (OrderState.FILLED, OrderState.PARTIALLY_FILLED) or not t.filled_qty:
            return
        if ctx is not None and ctx.protected:
            return
        side = t.side or (ctx.intent.side if ctx else None)
        if side is None:
            return
        signal = ctx.signal if ctx else None
        # a fill can be learned without its price (a lookup or a cancel answer that says only how much):
        # the stop is then placed from the venue's mark, never from nothing
        ref_price = t.avg_price or await self.marks.get(t.symbol)
        if not ref_price and not (signal and signal.stop_loss_price):
            await self._stage1_unpriced(t)
            return
        intents = stage1_intents(
            entry_intent_id=t.intent_id,
            entry_correlation_id=t.correlation_id,
            symbol=t.symbol,
            entry_side=side,
            fill_price=ref_price or 0.0,
            # a trailing stop covers the whole entry, not just the first partial fill
            qty=(ctx.intent.qty if ctx else None) or t.filled_qty,
            stop_loss_price=signal.stop_loss_price if signal else None,
            take_profit_price=signal.take_profit_price if signal else None,
            default_stop_pct=self.settings.default_stop_pct,
            trailing_callback_rate=signal.trailing_callback_rate if signal else None,
            trailing_activation_price=signal.trailing_activation_price if signal else None,
        )
        if not intents[0].stop_price or intents[0].stop_price <= 0:
            return
        if ctx is not None:
            ctx.protected = True
        for i in intents:
            if i.order_type == "stop_market":  # the stop-loss is the protection; a trailing stop is extra
                self.stops[i.client_order_id] = (t.correlation_id, t.symbol)
                while len(self.stops) > REMEMBER:  # a stop never heard of again: the reconciler covers it
                    self.stops.pop(next(iter(self.stops)))
            self.stops_waiting.sent(i.client_order_id, time.monotonic())
            try:
                await self.publisher.publish(i, i.intent_id)
            except BusUnavailable as e:
                self.stops_waiting.answered(i.client_order_id)  # never sent: the gap clock runs instead
                # could not even ask for the stop: start the gap clock now
                await self.journal.emit(
                    Stage1GapAssertion(
                        correlation_id=t.correlation_id,
                        symbol=t.symbol,
                        reason=f"stop intent not sent: {e}",
                        stop_client_order_id=i.client_order_id,
                    )
                )
        self._count("stage1_sent")

    async def _stage1_unpriced(self, t: OrderTransition) -> None:
        """No fill price, no stop price in the signal and no venue mark: no stop can be priced. The gap
        clock starts now; the reconciler repairs from its own read of the venue."""
        await self.journal.emit(
            Stage1GapAssertion(
                correlation_id=t.correlation_id,
                symbol=t.symbol,
                reason="stop not priced: the fill came without a price and the venue's mark is unavailable",
            )
        )
        self._count("stage1_gap")
        log_event(
            self.log, "entry.stage1_unpriced", logging.ERROR, symbol=t.symbol, correlation_id=t.correlation_id
        )

    # ------------------------------------------------------------------ REST

    def readiness(self) -> tuple[bool, str]:
        ok, why = super().readiness()
        if ok and self.guard is not None and self.guard.current() is None:
            return True, "ready; entries blocked: guard knobs unavailable"
        return ok, why

    def status(self) -> dict:
        return {
            "counts": dict(sorted(self.counts.items())),
            "open_entries": len(self.open_entries),
            "entries_waiting": self.entries_waiting.count(time.monotonic()),
            "stage1_waiting": self.stops_waiting.count(time.monotonic()),
            "stage1_oldest_waiting_sec": round(self.stops_waiting.oldest_sec(time.monotonic()), 3),
            "guard": self.guard.status() if self.guard else None,
            "marks": self.marks.status(),
        }

    async def on_stop(self) -> None:
        await self.marks.close()
        await self.ex.close()
