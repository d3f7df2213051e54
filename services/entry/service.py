"""Entry service (minimal): consumes signals, emits entry intents to the router.

Issue-3 work (guard knobs, stage-1 protection) hangs off ``on_signal``.
"""

from __future__ import annotations

from collections.abc import Awaitable

from libs.common.bus import ConsumerLoop, ConsumerSpec, Delivery
from libs.common.config import EntrySettings, NatsSettings
from libs.common.logs import log_event
from libs.common.messages import BusMessage, Signal
from libs.common.service import Service
from libs.common.telemetry import SIGNALS
from services.entry.intents import entry_intent_from_signal


class EntryService(Service):
    name = "entry"

    def __init__(self, nats_settings: NatsSettings, settings: EntrySettings) -> None:
        self.settings = settings
        self.consumer: ConsumerLoop | None = None
        self.counts: dict[str, int] = {}
        super().__init__(nats_settings, settings.http_host, settings.http_port)

    async def run_tasks(self) -> list[Awaitable[None]]:
        assert self.js and self.publisher
        prefix = self.nats_settings.subject_prefix
        spec = ConsumerSpec(
            durable="entry",
            filter_subjects=[f"{prefix}.signal.>"],
            max_deliver=self.settings.max_deliver,
        )
        self.consumer = ConsumerLoop(
            self.js, self.publisher, self.nats_settings.stream, spec, self.handle, service=self.name
        )
        return [self.consumer.run(self.stop_event)]

    async def handle(self, msg: BusMessage, delivery: Delivery) -> None:
        if not isinstance(msg, Signal):
            return
        await self.on_signal(msg)

    async def on_signal(self, signal: Signal) -> None:
        assert self.publisher
        intent = entry_intent_from_signal(signal, default_leverage=self.settings.default_leverage)
        # msg id = intent id: a redelivered signal republishes the same intent and is deduped
        await self.publisher.publish(intent, intent.intent_id)
        SIGNALS.labels("sent").inc()
        self.counts["sent"] = self.counts.get("sent", 0) + 1
        log_event(
            self.log,
            "entry.intent_sent",
            signal_id=signal.signal_id,
            correlation_id=intent.correlation_id,
            client_order_id=intent.client_order_id,
            symbol=intent.symbol,
        )

    def status(self) -> dict:
        return {"counts": dict(self.counts)}
