"""Journal writer: emit lifecycle events to the stream without ever blocking the money path.

An order already sent to the venue must keep being handled even if NATS is
briefly unreachable, so ``emit`` never raises: events that cannot be stored
wait in an ordered in-memory backlog that a flusher drains when the bus is
back. Each event gets a unique ``Nats-Msg-Id`` when first emitted and keeps it
across publish retries, so a retried publish is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from typing import Protocol

from prometheus_client import Gauge

from libs.common.bus import BusUnavailable, Publisher
from libs.common.logs import RateLimitedLog
from libs.common.messages import BusMessage

JOURNAL_BACKLOG = Gauge("erl_journal_backlog", "Events waiting for the bus", ["service"])


class EventSink(Protocol):
    async def emit(self, msg: BusMessage) -> None: ...


class MemorySink:
    """Collects events; used by unit tests of the pure-ish order logic."""

    def __init__(self) -> None:
        self.events: list[BusMessage] = []

    async def emit(self, msg: BusMessage) -> None:
        self.events.append(msg)

    def of(self, kind: type[BusMessage]) -> list:
        return [e for e in self.events if isinstance(e, kind)]


class Journal:
    def __init__(self, publisher: Publisher, service: str, max_backlog: int = 100_000) -> None:
        self.publisher, self.service = publisher, service
        self._boot = os.urandom(6).hex()
        self._seq = 0
        self._backlog: deque[tuple[BusMessage, str]] = deque(maxlen=max_backlog)
        self._wake = asyncio.Event()
        self._limited = RateLimitedLog(logging.getLogger(f"erl.{service}.journal"))
        self.dropped = 0

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self.service}.{self._boot}.{self._seq}"

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def emit(self, msg: BusMessage) -> None:
        msg_id = self._next_id()
        if not self._backlog:
            try:
                await self.publisher.publish(msg, msg_id)
                return
            except BusUnavailable as e:
                self._limited("journal.backlogging", error=str(e))
        if len(self._backlog) == self._backlog.maxlen:
            self.dropped += 1  # visible in /status; the alternative is unbounded memory
        self._backlog.append((msg, msg_id))
        JOURNAL_BACKLOG.labels(self.service).set(len(self._backlog))
        self._wake.set()

    async def run_flusher(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self._backlog:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            msg, msg_id = self._backlog[0]
            try:
                await self.publisher.publish(msg, msg_id)
            except BusUnavailable:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                continue
            self._backlog.popleft()
            JOURNAL_BACKLOG.labels(self.service).set(len(self._backlog))
