"""The operator CLIs as real processes (`erl` = python -m tools.erl, and the older entry points) against a
real nats-server, the simulator and the services."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import httpx
import pytest

from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import DeadLetter, GuardKnobs, OrderTransition, RepairAction, SignalDecision
from libs.common.state_machine import OrderState
from tests.conftest import ADMIN_TOKEN
from tests.integration.helpers import settled

pytestmark = pytest.mark.integration

BTC = "BTC/USDT:USDT"


def env_for(settings, sim=None, **services) -> dict[str, str]:
    env = {
        **os.environ,
        "NATS_URL": settings.url,
        "NATS_STREAM": settings.stream,
        "NATS_SUBJECT_PREFIX": settings.subject_prefix,
        "NATS_KV_BUCKET": settings.kv_bucket,
        "RISK_ADMIN_TOKEN": ADMIN_TOKEN,
        # nothing listens on these unless a test started that service
        "ROUTER_HTTP_PORT": "1",
        "RECONCILE_HTTP_PORT": "1",
        "RISK_HTTP_PORT": "1",
        "ENTRY_HTTP_PORT": "1",
        "VENUE_STREAM_HTTP_PORT": "1",
    }
    if sim is not None:
        env["EXCHANGE_API_URL"] = sim.base_url
    names = {"router": "ROUTER", "reconciler": "RECONCILE", "risk": "RISK", "entry": "ENTRY"}
    for name, svc in services.items():
        env[f"{names[name]}_HTTP_PORT"] = str(svc.bound_port)
    return env


async def run(args: list[str], settings, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    env = env or env_for(settings)
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode, out.decode(), err.decode()


async def erl(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.erl",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode, out.decode(), err.decode()


def entry_ids(signal_id: str) -> tuple[str, str]:
    intent_id = make_intent_id("signal", signal_id, Bucket.ENTRY)
    return make_correlation_id(intent_id), make_client_order_id(intent_id, Bucket.ENTRY)


async def test_signal_cli_then_replay_cli(bus, sim, router_factory, entry_service):
    """The older entry points still work: services.entry.cli is `erl signal`, tools.replay finds it."""
    await router_factory()
    args = ["services.entry.cli", "--symbol", BTC, "--side", "buy", "--qty", "0.01", "--signal-id", "cli-1"]
    rc, out, err = await run(args, bus.settings, env_for(bus.settings, sim))
    assert rc == 0, out + err
    assert "signal    cli-1" in out and "decision  accepted" in out
    cid, coid = entry_ids("cli-1")

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
    rc, out, _ = await run(["tools.replay", "intent", "cli-1", "--json"], bus.settings)  # by signal id
    assert json.loads(out)["correlation_id"] == cid
    await bus.tap.wait_for(
        lambda: [t for t in bus.tap.of(OrderTransition, bucket=Bucket.SL) if t.to_state is OrderState.ACKED]
    )
    rc, out, _ = await run(["tools.replay", "summary", "--json"], bus.settings)
    summary = json.loads(out)
    # the entry and its stage-1 stop, each listed
    assert summary["intents"] == 2 and summary["by_bucket"] == {"ENTRY": 1, "SL": 1}
    assert summary["by_state"]["FILLED"] == 1
    listed = {r["correlation_id"]: r for r in summary["intent_list"]}
    assert listed[cid]["state"] == "FILLED" and listed[cid]["signal_id"] == "cli-1"


async def test_erl_trade_see_the_stop_close_and_replay(
    bus, sim, router_factory, entry_service, reconciler_factory
):
    router = await router_factory()
    recon = await reconciler_factory()
    env = env_for(bus.settings, sim, router=router, reconciler=recon, entry=entry_service)

    rc, out, err = await erl(
        env, "signal", "--symbol", BTC, "--side", "buy", "--qty", "0.01", "--signal-id", "t-1"
    )
    cid, coid = entry_ids("t-1")
    assert rc == 0, out + err
    assert "decision  accepted" in out and f"correlation id {cid}  client order id {coid}" in out
    assert "order     FILLED" in out and "replay    erl replay t-1" in out

    stop = await bus.tap.wait_for(
        lambda: [t for t in bus.tap.of(OrderTransition, bucket=Bucket.SL) if t.to_state is OrderState.ACKED]
    )
    await recon.wait_ticks(2)
    rc, out, err = await erl(env, "status")
    assert "positions" in out and f"{BTC:<16}        +0.01" in out, out
    assert "stop NONE" not in out and "router        ready" in out
    rc, out, _ = await erl(env, "orders")
    assert rc == 0 and stop[0].client_order_id in out and " SL " in out

    for key in ("t-1", cid, coid):  # replay by each kind of id
        rc, out, err = await erl(env, "replay", key)
        assert rc == 0, err
        assert f"correlation_id {cid}  state FILLED" in out
    rc, out, _ = await erl(env, "replay", "t-1", "--json")
    doc = json.loads(out)
    assert doc["signal_decision"]["accepted"] is True and doc["intent"]["state"] == "FILLED"

    rc, out, err = await erl(env, "close", BTC, "--qty", "1")
    assert rc == 2 and "exceeds the position" in err
    rc, out, err = await erl(env, "close", BTC)
    assert rc == 0, out + err
    assert "close     sell 0.01 BTC/USDT:USDT reduce-only" in out and "order     FILLED" in out
    assert "flat; no protective order left" in out
    venue = sim.state(open_only=True)
    assert venue["positions"] == [] and venue["algo_orders"] == [] and venue["orders"] == []
    rc, out, _ = await erl(env, "replay", "--summary", "--json")
    assert {r["bucket"] for r in json.loads(out)["intent_list"]} == {"ENTRY", "SL", "EXIT"}
    rc, out, _ = await erl(env, "close", BTC)
    assert rc == 1 and "nothing to close" in out


async def test_erl_halt_refusal_printed_and_resume(bus, sim, risk_factory, router_factory, entry_factory):
    risk = await risk_factory()
    await router_factory()
    entry = await entry_factory()
    env = env_for(bus.settings, sim, risk=risk, entry=entry)

    rc, out, err = await erl(env, "halt", "exchange maintenance")
    assert rc == 0 and "guard halted  ENTRIES BLOCKED" in out, out + err
    await entry.guard.wait_until(lambda k: k is not None and not k.allow_entries, 10)
    rc, out, err = await erl(
        env, "signal", "--symbol", BTC, "--side", "buy", "--qty", "0.01", "--signal-id", "h-1"
    )
    assert rc == 3 and "decision  REFUSED:" in out, out + err
    (d,) = bus.tap.of(SignalDecision, signal_id="h-1")
    assert d.reason in out
    rc, out, _ = await erl(env, "replay", "h-1")  # a refused signal is found by its id, with why
    assert rc == 0 and f"REFUSED: {d.reason}" in out
    rc, out, _ = await erl(env, "status")
    assert "guard     halted  ENTRIES BLOCKED  (manual: api: exchange maintenance)" in out

    rc, _, err = await erl({**env, "RISK_ADMIN_TOKEN": "wrong"}, "resume", "over")
    assert rc == 1 and "bad admin token" in (err + _)
    rc, out, err = await erl({**env, "RISK_ADMIN_TOKEN": ""}, "resume", "over")
    assert rc == 2 and "RISK_ADMIN_TOKEN" in err and "is empty" in err  # refused, never a default
    unset = {k: v for k, v in env.items() if k != "RISK_ADMIN_TOKEN"}
    rc, out, err = await erl(unset, "resume", "over")
    assert rc == 2 and "no admin token" in err  # no token file in the test's directory either
    rc, out, err = await erl(env, "resume", "maintenance over")
    assert rc == 0 and "entries allowed" in out, out + err


async def test_halt_reasons_are_checked_on_rest_and_on_the_bus(bus, risk_factory):
    risk = await risk_factory()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{risk.bound_port}") as c:
        for bad in ("   ", "halt\x1b[2Jnow", "two\nlines", "x" * 501):
            r = await c.post("/halt", json={"reason": bad}, headers=auth)
            assert r.status_code == 422, (bad, r.text)
            assert "reason" in r.text
    # the same rule on the bus: a command with a control character is dead-lettered, never applied
    before = len(bus.tap.of(GuardKnobs))
    await bus.publish_raw(
        f"{bus.settings.subject_prefix}.risk.command.api",
        json.dumps({"kind": "risk.command", "action": "halt", "reason": "\x07", "source": "api"}).encode(),
    )
    (letter,) = await bus.tap.wait_for(lambda: bus.tap.of(DeadLetter), within=20)
    assert "reason" in letter.reason
    assert not any(not k.allow_entries for k in bus.tap.of(GuardKnobs)[before:])


async def test_erl_refuses_bad_input_and_fails_fast_without_the_stack(bus, sim):
    env = env_for(bus.settings, sim)
    rc, _, err = await erl(env, "signal", "--symbol", "DOGE/USDT:USDT", "--side", "buy", "--qty", "1")
    assert rc == 2 and "unknown symbol DOGE/USDT:USDT" in err
    rc, _, err = await erl(env, "signal", "--symbol", "BTCUSDT", "--side", "buy", "--qty", "-1")
    assert rc == 2 and "invalid signal" in err and "qty" in err and "symbol" in err
    rc, _, err = await erl(env, "replay", "nope")
    assert rc == 1 and "nothing in the journal" in err

    dead = {**env, "NATS_URL": "nats://127.0.0.1:1"}
    for args in (
        ["signal", "--symbol", BTC, "--side", "buy", "--qty", "0.01"],
        ["replay", "x"],
        ["tail", "--for", "1"],
    ):
        t0 = time.monotonic()
        rc, _, err = await erl(dead, *args)
        assert rc == 1 and "unreachable: NATS at nats://127.0.0.1:1" in err, (args, err)
        assert time.monotonic() - t0 < 10, args
    t0 = time.monotonic()
    rc, out, err = await erl(env, "status")  # no service runs
    assert rc == 1 and "unreachable: router, reconciler, risk, entry, venue_stream" in out
    assert "guard     UNKNOWN" in out and time.monotonic() - t0 < 10
    rc, _, err = await erl(env, "close", BTC)
    assert rc == 1 and "unreachable" in err
    rc, _, err = await run(
        ["services.entry.cli", "--symbol", BTC, "--side", "buy", "--qty", "1"], bus.settings, dead | {}
    )
    assert rc == 1 and "unreachable" in err


async def test_erl_tail_prints_one_line_per_event_filtered(bus, sim, router_factory, entry_service):
    await router_factory()
    env = env_for(bus.settings, sim)
    rc, out, err = await erl(
        env, "signal", "--symbol", BTC, "--side", "buy", "--qty", "0.01", "--signal-id", "tl-1"
    )
    assert rc == 0, out + err
    rc, out, err = await erl(env, "tail", "--since", "5", "--for", "2", "--subject", "entry.decision")
    assert rc == 0, err
    lines = [x for x in out.splitlines() if x]
    assert len(lines) == 1 and "tl-1" in lines[0] and "accepted" in lines[0]
    assert "\033[" not in out  # no colour when not a terminal
    rc, out, _ = await erl(env, "tail", "--since", "5", "--count", "3", "--symbol", BTC)
    assert rc == 0 and len(out.splitlines()) == 3 and all(BTC in x or "tl-1" in x for x in out.splitlines())


async def test_erl_close_waits_for_the_reconciler_to_cancel_protection_the_venue_kept(
    bus, sim, router_factory, entry_service, reconciler_factory
):
    """A venue that does not expire a close-position stop when its position goes flat (the
    keep_protection fault): the reconciler cancels it on the flat, quiet symbol, and `erl close` says so
    only once it is gone."""
    router = await router_factory()
    recon = await reconciler_factory()
    env = env_for(bus.settings, sim, router=router, reconciler=recon, entry=entry_service)
    rc, out, err = await erl(
        env, "signal", "--symbol", BTC, "--side", "buy", "--qty", "0.01", "--signal-id", "k-1"
    )
    assert rc == 0, out + err
    await bus.tap.wait_for(
        lambda: [t for t in bus.tap.of(OrderTransition, bucket=Bucket.SL) if t.to_state is OrderState.ACKED]
    )
    sim.add_fault(kind="keep_protection", symbol="BTCUSDT", count=None)
    rc, out, err = await erl(env, "close", BTC, "--wait", "30")
    assert rc == 0, out + err
    assert "order     FILLED" in out and "flat; no protective order left" in out
    venue = sim.state(open_only=True)
    assert venue["positions"] == [] and venue["algo_orders"] == []
    assert bus.tap.of(RepairAction, action="cancel_leftover")
