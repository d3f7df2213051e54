"""Benchmark: journal replay throughput (events/s) through replay_timelines (read + fold).

Fills a fresh stream with N lifecycle events (intent, transitions, retries) for
N/5 intents, then times reading them back and folding them into timelines.

    python -m bench.replay_throughput [--events 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
import uuid

from bench.common import machine
from libs.common.bus import connect_nats, ensure_journal
from libs.common.config import NatsSettings
from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import BusMessage, OrderIntent, OrderRetry, OrderTransition, encode, subject_for
from libs.common.replay import order_subjects, replay_timelines
from libs.common.state_machine import OrderState as S
from tools.natsd import NatsServer


def lifecycle(k: int) -> list[BusMessage]:
    iid = make_intent_id("bench", str(k), Bucket.ENTRY)
    cid, coid = make_correlation_id(iid), make_client_order_id(iid, Bucket.ENTRY)
    symbol = "BTC/USDT:USDT"
    intent = OrderIntent(
        intent_id=iid,
        correlation_id=cid,
        client_order_id=coid,
        symbol=symbol,
        bucket=Bucket.ENTRY,
        side="buy",
        order_type="market",
        qty=0.01,
    )
    transition = functools.partial(
        OrderTransition,
        intent_id=iid,
        bucket=Bucket.ENTRY,
        correlation_id=cid,
        client_order_id=coid,
        symbol=symbol,
    )
    return [
        intent,
        transition(from_state=S.CREATED, to_state=S.SUBMITTING, attempt=1),
        transition(from_state=S.SUBMITTING, to_state=S.RETRY_WAIT, attempt=1, reason="rate_limited"),
        OrderRetry(
            operation="create",
            error_class="DDoSProtection",
            reason="rate_limited",
            policy="retryable",
            tries=1,
            attempt=2,
            delay_sec=0.1,
            elapsed_sec=0.1,
            correlation_id=cid,
            client_order_id=coid,
            symbol=symbol,
        ),
        transition(from_state=S.RETRY_WAIT, to_state=S.FILLED, attempt=2, filled_qty=0.01),
    ]


async def fill(settings: NatsSettings, events: int) -> int:
    nc = await connect_nats(settings, "bench", fail_fast=True)
    js = nc.jetstream()
    await ensure_journal(js, settings)
    sent = 0
    batch: list = []
    for k in range(events // 5):
        for m in lifecycle(k):
            batch.append(js.publish(subject_for(settings.subject_prefix, m), encode(m)))
        if len(batch) >= 500:
            await asyncio.gather(*batch)
            sent += len(batch)
            batch = []
    if batch:
        await asyncio.gather(*batch)
        sent += len(batch)
    await nc.close()
    return sent


async def replay(settings: NatsSettings) -> tuple[int, int, float]:
    nc = await connect_nats(settings, "bench", fail_fast=True)
    t0 = time.perf_counter()
    timelines, n = await replay_timelines(
        nc.jetstream(),
        settings.stream,
        settings.subject_prefix,
        order_subjects(settings.subject_prefix),
        keep_entries=False,
    )
    took = time.perf_counter() - t0
    await nc.close()
    return n, len(timelines), took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    a = ap.parse_args()
    with NatsServer() as server:
        settings = NatsSettings(url=server.url, stream="BENCH" + uuid.uuid4().hex[:6].upper())
        stored = asyncio.run(fill(settings, a.events))
        n, intents, took = asyncio.run(replay(settings))
    assert n == stored, (n, stored)
    print(
        json.dumps(
            {
                "benchmark": "replay_throughput",
                "machine": machine(),
                "events": n,
                "intents": intents,
                "seconds": round(took, 3),
                "events_per_sec": round(n / took),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
