"""Rebuild intent lifecycles from the journal stream.

``read_journal`` streams raw messages out of JetStream in batches of direct
gets (no consumer); ``fold`` is pure and turns decoded messages into one
``IntentTimeline`` per correlation id. The router uses the same fold at boot to
pick up intents whose venue outcome was still unknown when it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.common.aio import wait_event
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


def order_subjects(prefix: str, correlation_id: str | None = None) -> list[str]:
    """Subject filter for the journal: everything, or one intent's messages.

    Per-intent messages end in their correlation id: ``<prefix>.<a>.<b>.<cid>``, and intents, which
    carry their router lane, ``<prefix>.intent.<kind>.<lane>.<cid>``; two wildcard filters select
    an intent's intents and events together. For a full
    replay we read the whole stream with no filter: nats-server serves an
    unfiltered consumer far faster than a multi-subject filter over many distinct
    subjects, and ``fold`` ignores messages without a correlation id anyway.
    """
    if correlation_id:
        return [f"{prefix}.*.*.{correlation_id}", f"{prefix}.*.*.*.{correlation_id}"]
    return [f"{prefix}.>"]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    subject: str
    msg: BusMessage


# messages per direct-get request; the server ends a batch early at its byte limit (we then ask again)
DIRECT_GET_BATCH = 10_000


async def read_journal_batches(
    js: JetStreamContext,
    stream: str,
    prefix: str,
    subjects: list[str],
    *,
    since: dt.datetime | None = None,
    errors: list[str] | None = None,
    idle_timeout: float = 5.0,
) -> AsyncIterator[list[JournalEntry]]:
    """Yield every message on ``subjects`` in stream order (in batches), up to the end at call time.

    Batched direct gets (``$JS.API.DIRECT.GET.<stream>`` with ``batch``, nats-server >= 2.11; the
    stream has ``allow_direct``): a read creates no consumer, so readers need no right to create
    one. That right is what must stay narrow: the nameless consumer-create subject an ordered
    consumer uses would also update any existing consumer named in the request, another service's
    durable included (tools/nats_config.py). Raw messages are buffered by the callback and decoded
    here, outside it.

    Any replica may answer a direct get, and a replica may lag the leader: an end of the read is only
    believed once the stream's leader has no matching message after the last one read (one
    ``STREAM.MSG.GET``); otherwise the read goes on from there. A router rebuilding its ledger from a
    lagging replica would miss the newest settlements. (Residual: a time-bounded read that found
    nothing at all is not checked: there is no sequence to ask the leader after.)
    """
    if len(subjects) == 1:
        async for batch in _read_subject(js, stream, prefix, subjects[0], since, errors, idle_timeout):
            yield batch
        return
    # a direct get follows one subject filter: read each, then merge in stream order (used for small
    # selections such as one intent's messages; a full read is one ``<prefix>.>``)
    merged: dict[int, JournalEntry] = {}
    for subject in subjects:
        async for part in _read_subject(js, stream, prefix, subject, since, errors, idle_timeout):
            merged.update((e.seq, e) for e in part)
    if merged:
        yield [merged[seq] for seq in sorted(merged)]


async def _read_subject(
    js: JetStreamContext,
    stream: str,
    prefix: str,
    subject: str,
    since: dt.datetime | None,
    errors: list[str] | None,
    idle_timeout: float,
) -> AsyncIterator[list[JournalEntry]]:
    nc = js._nc  # the JetStream context's connection: direct gets are plain requests
    inbox = nc.new_inbox()
    # one reply subject per request (``<inbox>.<n>``): the next batch is asked for before this one is
    # decoded, so the server reads while we decode
    parts: dict[str, list[Msg]] = {}
    ended: dict[str, asyncio.Event] = {}

    async def on_msg(m: Msg) -> None:
        n = m.subject.rsplit(".", 1)[1]
        parts[n].append(m)
        if not m.headers or "Nats-Sequence" not in m.headers:  # the batch's end: 204 EOB, 404 none
            ended[n].set()

    api = f"{js._prefix}.DIRECT.GET.{stream}"

    async def ask(n: int, start: dict) -> str:
        key = str(n)
        parts[key], ended[key] = [], asyncio.Event()
        request = {**start, "batch": DIRECT_GET_BATCH, "next_by_subj": subject}
        await nc.publish(api, json.dumps(request).encode(), reply=f"{inbox}.{key}")
        return key

    sub = await nc.subscribe(f"{inbox}.*", cb=on_msg)
    try:
        if since:
            at = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
            key = await ask(0, {"start_time": at.isoformat()})
        else:
            key = await ask(0, {"seq": 1})
        n = 0
        last_seq: int | None = None if since else 0
        while True:
            if not await wait_event(ended[key], idle_timeout):
                raise TimeoutError(f"journal read stalled for {idle_timeout}s on {subject}")
            batch = parts.pop(key)
            del ended[key]
            end = batch.pop().headers or {}
            status = end.get("Status")
            if status not in ("204", "404"):  # 404: nothing (more) on these subjects
                raise RuntimeError(f"direct get on {stream} failed: {status} {end.get('Description', '')}")
            if batch:
                last_seq = int((batch[-1].headers or {})["Nats-Sequence"])
            more = status == "204" and bool(batch) and int(end.get("Nats-Num-Pending", "0")) > 0
            resume_at = await _resume_at(js, stream, subject, last_seq, more=more)
            if resume_at is not None:
                n += 1
                key = await ask(n, {"seq": resume_at})
            out = _decode(batch, prefix, errors)
            if out:
                yield out
            if resume_at is None:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _resume_at(
    js: JetStreamContext, stream: str, subject: str, last_seq: int | None, *, more: bool
) -> int | None:
    """Where the next batch starts: after the last one read while the replica says there is more; at
    the end, wherever the leader still has a matching message; None: the read is complete."""
    if last_seq is None:
        return None
    return last_seq + 1 if more else await _leader_next(js, stream, subject, last_seq + 1)


async def _leader_next(js: JetStreamContext, stream: str, subject: str, seq: int) -> int | None:
    """The sequence of the first message on ``subject`` from ``seq`` on, as the stream's leader has it."""
    try:
        found = await js.get_msg(stream, seq=seq, subject=subject, next=True)
    except nats.js.errors.NotFoundError:
        return None
    return found.seq


def _stored_ms(h: dict[str, str], data: bytes) -> int | None:
    """When the stream stored the message (``Nats-Time-Stamp``), only for one without its own ts_ms."""
    if b'"ts_ms"' in data or "Nats-Time-Stamp" not in h:
        return None
    return int(dt.datetime.fromisoformat(h["Nats-Time-Stamp"]).timestamp() * 1000)


def _decode(batch: list[Msg], prefix: str, errors: list[str] | None) -> list[JournalEntry]:
    """The batch's entries; undecodable ones are reported in ``errors``."""
    out: list[JournalEntry] = []
    for m in batch:
        h = m.headers or {}
        seq, subject = int(h["Nats-Sequence"]), h["Nats-Subject"]
        try:
            out.append(JournalEntry(seq, subject, decode(prefix, subject, m.data, _stored_ms(h, m.data))))
        except DecodeError as e:
            if errors is not None:
                errors.append(f"seq {seq}: {e}")
    return out


async def load_journal(
    js: JetStreamContext,
    stream: str,
    prefix: str,
    subjects: list[str],
    *,
    since: dt.datetime | None = None,
    errors: list[str] | None = None,
) -> list[JournalEntry]:
    """The whole selection as a list (the common case: replay, router recovery)."""
    out: list[JournalEntry] = []
    with _gc_paused():
        async for batch in read_journal_batches(js, stream, prefix, subjects, since=since, errors=errors):
            out.extend(batch)
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building hundreds of thousands of small objects makes the cyclic GC rescan the growing
    heap again and again; nothing a replay builds forms cycles, so pause it meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class IntentTimeline:
    correlation_id: str
    intent: OrderIntent | None = None
    entries: list[JournalEntry] = field(default_factory=list)
    state: OrderState | None = None
    state_ts_ms: int | None = None  # when the last transition was journaled (its own ts_ms)
    client_order_ids: set[str] = field(default_factory=set)
    retries: int = 0
    restarts: int = 0  # transitions whose from_state did not follow the previous to_state
    gave_up: bool = False
    cancel_outcomes: list[str] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        return self.state in TERMINAL_ORDER_STATES

    def add(self, e: JournalEntry, keep: bool = True) -> None:
        if keep:
            self.entries.append(e)
        m = e.msg
        if isinstance(m, OrderIntent):
            self.intent = m
            self.client_order_ids.add(m.client_order_id)
        elif isinstance(m, OrderTransition):
            if self.state is not None and m.from_state is not self.state:
                self.restarts += 1
            self.state, self.state_ts_ms = m.to_state, m.ts_ms
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


def fold(
    entries: Iterable[JournalEntry],
    into: dict[str, IntentTimeline] | None = None,
    *,
    keep_entries: bool = True,
) -> dict[str, IntentTimeline]:
    """Group entries per correlation id and track each intent's state. ``into`` folds incrementally."""
    out: dict[str, IntentTimeline] = {} if into is None else into
    for e in entries:
        cid = getattr(e.msg, "correlation_id", None)
        if cid is None:
            continue
        t = out.get(cid)
        if t is None:
            t = out[cid] = IntentTimeline(cid)
        t.add(e, keep=keep_entries)
    return out


async def replay_timelines(
    js: JetStreamContext,
    stream: str,
    prefix: str,
    subjects: list[str],
    *,
    since: dt.datetime | None = None,
    errors: list[str] | None = None,
    keep_entries: bool = True,
) -> tuple[dict[str, IntentTimeline], int]:
    """Stream the journal through ``fold`` batch by batch: memory grows with intents, not events
    (unless ``keep_entries``). Returns the timelines and the number of entries read."""
    timelines: dict[str, IntentTimeline] = {}
    count = 0
    with _gc_paused():
        async for batch in read_journal_batches(js, stream, prefix, subjects, since=since, errors=errors):
            fold(batch, timelines, keep_entries=keep_entries)
            count += len(batch)
    return timelines, count


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
        "intent_list": [intent_row(t) for t in timelines.values()],
    }


def intent_row(t: IntentTimeline) -> dict:
    """One intent in a summary: what it was and where it ended (journal order)."""
    i = t.intent
    return {
        "correlation_id": t.correlation_id,
        "bucket": i.bucket.value if i else None,
        "symbol": i.symbol if i else None,
        "side": i.side if i else None,
        "qty": i.qty if i else None,
        "signal_id": i.signal_id if i else None,
        "state": t.state.value if t.state else None,
        "client_order_ids": sorted(t.client_order_ids),
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
