"""Journal writer: lifecycle events go to the stream in order, off the money path.

``emit`` only enqueues: the venue call that follows a SUBMITTING transition
must not wait for a JetStream round trip. One sender task publishes the queue
strictly in order, each event with a ``Nats-Msg-Id`` fixed when it was
emitted, so a publish retried after a timeout is stored once. If NATS is
unreachable the queue simply grows (bounded) and drains when it is back.

Durability point: a consumer must ``await journal.flush()`` before it acks
the message that caused the events, so an acked intent always has its
lifecycle in the journal.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Protocol

from prometheus_client import Gauge

from libs.common.aio import wait_event
from libs.common.bus import BusUnavailable, Publisher
from libs.common.logs import RateLimitedLog
from libs.common.messages import BusMessage

JOURNAL_BACKLOG = Gauge("erl_journal_backlog", "Events waiting to be stored in the journal", ["service"])


class JournalNotFlushed(RuntimeError):
    """Events could not be stored in time; the triggering message must not be acked."""


class EventSink(Protocol):
    async def emit(self, msg: BusMessage) -> None: ...

    async def flush(self, within_sec: float = 10.0) -> None: ...


class Journal:
    def __init__(self, publisher: Publisher, service: str, max_backlog: int = 100_000) -> None:
        self.publisher, self.service = publisher, service
        self.max_backlog = max_backlog
        self._boot = os.urandom(6).hex()
        self._seq = 0  # last sequence handed out
        self._stored = 0  # last sequence stored in the stream
        self._queue: deque[tuple[int, BusMessage, str]] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._limited = RateLimitedLog(logging.getLogger(f"erl.{service}.journal"))
        self.dropped = 0
        self._backlog = JOURNAL_BACKLOG.labels(service)  # set twice per event: looked up once

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def emit(self, msg: BusMessage) -> None:
        self.emit_nowait(msg)

    def emit_nowait(self, msg: BusMessage) -> None:
        """``emit`` for synchronous callers (it only enqueues)."""
        if len(self._queue) >= self.max_backlog:
            # bounded memory beats an OOM during a long outage; visible in /status and logs
            self._queue.popleft()
            self.dropped += 1
            self._limited("journal.dropped_oldest", logging.ERROR, dropped=self.dropped)
        self._seq += 1
        self._queue.append((self._seq, msg, f"{self.service}.{self._boot}.{self._seq}"))
        self._backlog.set(len(self._queue))
        self._wake.set()

    def wake(self) -> None:
        """Let the sender notice a stop without waiting for its idle timeout."""
        self._wake.set()

    async def flush(self, within_sec: float = 10.0) -> None:
        """Wait until everything emitted so far is stored."""
        target = self._seq
        if self._stored >= target:
            return
        try:
            async with asyncio.timeout(within_sec), self._progress:
                await self._progress.wait_for(lambda: self._stored >= target)
        except TimeoutError:
            raise JournalNotFlushed(
                f"{target - self._stored} event(s) not stored after {within_sec}s"
            ) from None

    async def run_flusher(self, stop: asyncio.Event) -> None:
        """The one sender: publish the queue head, in order, until stopped (then drain what it can)."""
        while True:
            if not self._queue:
                if stop.is_set():
                    return
                self._wake.clear()
                await wait_event(self._wake, 1.0)
                continue
            seq, msg, msg_id = self._queue[0]
            try:
                await self.publisher.publish(msg, msg_id)
            except BusUnavailable as e:
                self._limited("journal.backlogging", error=str(e), backlog=len(self._queue))
                if stop.is_set():
                    return
                await wait_event(stop, 0.5)
                continue
            self._queue.popleft()
            self._stored = seq
            self._backlog.set(len(self._queue))
            async with self._progress:
                self._progress.notify_all()
