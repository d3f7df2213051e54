"""Bus helpers against a real nats-server: dedup, ordered dispatch, dead letters, guard view."""

from __future__ import annotations

import asyncio
import json

import pytest

from libs.common.bus import ConsumerLoop, ConsumerSpec, Publisher
from libs.common.guard import GUARD_KEY, GuardView
from libs.common.messages import DeadLetter, GuardKnobs, Signal, encode

pytestmark = pytest.mark.integration


def sig(i: int, symbol: str = "BTC/USDT:USDT") -> Signal:
    return Signal(signal_id=f"s{i}", symbol=symbol, side="buy", qty=1)


async def test_publish_dedups_on_msg_id(bus):
    a = await bus.publisher.publish(sig(1), "same-id")
    b = await bus.publisher.publish(sig(1), "same-id")
    assert not a.duplicate and b.duplicate and a.seq == b.seq
    info = await bus.js.stream_info(bus.settings.stream)
    assert info.state.messages == 1


async def test_consumer_orders_per_key_and_runs_keys_concurrently(bus):
    seen: list[str] = []
    running: dict[str, int] = {}
    overlap = asyncio.Event()
    done = asyncio.Event()

    async def handler(msg, delivery):
        key = msg.symbol
        running[key] = running.get(key, 0) + 1
        assert running[key] == 1, "two messages of one key ran at once"
        if len([k for k, v in running.items() if v]) > 1:
            overlap.set()
        await asyncio.sleep(0.01)  # simulated venue call
        seen.append(msg.signal_id)
        running[key] -= 1
        if len(seen) == 20:
            done.set()

    stop = asyncio.Event()
    loop = ConsumerLoop(
        bus.js,
        bus.publisher,
        bus.settings.stream,
        ConsumerSpec("t", [f"{bus.settings.subject_prefix}.signal.>"]),
        handler,
        service="test",
        key_fn=lambda m: m.symbol,
    )
    for i in range(10):
        await bus.publish(sig(i, "BTC/USDT:USDT"))
        await bus.publish(sig(100 + i, "ETH/USDT:USDT"))
    task = asyncio.ensure_future(loop.run(stop))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        stop.set()
        await task
    btc = [s for s in seen if int(s[1:]) < 100]
    eth = [s for s in seen if int(s[1:]) >= 100]
    assert btc == [f"s{i}" for i in range(10)] and eth == [f"s{100 + i}" for i in range(10)]
    assert overlap.is_set()


async def test_messages_held_behind_a_slow_handler_are_not_redelivered(bus):
    """Queued behind a slow handler of the same key, or waiting for an in-flight slot, a message
    is still ours: it heartbeats, so ack_wait never redelivers it and nothing is handled twice."""
    handled: list[tuple[str, int]] = []

    async def handler(msg, delivery):
        if msg.signal_id == "s0":
            await asyncio.sleep(3.5)  # simulated slow venue call: longer than 3 x ack_wait
        handled.append((msg.signal_id, delivery.num_delivered))

    stop = asyncio.Event()
    spec = ConsumerSpec("slow", [f"{bus.settings.subject_prefix}.signal.>"], ack_wait_sec=1.0)
    loop = ConsumerLoop(
        bus.js,
        bus.publisher,
        bus.settings.stream,
        spec,
        handler,
        service="test",
        key_fn=lambda m: m.symbol,
        max_in_flight=2,  # s0 handled, s1 queued behind it, s2 waiting for a slot
    )
    for i in range(3):
        await bus.publish(sig(i))
    task = asyncio.ensure_future(loop.run(stop))
    try:
        await loop.wait_handled(3)
        info = await bus.js.consumer_info(bus.settings.stream, "slow")
    finally:
        stop.set()
        await task
    assert handled == [("s0", 1), ("s1", 1), ("s2", 1)]
    assert info.num_redelivered == 0


async def test_failing_handler_is_dead_lettered_after_max_deliver(bus):
    calls = 0

    async def handler(msg, delivery):
        nonlocal calls
        calls += 1
        raise RuntimeError("handler bug")

    stop = asyncio.Event()
    loop = ConsumerLoop(
        bus.js,
        bus.publisher,
        bus.settings.stream,
        ConsumerSpec("t2", [f"{bus.settings.subject_prefix}.signal.>"], max_deliver=2),
        handler,
        service="svc",
    )
    task = asyncio.ensure_future(loop.run(stop))
    try:
        await bus.publish(sig(1))
        (letter,) = await bus.tap.wait_for(lambda: bus.tap.of(DeadLetter), within=20)
    finally:
        stop.set()
        await task
    assert calls == 2 and letter.deliveries == 2 and "handler bug" in letter.reason
    assert letter.subject.endswith(".signal.s1")


async def test_guard_view_tracks_kv_and_fails_safe(bus):
    kv = await bus.js.key_value(bus.settings.kv_bucket)
    stop = asyncio.Event()
    view = GuardView(bus.nc, bus.settings.kv_bucket, require_knobs=True, poll_sec=0.2)
    task = asyncio.ensure_future(view.run(stop))
    try:
        await view.wait_until(lambda k: view.status()["error"] == "no knobs in the bucket")
        assert view.current() is None  # required but absent: entries must stop
        await kv.put(GUARD_KEY, encode(GuardKnobs(max_leverage=3)))
        await view.wait_until(lambda k: k is not None and k.max_leverage == 3)
        await kv.put(GUARD_KEY, b"garbage")
        await view.wait_until(lambda k: k is None)
        assert view.status()["error"].startswith("unparsable knobs")
        await kv.put(GUARD_KEY, encode(GuardKnobs(allow_entries=False, mode="halted")))
        await view.wait_until(lambda k: k is not None and not k.allow_entries)
    finally:
        stop.set()
        await task


async def test_publisher_raises_when_no_stream(bus):
    from libs.common.bus import BusUnavailable
    from libs.common.config import NatsSettings

    settings = NatsSettings(
        url=bus.settings.url, subject_prefix="nostream", publish_timeout_sec=0.2, publish_attempts=2
    )
    with pytest.raises(BusUnavailable):
        await Publisher(bus.js, settings, "t").publish(sig(1), "x")


async def test_a_message_without_ts_ms_replays_with_the_time_the_stream_stored_it(bus):
    """Not the replay's own clock: the JetStream metadata time of the stored message."""
    from libs.common.replay import load_journal, order_subjects

    prefix = bus.settings.subject_prefix
    body = {"kind": "entry.decision", "signal_id": "no-ts", "symbol": "BTC/USDT:USDT", "accepted": True}
    ack = await bus.js.publish(f"{prefix}.entry.decision.no-ts", json.dumps(body).encode())
    stored = await bus.js.get_msg(bus.settings.stream, ack.seq)
    assert stored.time is not None
    await asyncio.sleep(0.05)  # a replay later must not date it "now"
    (entry,) = [
        e
        for e in await load_journal(bus.js, bus.settings.stream, prefix, order_subjects(prefix))
        if e.seq == ack.seq
    ]
    assert entry.msg.ts_ms == int(stored.time.timestamp() * 1000)
    # a producer's own ts_ms is kept as it is
    dated = await bus.js.publish(
        f"{prefix}.entry.decision.ts", json.dumps({**body, "signal_id": "ts", "ts_ms": 1}).encode()
    )
    (entry,) = [
        e
        for e in await load_journal(bus.js, bus.settings.stream, prefix, order_subjects(prefix))
        if e.seq == dated.seq
    ]
    assert entry.msg.ts_ms == 1
