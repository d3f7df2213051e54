"""Reading the journal by batched direct gets (libs/common/replay.read_journal_batches): every message
in stream order across batches, a subject filter, a start time, an empty selection."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from libs.common import replay
from libs.common.messages import Signal
from libs.common.replay import load_journal

pytestmark = pytest.mark.integration


def signal(i: int, symbol: str = "BTC/USDT:USDT") -> Signal:
    return Signal(signal_id=f"s{i}", symbol=symbol, side="buy", qty=0.01)


async def test_reads_every_message_in_order_across_batches_by_filter_and_start_time(bus, monkeypatch):
    monkeypatch.setattr(replay, "DIRECT_GET_BATCH", 3)  # several batches, one cut mid-way
    s, p = bus.settings.stream, bus.settings.subject_prefix
    assert await load_journal(bus.js, s, p, [f"{p}.>"]) == []
    for i in range(5):
        await bus.publish(signal(i))
    await asyncio.sleep(0.01)
    cut = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.01)
    for i in range(5, 8):
        await bus.publish(signal(i))

    everything = await load_journal(bus.js, s, p, [f"{p}.>"])
    assert [e.msg.signal_id for e in everything] == [f"s{i}" for i in range(8)]
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    later = await load_journal(bus.js, s, p, [f"{p}.>"], since=cut)
    assert [e.msg.signal_id for e in later] == ["s5", "s6", "s7"]
    assert await load_journal(bus.js, s, p, [f"{p}.risk.>"]) == []
