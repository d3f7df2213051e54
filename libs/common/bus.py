"""Bus helpers: connect, bootstrap the journal, publish exactly-once, consume with dead-lettering.

The JetStream stream is the durable event journal: every intent and every
lifecycle event is a message in it. Publishes carry a deterministic
``Nats-Msg-Id`` so a retried publish (nats-py has no publish retry of its own,
and a timed-out publish may have been stored) is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from libs.common.aio import wait_event
from libs.common.config import NatsSettings
from libs.common.logs import RateLimitedLog, log_event, redact
from libs.common.messages import BusMessage, DeadLetter, DecodeError, decode, encode, subject_for
from libs.common.telemetry import BUS_MESSAGES, DEAD_LETTERS, NATS_CONNECTED, PUBLISH_FAILURES, Children


def stored_ts_ms(m: Msg) -> int | None:
    """When JetStream stored ``m`` (its metadata timestamp), in ms: the date of a message whose producer
    gave none. None for a core NATS message (no JetStream reply subject to read it from)."""
    try:
        return int(m.metadata.timestamp.timestamp() * 1000)
    except Exception:
        return None


log = logging.getLogger("erl.bus")

MSG_ID_HEADER = "Nats-Msg-Id"
DLQ_DATA_LIMIT = 4096


class BusUnavailable(RuntimeError):
    """A publish did not get a JetStream ack after every attempt."""


async def connect_nats(settings: NatsSettings, service: str, *, fail_fast: bool = False) -> NatsClient:
    """Connect to NATS.

    Services (``fail_fast=False``) keep reconnecting forever and report not-ready
    meanwhile: a crash loop would only add restarts to an outage. CLIs fail fast
    with a readable error. Errors are logged rate-limited instead of one
    traceback per reconnect attempt.
    """
    limited = RateLimitedLog(logging.getLogger(f"erl.{service}.nats"), interval=15.0)

    async def error_cb(e: Exception) -> None:
        limited("nats.error", error=f"{type(e).__name__}: {e}")

    holder: list[NatsClient] = []  # filled below: the callback must tell our own close from an outage

    async def disconnected_cb() -> None:
        NATS_CONNECTED.labels(service).set(0)
        if not (holder and (holder[0].is_closed or holder[0].is_draining)):
            limited("nats.disconnected")

    async def reconnected_cb() -> None:
        NATS_CONNECTED.labels(service).set(1)
        log_event(log, "nats.reconnected", service=service)

    kwargs: dict[str, Any] = {
        "servers": [s.strip() for s in settings.url.split(",") if s.strip()],
        "name": service,
        "connect_timeout": settings.connect_timeout_sec,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "reconnect_time_wait": 1,
        "max_reconnect_attempts": 1 if fail_fast else -1,
        "allow_reconnect": not fail_fast,
    }
    if settings.user:
        kwargs["user"] = settings.user
        kwargs["password"] = settings.password.get_secret_value() if settings.password else ""
        redact(kwargs["password"])
        # per-user inboxes: the server only lets each user read its own replies
        kwargs["inbox_prefix"] = f"_INBOX.{settings.user}"
    nc = await nats.connect(**kwargs)
    holder.append(nc)
    NATS_CONNECTED.labels(service).set(1)
    return nc


async def ensure_journal(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create the journal stream and the guard-knob KV bucket if they do not exist yet.

    An existing stream is left as it is: services run with least-privilege NATS
    credentials that may read stream info but not change stream configuration
    (retention, replicas) — that is an operator decision, made once.
    """
    try:
        await js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError:
        cfg = StreamConfig(
            name=settings.stream,
            subjects=[f"{settings.subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=settings.max_age_days * 86400,
            duplicate_window=settings.duplicate_window_sec,
            num_replicas=settings.replicas,
            allow_direct=True,
        )
        try:
            await js.add_stream(cfg)
        except nats.js.errors.BadRequestError as e:
            if e.err_code != 10058:  # created concurrently by another service: fine
                raise
    try:
        await js.key_value(settings.kv_bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            await js.create_key_value(
                KeyValueConfig(bucket=settings.kv_bucket, history=16, replicas=settings.replicas)
            )
        except nats.js.errors.BadRequestError as e:
            if e.err_code != 10058:
                raise


class Publisher:
    """Publishes bus messages to the journal with dedup ids and bounded retries."""

    def __init__(self, js: JetStreamContext, settings: NatsSettings, service: str) -> None:
        self.js, self.settings, self.service = js, settings, service
        self.prefix = settings.subject_prefix

    def subject(self, msg: BusMessage) -> str:
        return subject_for(self.prefix, msg)

    async def publish(self, msg: BusMessage, msg_id: str, *, subject: str | None = None) -> PubAck:
        """Store ``msg`` once. Retries reuse ``msg_id`` so a stored-but-unacked publish is not doubled."""
        subj = subject or self.subject(msg)
        payload = encode(msg)
        headers = {MSG_ID_HEADER: msg_id}
        delay = 0.05
        last: Exception | None = None
        for _ in range(self.settings.publish_attempts):
            try:
                return await self.js.publish(
                    subj, payload, timeout=self.settings.publish_timeout_sec, headers=headers
                )
            except (
                TimeoutError,
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                nats.js.errors.ServiceUnavailableError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError,
            ) as e:
                last = e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        PUBLISH_FAILURES.labels(self.service).inc()
        raise BusUnavailable(
            f"publish to {subj} failed after {self.settings.publish_attempts} attempts: {last!r}"
        )

    async def send(self, msg: BusMessage, msg_id: str) -> asyncio.Future[PubAck]:
        """Send ``msg`` now and return the future of its ack (the journal's pipeline). No retry here: a
        caller whose ack does not come publishes it again with ``publish`` (same id: stored once)."""
        return await self.js.publish_async(
            self.subject(msg),
            encode(msg),
            headers={MSG_ID_HEADER: msg_id},
            wait_stall=self.settings.publish_timeout_sec,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    durable: str
    filter_subjects: list[str]
    # held messages heartbeat (ConsumerLoop), so this only bounds how long a delivery lost in
    # transit (connection or node lost) waits before redelivery: keep it well under the gap TTL
    ack_wait_sec: float = 5.0
    max_deliver: int = 5
    max_ack_pending: int = 256
    # only messages published from creation on (views rebuilt from the venue at boot, see reset_consumer)
    deliver_new: bool = False


def deliver_subject(stream: str, durable: str) -> str:
    """Stable push target of a durable consumer; outside the journal's own subjects."""
    return f"_ERL.deliver.{stream}.{durable}"


async def ensure_consumer(js: JetStreamContext, stream: str, spec: ConsumerSpec) -> ConsumerConfig:
    """Create or update a durable push consumer (``add_consumer`` creates or updates).

    Push rather than pull: nats-py's ``fetch`` costs two requests and a round
    trip per delivery, which was the largest share of our signal->order
    latency. ``max_ack_pending`` bounds what the server pushes at us.
    """
    cfg = ConsumerConfig(
        durable_name=spec.durable,
        name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW if spec.deliver_new else DeliverPolicy.ALL,
        deliver_subject=deliver_subject(stream, spec.durable),
        ack_wait=spec.ack_wait_sec,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        # no flow control: max_ack_pending already bounds what is in flight, and a consumer
        # stalled on a flow-control reply from a crashed process delays redelivery by seconds
        idle_heartbeat=5.0,
        filter_subjects=spec.filter_subjects if len(spec.filter_subjects) > 1 else None,
        filter_subject=spec.filter_subjects[0] if len(spec.filter_subjects) == 1 else None,
    )
    await js.add_consumer(stream, config=cfg)
    return cfg


async def reset_consumer(js: JetStreamContext, stream: str, spec: ConsumerSpec) -> None:
    """Drop and recreate a durable so it delivers from now on.

    For a consumer whose state is rebuilt from the venue at boot: replaying what
    happened while it was down would count the same fills twice.
    """
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(stream, spec.durable)
    await ensure_consumer(js, stream, spec)


@dataclass
class Delivery:
    """What a handler may know and do about the message it is handling."""

    subject: str
    stream_seq: int
    num_delivered: int
    raw: Msg = field(repr=False)

    @property
    def redelivered(self) -> bool:
        return self.num_delivered > 1


Handler = Callable[[BusMessage, Delivery], Awaitable[None]]


class ConsumerLoop:
    """Pull, decode, dispatch; ack on success, nak with delay on failure, dead-letter poison.

    Messages with the same ``key_fn`` key are handled strictly in order; different
    keys run concurrently, bounded by ``max_in_flight``. A malformed message is
    terminated and copied to ``<prefix>.dlq.<service>`` with the reason; a message
    whose handler keeps failing is dead-lettered after ``max_deliver`` attempts.
    Nothing here lets a bad message crash the service or loop forever.
    """

    def __init__(
        self,
        js: JetStreamContext,
        publisher: Publisher,
        stream: str,
        spec: ConsumerSpec,
        handler: Handler,
        *,
        service: str,
        key_fn: Callable[[BusMessage], str] | None = None,
        max_in_flight: int = 64,
        watchdog_sec: float = 5.0,
        before_ack: Callable[[], Awaitable[None]] | None = None,
        handled_cond: asyncio.Condition | None = None,
    ) -> None:
        self.js, self.publisher, self.stream, self.spec = js, publisher, stream, spec
        self.handler, self.service, self.key_fn = handler, service, key_fn
        self.prefix = publisher.prefix
        self.max_in_flight = max_in_flight
        self.watchdog_sec = watchdog_sec
        # e.g. journal.flush: what the handler caused must be durable before the ack
        self.before_ack = before_ack
        self._slots = asyncio.Semaphore(max_in_flight)
        # every message we hold (waiting for a slot, queued behind its key, or being handled)
        # heartbeats once held this long, so ack_wait only ever redelivers a delivery that was lost
        self._beat_interval = max(spec.ack_wait_sec / 3, 0.5)
        self._queues: dict[str, deque[tuple[BusMessage, Msg, _LazyHeartbeat]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._limited = RateLimitedLog(logging.getLogger(f"erl.{service}.consumer"))
        self._outcomes = Children(BUS_MESSAGES)
        self.in_flight = 0
        self.handled = 0  # messages finished (acked, nak'ed or dead-lettered)
        # not yet delivered to us, as the server said at the last watchdog check (None: not known)
        self.num_pending: int | None = None
        # shared by a service's loops (the router's lanes): a wait_until on one sees what the other handled
        self._handled_cond = handled_cond or asyncio.Condition()
        self.running = False

    async def run(self, stop: asyncio.Event) -> None:
        """Bind to the durable consumer and keep it bound until ``stop``.

        Messages arrive through ``_on_msg``; this loop only (re)creates the
        consumer and checks every few seconds that it still exists (a server
        that lost its state must not silently stop our deliveries).
        """
        sub = None
        self.running = True
        try:
            while not stop.is_set():
                try:
                    if sub is None:
                        cfg = await ensure_consumer(self.js, self.stream, self.spec)
                        sub = await self.js.subscribe_bind(
                            self.stream, cfg, self.spec.durable, cb=self._on_msg, manual_ack=True
                        )
                    await wait_event(stop, self.watchdog_sec)
                    if not stop.is_set():
                        info = await self.js.consumer_info(self.stream, self.spec.durable)
                        self.num_pending = info.num_pending
                except nats.js.errors.NotFoundError:
                    self.num_pending = None
                    # consumer or stream vanished (fresh server): recreate and rebind
                    self._limited("consumer.recreate", durable=self.spec.durable)
                    await _unsubscribe(sub)
                    sub = None
                    await wait_event(stop, 0.5)
                except Exception as e:  # bus down and friends: nats-py reconnects; we keep checking
                    self.num_pending = None
                    self._limited("consumer.check_failed", error=f"{type(e).__name__}: {e}")
                    if isinstance(e, nats.errors.BadSubscriptionError | nats.errors.ConnectionClosedError):
                        await _unsubscribe(sub)
                    sub = None
                    await wait_event(stop, 0.5)
            await _unsubscribe(sub)  # no new deliveries while we finish
            sub = None
            # graceful stop: let handlers in flight finish (their messages get acked)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # hard stop: abandon handlers; their messages stay unacked and are redelivered
            for t in list(self._tasks):
                t.cancel()
            raise
        finally:
            self.running = False
            await _unsubscribe(sub)

    async def _on_msg(self, m: Msg) -> None:
        beat = _LazyHeartbeat(self._heartbeat, m, self._beat_interval)
        try:
            # waiting here blocks the subscription's delivery task: backpressure up to max_ack_pending
            await self._slots.acquire()
        except BaseException:
            beat.stop()
            raise
        self.in_flight += 1
        self._dispatch(m, beat)

    def _release(self) -> None:
        self.in_flight -= 1
        self._slots.release()

    def _dispatch(self, m: Msg, beat: _LazyHeartbeat) -> None:
        try:
            model = decode(self.prefix, m.subject, m.data, stored_ts_ms(m))
        except DecodeError as e:
            beat.stop()
            self._spawn(self._dead_letter_and_mark(m, f"decode: {e}"), release=True)
            return
        key = self.key_fn(model) if self.key_fn else m.subject
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((model, m, beat))  # a worker for this key is running and will drain it
            return
        self._queues[key] = deque([(model, m, beat)])
        self._spawn(self._drain(key), release=False)

    def _spawn(self, coro: Awaitable[None], *, release: bool) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if release:
                self._release()

        task.add_done_callback(done)

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                model, m, beat = queue[0]
                try:
                    await self._handle(model, m)
                except Exception:  # our own bookkeeping failed: never let it stop the key's queue
                    log.exception("consumer bookkeeping failed for %s", m.subject)
                finally:
                    beat.stop()
                    queue.popleft()
                    self._release()
                    await self._mark_handled()
        finally:
            # a hard stop abandons what is still queued: stop vouching for it so it is redelivered
            for _, _, beat in self._queues.pop(key):
                beat.stop()

    async def _handle(self, model: BusMessage, m: Msg) -> None:
        meta = m.metadata
        delivery = Delivery(m.subject, meta.sequence.stream, meta.num_delivered, m)
        family = model.family  # the schema's family: one label whatever lane the subject names
        try:
            await self.handler(model, delivery)
            if self.before_ack is not None:
                await self.before_ack()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._outcomes(self.service, family, "error").inc()
            log_event(
                log,
                "consumer.handler_failed",
                logging.ERROR,
                service=self.service,
                subject=m.subject,
                deliveries=meta.num_delivered,
                error=f"{type(e).__name__}: {e}",
                exc_info=True,
            )
            if meta.num_delivered >= self.spec.max_deliver:
                await self._dead_letter(m, f"handler failed {meta.num_delivered}x: {type(e).__name__}: {e}")
            else:
                with contextlib.suppress(Exception):
                    await m.nak(delay=min(2.0**meta.num_delivered, 30.0))
            return
        self._outcomes(self.service, family, "ok").inc()
        with contextlib.suppress(Exception):
            await m.ack()

    async def _mark_handled(self) -> None:
        self.handled += 1
        async with self._handled_cond:
            self._handled_cond.notify_all()

    async def wait_handled(self, count: int, within_sec: float = 15.0) -> None:
        """Wait until ``count`` messages have been handled in total (tests, benchmarks)."""
        await self.wait_until(lambda: self.handled >= count, within_sec)

    async def wait_until(self, predicate: Callable[[], bool], within_sec: float = 15.0) -> None:
        """Wait until ``predicate()`` holds, re-checked after every handled message."""
        async with asyncio.timeout(within_sec), self._handled_cond:
            await self._handled_cond.wait_for(predicate)

    async def _heartbeat(self, m: Msg, interval: float) -> None:
        """Long handlers (retries with backoff) must not be redelivered while still running."""
        while True:
            with contextlib.suppress(Exception):
                await m.in_progress()
            await asyncio.sleep(interval)

    async def _dead_letter_and_mark(self, m: Msg, reason: str) -> None:
        await self._dead_letter(m, reason)
        await self._mark_handled()

    async def _dead_letter(self, m: Msg, reason: str) -> None:
        meta = None
        with contextlib.suppress(Exception):
            meta = m.metadata
        DEAD_LETTERS.labels(self.service, "decode" if reason.startswith("decode") else "handler").inc()
        letter = DeadLetter(
            service=self.service,
            subject=m.subject,
            stream_seq=meta.sequence.stream if meta else None,
            deliveries=meta.num_delivered if meta else None,
            reason=reason[:1000],
            data=m.data[:DLQ_DATA_LIMIT].decode("utf-8", errors="replace"),
        )
        log_event(
            log,
            "consumer.dead_letter",
            logging.WARNING,
            service=self.service,
            subject=m.subject,
            reason=reason,
        )
        msg_id = f"dlq.{self.service}.{letter.stream_seq}"
        try:
            await self.publisher.publish(letter, msg_id)
        except BusUnavailable:
            # leave it unacked: it comes back after ack_wait and we try again
            return
        with contextlib.suppress(Exception):
            await m.term()


class _LazyHeartbeat:
    """A timer that starts the heartbeat task only after ``interval``; stop() cancels either.

    Most messages are handled in milliseconds and never send a heartbeat.
    """

    def __init__(self, beat: Callable[[Msg, float], Awaitable[None]], m: Msg, interval: float) -> None:
        self._task: asyncio.Future | None = None
        self._timer = asyncio.get_running_loop().call_later(interval, self._start, beat, m, interval)

    def _start(self, beat: Callable[[Msg, float], Awaitable[None]], m: Msg, interval: float) -> None:
        self._task = asyncio.ensure_future(beat(m, interval))

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


async def _unsubscribe(sub: Any) -> None:
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
