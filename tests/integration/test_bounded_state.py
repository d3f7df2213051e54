"""A long-running service's memory stays flat: what it keeps per handled message is bounded.

The entry service, in-process against a real nats-server and the simulator, handles 10,000 signals
that it refuses (the notional cap: the whole decision path runs, mark read, decision journaled, ack).
Python's traced allocations after message 2,000 and after message 10,000 (handled, journal flushed,
garbage collected) must differ by less than a bound that one leaked dict entry per message would
exceed several times over: measured, about 30 KiB without a leak, 800 KiB with a signal id and a time
kept per message (pydantic's cache of parsed strings would add up to 1 MB of ids: BusMessage turns it
off for values).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from libs.common.bus import Publisher, connect_nats, ensure_journal
from libs.common.guard import GUARD_KEY
from libs.common.messages import GuardKnobs, Signal, encode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

WARM, TOTAL = 2_000, 10_000
GROWTH_BOUND_BYTES = 256 * 1024
CHUNK = 200  # signals published at once


async def publish_signals(publisher: Publisher, start: int, stop: int) -> None:
    for first in range(start, stop, CHUNK):
        await asyncio.gather(
            *(
                publisher.publish(
                    Signal(signal_id=f"b{i}", symbol="BTC/USDT:USDT", side="buy", qty=1), f"signal.b{i}"
                )
                for i in range(first, min(first + CHUNK, stop))
            )
        )


async def traced_after(entry, handled: int) -> int:
    """Bytes Python has allocated (and still holds) once ``handled`` signals are handled and journaled."""
    await entry.consumer.wait_handled(handled, within_sec=300)
    await entry.journal.flush()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_entry_memory_stays_flat_over_10000_handled_signals(nats_settings, entry_factory):
    nc = await connect_nats(nats_settings, "bounded-test", fail_fast=True)
    try:
        js = nc.jetstream()
        await ensure_journal(js, nats_settings)
        kv = await js.key_value(nats_settings.kv_bucket)
        # entries allowed, but no signal fits under the cap: every one is refused after the mark read
        await kv.put(GUARD_KEY, encode(GuardKnobs(max_notional_usdt=1.0)))
        entry = await entry_factory()
        publisher = Publisher(js, nats_settings, "bounded-test")
        tracemalloc.start()
        try:
            await publish_signals(publisher, 0, WARM)
            warm = await traced_after(entry, WARM)
            await publish_signals(publisher, WARM, TOTAL)
            done = await traced_after(entry, TOTAL)
            top = tracemalloc.take_snapshot().statistics("lineno")[:5]
        finally:
            tracemalloc.stop()
    finally:
        await nc.close()
    assert entry.counts == {"refused": TOTAL}
    growth = done - warm
    assert growth < GROWTH_BOUND_BYTES, (
        f"entry grew by {growth / 1024:.0f} KiB over {TOTAL - WARM} signals; largest holders:\n"
        + "\n".join(str(s) for s in top)
    )
