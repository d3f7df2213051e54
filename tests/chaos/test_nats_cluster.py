"""The 3-node cluster variant (deploy/docker-compose.cluster.yml), for real: three nats-server
processes run the committed deploy/nats/nats-cluster.conf (only ports and store dirs rewritten for
loopback), every service runs as a process with its own credentials and NATS_REPLICAS=3.

The journal and the knob bucket must be replicated three ways, and losing the node that leads the
journal mid-flight must lose no intent and duplicate no order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats.errors
import pytest

from libs.common.messages import ReconcileSummary
from libs.common.state_machine import OrderState
from tests.chaos.harness import (
    FAIL_SAFE,
    ChaosStack,
    assert_no_duplicates,
    filled_or_refused_fail_safe,
    running,
    send_signal,
    trades_again,
    wait_entry,
)
from tools.nats_config import USERS, env_var
from tools.natsd import NatsCluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

CLUSTER_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-cluster.conf"
REPLICATED = ("ERL", "KV_erl_guard")


@pytest.fixture
async def chaos():
    passwords = {user: uuid.uuid4().hex for user in USERS}
    cluster = NatsCluster(CLUSTER_CONF.read_text(), env={env_var(u): p for u, p in passwords.items()})
    async with running(ChaosStack(cluster=cluster, passwords=passwords, NATS_REPLICAS="3")) as c:
        yield c


async def replica_health(c: ChaosStack, stream: str) -> tuple[int, str | None, list[tuple[str, bool]]]:
    info = await c.nc.jetstream().stream_info(stream)
    peers = [(p.name, bool(p.current)) for p in (info.cluster.replicas or [])]
    return info.config.num_replicas, info.cluster.leader, peers


async def wait_all_replicas_current(c: ChaosStack, within: float = 30.0) -> None:
    """Poll stream info (bounded) until every replicated stream has a leader and two current peers."""
    deadline = time.monotonic() + within
    while True:
        try:
            health = {s: await replica_health(c, s) for s in REPLICATED}
        except nats.errors.TimeoutError:  # a stream still electing its leader may not answer: ask again
            health = {}
        if health and all(
            r == 3 and leader and len(p) == 2 and all(ok for _, ok in p) for r, leader, p in health.values()
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas not current in {within}s: {health}")
        await asyncio.sleep(0.2)


async def test_journal_replicated_and_losing_its_leader_loses_no_intent(chaos: ChaosStack):
    c = chaos
    await send_signal(c, "before")
    await wait_entry(c, "before")
    await wait_all_replicas_current(c)
    _, leader, _ = await replica_health(c, "ERL")
    assert leader in c.cluster.nodes

    # kill -9 the node that leads the journal while signals are arriving
    after = [f"after{i}" for i in range(6)]
    for sid in after[:3]:
        await send_signal(c, sid)
    await asyncio.to_thread(c.kill_nats, leader)
    for sid in after[3:]:
        await send_signal(c, sid)  # retried against the surviving nodes with the same msg id
    signals = {"before", *after}

    # no signal lost: each one is decided, and each accepted one's intent reaches a terminal state
    decisions = await c.wait_journal(lambda d: signals <= d.keys(), within=60, read=c.decisions)
    accepted = {d.correlation_id for sid, d in decisions.items() if sid in signals and d.accepted}
    timelines = await c.wait_journal(
        lambda t: all(cid in t and t[cid].settled for cid in accepted), within=60
    )
    for sid in signals:
        d = decisions[sid]
        if not d.accepted:
            # refused only because the guard was unreadable or tightened during the failover
            assert d.reason.startswith(FAIL_SAFE), (sid, d.reason)
            continue
        t = timelines[d.correlation_id]
        assert filled_or_refused_fail_safe(t), (sid, t.state, [e.msg for e in t.entries])
    assert timelines[decisions["before"].correlation_id].state is OrderState.FILLED
    assert_no_duplicates(c)
    _, new_leader, _ = await replica_health(c, "ERL")
    assert new_leader not in (None, leader)

    # the killed node comes back and catches up; the stack heals by itself: the position is
    # protected, no order is of unknown fate, entries are allowed again and trade
    await asyncio.to_thread(c.start_nats, leader)
    await wait_all_replicas_current(c)
    seen = len(c.tap.msgs)
    await c.tap.wait_for(
        lambda: [
            s
            for s in c.tap.msgs[seen:]
            if isinstance(s, ReconcileSummary) and s.ok and s.open_gaps == 0 and s.unknown_orders == 0
        ],
        within=60,
    )
    await trades_again(c, "healed", within=60)
    assert_no_duplicates(c)
    for name in ("router", "entry", "reconciler", "risk"):
        assert c.get(name, "/readyz")["ready"], name
        log = (c.dir / "logs" / f"{name}.log").read_text()
        assert not [u for u, p in c.passwords.items() if p in log], f"a NATS password in {name}'s log"
