"""The operator CLIs as real processes: publish a signal, replay its intent."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import OrderTransition
from libs.common.state_machine import OrderState
from tests.integration.helpers import settled

pytestmark = pytest.mark.integration


async def run(args: list[str], settings) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "NATS_URL": settings.url,
        "NATS_STREAM": settings.stream,
        "NATS_SUBJECT_PREFIX": settings.subject_prefix,
        "NATS_KV_BUCKET": settings.kv_bucket,
    }
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode, out.decode(), err.decode()


async def test_signal_cli_then_replay_cli(bus, sim, router_factory, entry_service):
    await router_factory()
    rc, out, err = await run(
        [
            "services.entry.cli",
            "--symbol",
            "BTC/USDT:USDT",
            "--side",
            "buy",
            "--qty",
            "0.01",
            "--signal-id",
            "cli-1",
        ],
        bus.settings,
    )
    assert rc == 0, err
    assert "signal cli-1 stored" in out
    intent_id = make_intent_id("signal", "cli-1", Bucket.ENTRY)
    cid, coid = make_correlation_id(intent_id), make_client_order_id(intent_id, Bucket.ENTRY)

    class Ref:
        client_order_id = coid

    await bus.tap.wait_for(lambda: settled(bus.tap, Ref, OrderState.FILLED))
    rc, out, err = await run(["tools.replay", "intent", cid], bus.settings)
    assert rc == 0, err
    assert f"correlation_id {cid}  state FILLED" in out
    assert "CREATED -> SUBMITTING" in out and "SUBMITTING -> FILLED" in out
    rc, out, _ = await run(["tools.replay", "intent", coid, "--json"], bus.settings)  # by client order id
    doc = json.loads(out)
    assert doc["correlation_id"] == cid and doc["state"] == "FILLED"
    await bus.tap.wait_for(
        lambda: [t for t in bus.tap.of(OrderTransition, bucket=Bucket.SL) if t.to_state is OrderState.ACKED]
    )
    rc, out, _ = await run(["tools.replay", "summary", "--json"], bus.settings)
    summary = json.loads(out)
    # the entry and its stage-1 stop
    assert summary["intents"] == 2 and summary["by_bucket"] == {"ENTRY": 1, "SL": 1}
    assert summary["by_state"]["FILLED"] == 1


async def test_cli_bad_input_and_unreachable_bus(bus):
    rc, _, err = await run(
        ["services.entry.cli", "--symbol", "BTCUSDT", "--side", "buy", "--qty", "-1"], bus.settings
    )
    assert rc == 2 and "invalid signal" in err and "qty" in err and "symbol" in err
    rc, _, err = await run(["tools.replay", "intent", "nope"], bus.settings)
    assert rc == 1 and "no intent" in err
    dead = bus.settings.model_copy(update={"url": "nats://127.0.0.1:1"})
    rc, _, err = await run(
        ["services.entry.cli", "--symbol", "BTC/USDT:USDT", "--side", "buy", "--qty", "1"], dead
    )
    assert rc == 1 and "could not publish" in err
