"""Rebuild intent lifecycles from the journal stream.

``read_journal`` streams raw messages out of JetStream in batches through an
ephemeral no-ack consumer; ``fold`` is pure and turns decoded messages into one
``IntentTimeline`` per correlation id. The router uses the same fold at boot to
pick up intents whose venue outcome was still unknown when it stopped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.common.messages import (
    BusMessage,
    CancelIntent,
    CancelReplaceGiveup,
    CancelResult,
    DecodeError,
    OrderIntent,
    OrderRetry,
    OrderTransition,
    ReplaceIntent,
    ReplaceTransition,
    decode,
)
from libs.common.state_machine import TERMINAL_ORDER_STATES, OrderState

ORDER_FAMILIES = ("intent.order", "intent.cancel", "intent.replace", "order.>")


def order_subjects(prefix: str, correlation_id: str | None = None) -> list[str]:
    """Subject filters selecting intents and order events (optionally for one intent only)."""
    last = correlation_id or "*"
    subjects = []
    for fam in ORDER_FAMILIES:
        if fam.endswith(">"):
            subjects.append(f"{prefix}.{fam[:-2]}.*.{last}")
        else:
            subjects.append(f"{prefix}.{fam}.{last}")
    return subjects


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    subject: str
    msg: BusMessage


async def read_journal(
    js: JetStreamContext,
    stream: str,
    prefix: str,
    subjects: list[str],
    *,
    since: dt.datetime | None = None,
    batch: int = 2000,
    errors: list[str] | None = None,
) -> AsyncIterator[JournalEntry]:
    """Yield every message on ``subjects`` in stream order (up to the current end)."""
    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since.isoformat() if since else None,
        filter_subjects=subjects,
        inactive_threshold=30.0,
        mem_storage=True,
        max_ack_pending=-1,
    )
    sub = await js.pull_subscribe(subjects[0], stream=stream, config=cfg)
    try:
        info = await sub.consumer_info()
        remaining = info.num_pending
        while remaining > 0:
            try:
                msgs = await sub.fetch(batch=min(batch, remaining), timeout=2.0)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                try:
                    yield JournalEntry(
                        m.metadata.sequence.stream, m.subject, decode(prefix, m.subject, m.data)
                    )
                except DecodeError as e:
                    if errors is not None:
                        errors.append(f"seq {m.metadata.sequence.stream}: {e}")
            remaining = msgs[-1].metadata.num_pending if msgs else 0
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


@dataclass
class IntentTimeline:
    correlation_id: str
    intent: OrderIntent | None = None
    entries: list[JournalEntry] = field(default_factory=list)
    state: OrderState | None = None
    client_order_ids: set[str] = field(default_factory=set)
    retries: int = 0
    restarts: int = 0  # transitions whose from_state did not follow the previous to_state
    gave_up: bool = False
    cancel_outcomes: list[str] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return self.state in TERMINAL_ORDER_STATES

    def add(self, e: JournalEntry) -> None:
        self.entries.append(e)
        m = e.msg
        if isinstance(m, OrderIntent):
            self.intent = m
            self.client_order_ids.add(m.client_order_id)
        elif isinstance(m, OrderTransition):
            if self.state is not None and m.from_state is not self.state:
                self.restarts += 1
            self.state = m.to_state
            self.client_order_ids.add(m.client_order_id)
        elif isinstance(m, OrderRetry):
            self.retries += 1
        elif isinstance(m, CancelResult):
            self.cancel_outcomes.append(m.outcome)
            self.client_order_ids.add(m.client_order_id)
        elif isinstance(m, CancelIntent):
            self.client_order_ids.add(m.client_order_id)
        elif isinstance(m, ReplaceIntent):
            self.client_order_ids.update({m.old_client_order_id, m.new_order.client_order_id})
            if self.intent is None:
                self.intent = m.new_order
        elif isinstance(m, ReplaceTransition | CancelReplaceGiveup):
            self.client_order_ids.update({m.old_client_order_id, m.new_client_order_id})
            if isinstance(m, CancelReplaceGiveup):
                self.gave_up = True


def fold(entries: Iterable[JournalEntry]) -> dict[str, IntentTimeline]:
    out: dict[str, IntentTimeline] = {}
    for e in entries:
        cid = getattr(e.msg, "correlation_id", None)
        if cid is None:
            continue
        t = out.get(cid)
        if t is None:
            t = out[cid] = IntentTimeline(cid)
        t.add(e)
    return out


def summarize(timelines: dict[str, IntentTimeline]) -> dict:
    states = Counter((t.state.value if t.state else "NO_TRANSITIONS") for t in timelines.values())
    buckets = Counter((t.intent.bucket.value if t.intent else "?") for t in timelines.values())
    unsettled = sorted(
        (t.correlation_id for t in timelines.values() if not t.settled and t.state is not None),
    )
    return {
        "intents": len(timelines),
        "by_state": dict(sorted(states.items())),
        "by_bucket": dict(sorted(buckets.items())),
        "retries": sum(t.retries for t in timelines.values()),
        "restarts": sum(t.restarts for t in timelines.values()),
        "cancel_replace_giveups": sum(1 for t in timelines.values() if t.gave_up),
        "unknown": sorted(t.correlation_id for t in timelines.values() if t.state is OrderState.UNKNOWN),
        "unsettled": unsettled,
    }


def find_by_client_order_id(
    timelines: dict[str, IntentTimeline], client_order_id: str
) -> IntentTimeline | None:
    for t in timelines.values():
        if client_order_id in t.client_order_ids:
            return t
    return None


def describe(e: JournalEntry) -> str:
    """One human line per journal entry."""
    m = e.msg
    ts = dt.datetime.fromtimestamp(m.ts_ms / 1000, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
    head = f"{ts} #{e.seq:<7} {getattr(m, 'kind', type(m).__name__):<28}"
    if isinstance(m, OrderIntent):
        size = "close-position" if m.close_position else f"{m.qty}"
        return f"{head} {m.bucket.value} {m.side} {size} {m.symbol} {m.order_type} cid={m.client_order_id}"
    if isinstance(m, OrderTransition):
        extra = f" filled={m.filled_qty}" if m.filled_qty else ""
        err = f" [{m.error_class} {m.code}]" if m.error_class else ""
        return (
            f"{head} {m.from_state.value} -> {m.to_state.value} ({m.reason}) attempt={m.attempt}{extra}{err}"
        )
    if isinstance(m, OrderRetry):
        return (
            f"{head} {m.operation} try {m.tries} failed: {m.error_class}/{m.reason} code={m.code} "
            f"-> attempt {m.attempt} in {m.delay_sec:.3f}s"
        )
    if isinstance(m, CancelResult):
        return f"{head} {m.client_order_id}: {m.outcome} status={m.status} ({m.reason})"
    if isinstance(m, ReplaceTransition):
        return f"{head} {m.from_state.value} -> {m.to_state.value} ({m.reason}) attempt={m.attempt}"
    if isinstance(m, CancelReplaceGiveup):
        return f"{head} GAVE UP in {m.state.value} after {m.attempts}: {m.reason}"
    if isinstance(m, CancelIntent):
        return f"{head} cancel {m.client_order_id} ({m.reason})"
    if isinstance(m, ReplaceIntent):
        return f"{head} replace {m.old_client_order_id} -> {m.new_order.client_order_id} ({m.reason})"
    return f"{head} {m.model_dump_json()}"
