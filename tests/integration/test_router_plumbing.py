"""Policy at the router, dead letters, restarts and replay, over real JetStream."""

from __future__ import annotations

import re
import time

import pytest

from libs.common.guard import GUARD_KEY
from libs.common.ids import Bucket
from libs.common.messages import DeadLetter, GuardKnobs, OrderRetry, OrderTransition, encode
from libs.common.replay import find_by_client_order_id, fold, load_journal, order_subjects, summarize
from libs.common.state_machine import OrderState
from libs.common.telemetry import DEAD_LETTERS
from tests.integration.helpers import (
    BTC_ID,
    make_intent,
    path_of,
    protection_goes_through,
    server_state,
    settled,
)

pytestmark = pytest.mark.integration

S = OrderState


async def put_knobs(bus, knobs: GuardKnobs) -> None:
    kv = await bus.js.key_value(bus.settings.kv_bucket)
    await kv.put(GUARD_KEY, encode(knobs))


async def test_entry_leverage_is_capped_exits_are_not_touched(bus, sim, router_factory):
    await router_factory(max_leverage=7)
    entry = make_intent(leverage=50)
    await bus.publish(entry)
    await bus.tap.wait_for(lambda: settled(bus.tap, entry, S.FILLED))
    assert sim.leverage(BTC_ID) == 7
    submitting = [
        t
        for t in bus.tap.of(OrderTransition, client_order_id=entry.client_order_id)
        if t.to_state is S.SUBMITTING
    ]
    assert submitting[0].leverage == 7
    lev_calls = [r for r in sim.requests_log() if r["path"] == "/fapi/v1/leverage"]
    exit_ = make_intent(Bucket.EXIT, side="sell", leverage=125)
    await bus.publish(exit_)
    await bus.tap.wait_for(lambda: settled(bus.tap, exit_, S.FILLED))
    assert [r for r in sim.requests_log() if r["path"] == "/fapi/v1/leverage"] == lev_calls
    assert sim.leverage(BTC_ID) == 7


async def test_halt_blocks_entries_but_not_stops_or_exits(bus, sim, router_factory):
    router = await router_factory()
    await put_knobs(bus, GuardKnobs(allow_entries=False, mode="halted", reason="test halt"))
    await router.guard.wait_until(lambda k: k is not None and not k.allow_entries)
    entry = make_intent()
    await bus.publish(entry)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, entry))
    assert (t.to_state, t.reason) == (S.BLOCKED, "entries_blocked:halted")
    assert not [r for r in sim.requests_log() if r["params"].get("newClientOrderId") == entry.client_order_id]
    await protection_goes_through(bus, sim)


async def test_unreadable_guard_fails_safe_for_entries_only(bus, sim, router_factory):
    from libs.common.config import GuardSettings

    await router_factory(guard=GuardSettings(require_knobs=True))  # no knobs published: entries must stop
    entry = make_intent()
    await bus.publish(entry)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, entry))
    assert (t.to_state, t.reason) == (S.BLOCKED, "guard_unavailable")
    exit_ = make_intent(Bucket.EXIT, side="sell")
    await bus.publish(exit_)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, exit_))
    assert t.to_state is S.MOOT  # reached the venue (no position to reduce): not blocked


async def test_stale_entry_is_refused(bus, sim, router_factory):
    await router_factory(intent_max_age_sec=5)
    entry = make_intent(ts_ms=int(time.time() * 1000) - 60_000)
    await bus.publish(entry)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, entry))
    # aged from the intent's own timestamp, refused with its age and the limit it passed
    assert t.to_state is S.BLOCKED and re.fullmatch(r"stale_intent:6\d\.\d\ds>5s", t.reason), t.reason
    exit_ = make_intent(Bucket.EXIT, side="sell", ts_ms=int(time.time() * 1000) - 60_000)
    await bus.publish(exit_)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, exit_))
    assert t.to_state is S.MOOT  # just as old, but an exit: it reached the venue (no position to reduce)


async def test_malformed_messages_are_dead_lettered_and_service_keeps_going(bus, sim, router_factory):
    router = await router_factory()
    before = DEAD_LETTERS.labels("router", "decode")._value.get()
    prefix = bus.settings.subject_prefix
    await bus.publish_raw(f"{prefix}.intent.order.entry.cbad1", b"{not json")  # entry lane
    # a subject without a lane (from before lanes existed): the protect lane handles it
    await bus.publish_raw(f"{prefix}.intent.order.cbad2", b'{"kind":"order.intent","qty":-1}')
    await bus.publish_raw(f"{prefix}.intent.bogus.cbad3", b"{}")
    letters = await bus.tap.wait_for(lambda: len(bus.tap.of(DeadLetter)) >= 3 and bus.tap.of(DeadLetter))
    assert {d.subject.rsplit(".", 1)[1] for d in letters} == {"cbad1", "cbad2", "cbad3"}
    assert all(d.service == "router" and d.reason.startswith("decode:") for d in letters)
    assert "{not json" in next(d.data for d in letters if d.subject.endswith("cbad1"))
    assert DEAD_LETTERS.labels("router", "decode")._value.get() - before == 3
    good = make_intent()
    await bus.publish(good)
    await bus.tap.wait_for(lambda: settled(bus.tap, good, S.FILLED))
    await router.consumer.wait_until(lambda: router.consumer.handled + router.protect.handled >= 4)
    # terminated, not redelivered: the lanes have nothing pending (once the acks have reached the server)
    for durable in ("router", "router-protect"):
        await server_state(
            lambda d=durable: bus.js.consumer_info(bus.settings.stream, d),
            lambda info: info.num_ack_pending == 0 and info.num_pending == 0,
        )


async def test_router_crash_mid_submit_recovers_without_duplicate(bus, sim, router_factory):
    """The router dies while the venue holds the order but before the answer: the redelivery finds it."""
    first = await router_factory(timeout_ms=5000, ack_wait_sec=1.0)
    sim.add_fault(kind="timeout_after_accept", method="POST", path="/fapi/v1/order", count=1, delay_ms=3000)
    intent = make_intent()
    await bus.publish(intent)
    await bus.tap.wait_for(lambda: path_of(bus.tap, intent) == ["CREATED", "SUBMITTING"])
    await bus.tap.wait_for(
        lambda: any(r["params"].get("newClientOrderId") == intent.client_order_id for r in sim.requests_log())
    )
    await first.crash()  # handler abandoned mid-request, intent left unacked
    await router_factory(ack_wait_sec=1.0)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, intent, S.FILLED, S.FAILED))
    # the new router finds it SUBMITTING in the journal: its resolver or the redelivery looks it up
    assert t.to_state is S.FILLED and t.reason in ("found_by_client_id", "resolver")
    assert path_of(bus.tap, intent)[-2:] == ["UNKNOWN", "FILLED"]
    posts = [
        r
        for r in sim.requests_log()
        if r["method"] == "POST" and r["params"].get("newClientOrderId") == intent.client_order_id
    ]
    assert len(posts) == 1


async def test_replay_rebuilds_lifecycles(bus, sim, router_factory):
    await router_factory()
    sim.add_fault(kind="http_error", method="POST", path="/fapi/v1/order", count=1, status=503)
    a = make_intent()
    b = make_intent(Bucket.EXIT, side="sell")
    await bus.publish(a)
    await bus.tap.wait_for(lambda: settled(bus.tap, a, S.FILLED))
    await bus.publish(b)  # after a: the exit has its own lane and would otherwise race a for the 503
    await bus.tap.wait_for(lambda: settled(bus.tap, b, S.FILLED, S.MOOT))
    prefix = bus.settings.subject_prefix
    entries = await load_journal(bus.js, bus.settings.stream, prefix, order_subjects(prefix))
    timelines = fold(entries)
    ta = timelines[a.correlation_id]
    # one create retry; "not found yet" lookups until the 503'd request's recvWindow had passed
    creates = [r for r in bus.tap.of(OrderRetry, correlation_id=a.correlation_id) if r.operation == "create"]
    assert ta.intent == a and ta.state is S.FILLED and len(creates) == 1
    assert ta.retries == len(bus.tap.of(OrderRetry, correlation_id=a.correlation_id))
    assert [e.seq for e in ta.entries] == sorted(e.seq for e in ta.entries)
    assert find_by_client_order_id(timelines, b.client_order_id).correlation_id == b.correlation_id
    s = summarize(timelines)
    assert s["intents"] == 2 and s["retries"] == ta.retries and s["unknown"] == []
    # one intent only, by subject filter
    only = await load_journal(bus.js, bus.settings.stream, prefix, order_subjects(prefix, a.correlation_id))
    assert {getattr(e.msg, "correlation_id", None) for e in only} == {a.correlation_id}
    assert len(only) == len(ta.entries)
