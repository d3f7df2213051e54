"""Journal writer: lifecycle events go to the stream in order, off the money path.

``emit`` only enqueues: the venue call that follows a SUBMITTING transition
must not wait for a JetStream round trip. One sender task publishes the queue
in order, each event with a ``Nats-Msg-Id`` fixed when it was emitted, so a
publish retried after a timeout is stored once. If NATS is unreachable the
queue simply grows (bounded) and drains when it is back.

The sender pipelines: it sends a window of events before awaiting their acks
(one round trip per window, not per event: under load a serial sender was the
queue every lane waited on). A window never holds two events of one intent
(one correlation id), nor two events without one, so even an event that must be
sent again (its ack lost with a connection) is stored after its predecessors of
the same intent: the order that replay and every reader rely on.

Durability point: a consumer must ``await journal.flush()`` before it acks
the message that caused the events, so an acked intent always has its
lifecycle in the journal.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
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


PIPELINE = 64  # events sent before their acks are awaited


def _order_key(msg: BusMessage) -> str:
    """Events with one key are stored strictly in emit order: one intent's, and those without an intent."""
    return getattr(msg, "correlation_id", None) or "-"


class Journal:
    def __init__(self, publisher: Publisher, service: str, max_backlog: int = 100_000) -> None:
        self.publisher, self.service = publisher, service
        self.max_backlog = max_backlog
        self._boot = os.urandom(6).hex()
        self._seq = 0  # last sequence handed out
        self._stored = 0  # last sequence stored in the stream
        self._queue: deque[tuple[int, BusMessage, str]] = deque()
        self._wake = asyncio.Event()
        # flush() callers, by the sequence they wait for: each is woken once, when it is stored (a
        # condition woken for every stored event re-checked every waiter: quadratic under load)
        self._flushes: list[tuple[int, int, asyncio.Future[None]]] = []
        self._flush_ids = itertools.count()
        self._limited = RateLimitedLog(logging.getLogger(f"erl.{service}.journal"))
        self.dropped = 0
        self._backlog_gauge = JOURNAL_BACKLOG.labels(service)  # set twice per event: looked up once

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
        self._backlog_gauge.set(len(self._queue))
        self._wake.set()

    def wake(self) -> None:
        """Let the sender notice a stop without waiting for its idle timeout."""
        self._wake.set()

    async def flush(self, within_sec: float = 10.0) -> None:
        """Wait until everything emitted so far is stored."""
        target = self._seq
        if self._stored >= target:
            return
        done = asyncio.get_running_loop().create_future()
        heapq.heappush(self._flushes, (target, next(self._flush_ids), done))
        try:
            async with asyncio.timeout(within_sec):
                await done
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
            window = self._window()
            acks = await self._send(window)
            for (seq, msg, msg_id), ack in zip(window, acks, strict=True):
                if not await self._acked(ack):
                    try:  # its ack did not come: again, with retries (same id: stored once)
                        await self.publisher.publish(msg, msg_id)
                    except BusUnavailable as e:
                        self._limited("journal.backlogging", error=str(e), backlog=len(self._queue))
                        for later in acks:
                            if later is not None:
                                later.cancel()  # sent again from this one on, in order
                        if stop.is_set():
                            return
                        await wait_event(stop, 0.5)
                        break
                self._stored_up_to(seq)

    def _window(self) -> list[tuple[int, BusMessage, str]]:
        """The queue's head up to the first event whose intent is already in the window."""
        keys: set[str] = set()
        out: list[tuple[int, BusMessage, str]] = []
        for item in self._queue:
            key = _order_key(item[1])
            if key in keys or len(out) >= PIPELINE:
                break
            keys.add(key)
            out.append(item)
        return out

    async def _send(self, window: list[tuple[int, BusMessage, str]]) -> list[asyncio.Future | None]:
        """Send every event of the window; None for one that could not even be sent (published alone)."""
        acks: list[asyncio.Future | None] = []
        for _, msg, msg_id in window:
            try:
                acks.append(await self.publisher.send(msg, msg_id))
            except Exception:
                acks.append(None)
                acks += [None] * (len(window) - len(acks))
                break
        return acks

    async def _acked(self, ack: asyncio.Future | None) -> bool:
        if ack is None:
            return False
        try:
            async with asyncio.timeout(self.publisher.settings.publish_timeout_sec):
                await ack
            return True
        except Exception:
            ack.cancel()  # frees its slot in the client's window of async publishes
            return False

    def _stored_up_to(self, seq: int) -> None:
        # the head may have been dropped meanwhile (a full queue drops its oldest): pop only our own
        if self._queue and self._queue[0][0] == seq:
            self._queue.popleft()
        self._stored = max(self._stored, seq)
        self._backlog_gauge.set(len(self._queue))
        while self._flushes and self._flushes[0][0] <= self._stored:
            done = heapq.heappop(self._flushes)[2]
            if not done.done():  # a flush that timed out left its future cancelled
                done.set_result(None)
