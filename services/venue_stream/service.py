"""Venue stream service: the venue's user data stream in, venue facts on the journal out.

Thin shell around ``libs.venue.user_stream``: every order update becomes a ``VenueOrderFact`` on
``<prefix>.venue.order.<client id>`` with a message id made of the update itself, so an update seen
twice (a reconnect, the venue pushing it again) is stored once; the router settles lifecycles from them. Every
(re)connection publishes a ``VenueStreamStatus`` with ``resumed`` (the reconciler then reads the venue
at once: what happened while the stream was down is only there); while down, the status says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from libs.common.aio import wait_event
from libs.common.config import ExchangeSettings, NatsSettings, VenueStreamSettings
from libs.common.logs import RateLimitedLog, log_event
from libs.common.messages import VenueOrderFact, VenuePositionFact, VenueStreamState, VenueStreamStatus
from libs.common.service import Service
from libs.common.telemetry import STREAM_EVENTS, STREAM_SESSIONS, STREAM_UP
from libs.venue.client import limits_from_settings, stream_client_from_settings
from libs.venue.stream_events import StreamOrderUpdate, StreamPositionUpdate
from libs.venue.user_stream import StreamTiming, UserStream


def fact_of(update: StreamOrderUpdate, source: str) -> VenueOrderFact:
    o = update.order
    return VenueOrderFact(
        client_order_id=o.client_order_id,
        symbol=o.symbol,
        is_trigger=o.is_trigger,
        status=(o.venue_status or "")[:32],
        source=source,
        state=o.state if update.complete else None,
        filled_qty=o.filled,
        avg_price=o.average,
        exchange_order_id=o.exchange_order_id,
        actual_order_id=o.actual_order_id,
        event_ms=update.event_ms,
    )


def fact_msg_id(fact: VenueOrderFact) -> str:
    """The update itself: the same update pushed twice is one journal entry (within the dedupe window)."""
    return (
        f"stream.{fact.client_order_id}.{fact.exchange_order_id}.{fact.status}."
        f"{fact.filled_qty}.{fact.event_ms}"
    )


class VenueStreamService(Service):
    name = "venue_stream"

    def __init__(
        self, nats_settings: NatsSettings, exchange_settings: ExchangeSettings, settings: VenueStreamSettings
    ) -> None:
        self.settings = settings
        self.exchange_settings = exchange_settings
        # one limits state for every session's client: a ban outlives the session that got it
        self.venue_limits = limits_from_settings(exchange_settings)
        self.stream = UserStream(
            lambda: stream_client_from_settings(exchange_settings, self.venue_limits),
            StreamTiming(
                keepalive_sec=settings.keepalive_sec,
                silence_sec=settings.silence_sec,
                connect_timeout_sec=settings.connect_timeout_sec,
                backoff_base_sec=settings.backoff_base_sec,
                backoff_max_sec=settings.backoff_max_sec,
            ),
            on_order=self.on_order,
            on_up=self.on_up,
            on_down=self.on_down,
            on_malformed=self.on_malformed,
            on_position=self.on_position,
        )
        self.state: VenueStreamState = "down"
        self.since_ms = int(time.time() * 1000)
        self.reason = "starting"
        self.counts: dict[str, int] = {}
        self._malformed_log = RateLimitedLog(logging.getLogger("erl.venue_stream.malformed"), 10.0)
        super().__init__(nats_settings, settings.http_host, settings.http_port)

    async def run_tasks(self) -> list[Awaitable[None]]:
        await self._publish_status()  # down until the first connection opens
        return [self.stream.run(self.stop_event), self._heartbeat()]

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # ------------------------------------------------------------------ stream callbacks

    async def on_order(self, update: StreamOrderUpdate) -> None:
        fact = fact_of(update, self.name)
        ack = await self.publisher.publish(fact, fact_msg_id(fact))
        outcome = "duplicate" if ack.duplicate else "published"
        STREAM_EVENTS.labels(outcome).inc()
        self._count(outcome)

    async def on_position(self, update: StreamPositionUpdate) -> None:
        fact = VenuePositionFact(
            symbol=update.symbol,
            qty=update.qty,
            reason=update.reason[:32],
            event_ms=update.event_ms,
            source_service=self.name,
        )
        ack = await self.publisher.publish(fact, f"position.{fact.symbol}.{fact.qty}.{fact.event_ms}")
        outcome = "duplicate" if ack.duplicate else "published"
        STREAM_EVENTS.labels(outcome).inc()
        self._count(f"position_{outcome}")

    def on_malformed(self, info: dict[str, Any], error: str) -> None:
        STREAM_EVENTS.labels("malformed").inc()
        self._count("malformed")
        self._malformed_log("stream.malformed_update", logging.WARNING, error=error)

    async def on_up(self) -> None:
        STREAM_UP.set(1)
        await self._set("up", "connected", resumed=True)

    async def on_down(self, reason: str) -> None:
        STREAM_UP.set(0)
        STREAM_SESSIONS.labels(reason).inc()
        self._count(f"ended_{reason}")
        await self._set("down", reason)

    async def _set(self, state: VenueStreamState, reason: str, *, resumed: bool = False) -> None:
        if state != self.state:
            self.since_ms = int(time.time() * 1000)
        self.state, self.reason = state, reason
        log_event(self.log, "stream.status", state=state, resumed=resumed, reason=reason)
        await self._publish_status(resumed=resumed)

    async def _publish_status(self, *, resumed: bool = False) -> None:
        status = VenueStreamStatus(
            state=self.state,
            resumed=resumed,
            reason=self.reason[:300],
            since_ms=self.since_ms,
            connects=self.stream.sessions,
            source_service=self.name,
        )
        await self.journal.emit(status)

    async def _heartbeat(self) -> None:
        while not self.stop_event.is_set():
            await wait_event(self.stop_event, self.settings.status_every_sec)
            if not self.stop_event.is_set():
                await self._publish_status()

    # ------------------------------------------------------------------ REST

    def status(self) -> dict:
        return {
            "stream": {
                "state": self.state,
                "since_ms": self.since_ms,
                "reason": self.reason,
                **self.stream.status(),
            },
            "counts": dict(sorted(self.counts.items())),
        }
