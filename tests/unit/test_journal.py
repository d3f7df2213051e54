"""The journal's pipelined sender: one round trip per window, and one intent's events stored in order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from libs.common.journal import PIPELINE, Journal, JournalNotFlushed
from libs.common.messages import SignalDecision, Stage1GapAssertion


class FakeStream:
    """Stores what reaches it, once per message id (JetStream's duplicate window); ``lose`` drops the first
    sends of those ids in transit (no store, no ack), as a connection lost under them would."""

    def __init__(self, lose: set[str] | None = None) -> None:
        self.stored: list[str] = []
        self.lose = set(lose or ())
        self.sends = 0
        self.publishes = 0
        self.settings = SimpleNamespace(publish_timeout_sec=0.05)
        self.windows: list[int] = []
        self._in_window = 0

    def _store(self, msg_id: str) -> None:
        if msg_id not in self.stored:
            self.stored.append(msg_id)

    async def send(self, msg, msg_id: str) -> asyncio.Future:
        self.sends += 1
        self._in_window += 1
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        if msg_id in self.lose:
            self.lose.discard(msg_id)
            return fut  # never acked
        self._store(msg_id)
        asyncio.get_running_loop().call_soon(fut.set_result, None)
        return fut

    async def publish(self, msg, msg_id: str) -> None:
        self.publishes += 1
        self._store(msg_id)


def retry(cid: str, attempt: int) -> Stage1GapAssertion:
    return Stage1GapAssertion(correlation_id=cid, symbol="BTC/USDT:USDT", reason=f"event {attempt}")


async def run(journal: Journal) -> None:
    stop = asyncio.Event()
    task = asyncio.ensure_future(journal.run_flusher(stop))
    await journal.flush(within_sec=5)
    stop.set()
    journal.wake()
    await task


async def test_events_of_many_intents_go_out_in_one_window():
    stream = FakeStream()
    j = Journal(stream, "t")  # type: ignore[arg-type]
    for i in range(PIPELINE):
        j.emit_nowait(retry(f"c{i}", 1))
    await run(j)
    assert len(stream.stored) == PIPELINE and stream.publishes == 0
    assert j.backlog == 0


async def test_one_intents_events_never_share_a_window_and_a_lost_one_is_stored_before_its_successor():
    # c1's first event is lost in transit; its second must not be stored before it
    j = Journal(FakeStream(), "t")  # type: ignore[arg-type]
    stream: FakeStream = j.publisher  # type: ignore[assignment]
    j.emit_nowait(retry("c1", 1))
    j.emit_nowait(retry("c2", 1))
    j.emit_nowait(retry("c1", 2))
    first_id = j._queue[0][2]
    stream.lose = {first_id}
    await run(j)
    ids = stream.stored
    assert len(ids) == 3 and stream.publishes == 1  # the lost one, sent again alone
    c1 = [i for i in ids if i.endswith((".1", ".3"))]
    assert c1 == [first_id, first_id[:-2] + ".3"]  # c1's events in emit order, whatever c2 did


async def test_events_without_an_intent_keep_their_order_too():
    stream = FakeStream()
    j = Journal(stream, "t")  # type: ignore[arg-type]
    refused = SignalDecision(signal_id="s1", symbol="BTC/USDT:USDT", accepted=False, reason="x")
    j.emit_nowait(refused)
    j.emit_nowait(refused.model_copy(update={"signal_id": "s2"}))
    assert len(j._window()) == 1  # no correlation id: one key, one per window


async def test_each_flush_returns_once_what_it_waits_for_is_stored_and_a_timed_out_one_leaves_no_trace():
    j = Journal(FakeStream(), "t")  # type: ignore[arg-type]
    stream: FakeStream = j.publisher  # type: ignore[assignment]
    j.emit_nowait(retry("c1", 1))
    stream.lose = {j._queue[0][2]}  # its ack never comes: the sender re-publishes it after the timeout
    early = asyncio.ensure_future(j.flush(within_sec=5))
    j.emit_nowait(retry("c2", 1))
    late = asyncio.ensure_future(j.flush(within_sec=5))
    with pytest.raises(JournalNotFlushed):
        await j.flush(within_sec=0.001)  # nothing is sending yet: it times out
    assert not early.done() and not late.done()
    stop = asyncio.Event()
    sender = asyncio.ensure_future(j.run_flusher(stop))
    await asyncio.wait_for(asyncio.gather(early, late), 5)
    assert len(stream.stored) == 2 and j._flushes == []
    stop.set()
    j.wake()
    await sender
