"""The deployment's NATS permission model, enforced by a real nats-server running deploy/nats/nats.conf.

Least privilege must still let every service do its whole job (bootstrap,
replay at start-up, durable consumers, KV watch), and must stop a service from
stating facts that are not its own.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import nats.errors
import pytest

from libs.common.bus import BusUnavailable, Publisher, connect_nats, ensure_journal
from libs.common.config import (
    EntrySettings,
    GuardSettings,
    KillSettings,
    NatsSettings,
    RiskSettings,
    VenueStreamSettings,
)
from libs.common.guard import GUARD_KEY
from libs.common.messages import (
    GuardKnobs,
    OrderTransition,
    Signal,
    SignalDecision,
    VenueBan,
    VenueOrderFact,
    VenueStreamStatus,
    encode,
)
from libs.common.state_machine import OrderState
from services.risk.state import STATE_KEY, RiskState
from tools.nats_config import USERS, env_var, render
from tools.natsd import NatsServer

pytestmark = pytest.mark.integration

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats.conf"
PASSWORDS = {user: uuid.uuid4().hex for user in USERS}


def test_committed_config_is_rendered_from_the_model():
    assert CONF.read_text() == render(), "run python -m tools.nats_config --write"


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory):
    """The deployed config, byte for byte, except that the store lives in a temp dir."""
    tmp = tmp_path_factory.mktemp("secured-nats")
    conf = tmp / "nats.conf"
    conf.write_text(CONF.read_text().replace('store_dir: "/data"', f'store_dir: "{tmp / "store"}"'))
    env = {env_var(u): p for u, p in PASSWORDS.items()} | {"NATS_SERVER_NAME": "erl-test"}
    with NatsServer(config_file=str(conf), env=env, log_file=str(tmp / "nats.log")) as server:
        yield server


def creds(server: NatsServer, user: str, **kw) -> NatsSettings:
    return NatsSettings(
        url=server.url, user=user, password=PASSWORDS[user], publish_timeout_sec=0.5, publish_attempts=1, **kw
    )


async def as_user(server, user):
    nc = await connect_nats(creds(server, user), f"perm-{user}", fail_fast=True)
    return nc, Publisher(nc.jetstream(), creds(server, user), user)


def signal() -> Signal:
    return Signal(signal_id=uuid.uuid4().hex, symbol="BTC/USDT:USDT", side="buy", qty=0.01)


async def test_each_user_may_state_only_its_own_facts(secured_nats):
    # bootstrap as ops (creates the stream and bucket like any service would)
    nc, _ = await as_user(secured_nats, "ops")
    await ensure_journal(nc.jetstream(), creds(secured_nats, "ops"))
    await nc.close()

    nc, pub = await as_user(secured_nats, "strategy")
    await pub.publish(signal(), uuid.uuid4().hex)  # allowed
    with pytest.raises(BusUnavailable):
        await pub.publish(GuardKnobs(), "x", subject="erl.risk.guard.all")  # not a strategy's fact
    await nc.close()

    nc, pub = await as_user(secured_nats, "entry")
    kv = await nc.jetstream().key_value("erl_guard")  # may read the knobs ...
    with pytest.raises((nats.errors.TimeoutError, nats.errors.Error, TimeoutError)):
        await kv.put(GUARD_KEY, encode(GuardKnobs()))  # ... but never write them
    with pytest.raises((nats.errors.TimeoutError, nats.errors.Error, TimeoutError)):
        await kv.put(STATE_KEY, RiskState().model_dump_json().encode())  # nor risk's restart state
    with pytest.raises(BusUnavailable):
        await pub.publish(signal(), uuid.uuid4().hex, subject="erl.order.transition.fake")
    await nc.close()

    nc, _ = await as_user(secured_nats, "risk")
    kv = await nc.jetstream().key_value("erl_guard")
    await kv.put(GUARD_KEY, encode(GuardKnobs(reason="written by risk")))
    assert GuardKnobs.model_validate_json((await kv.get(GUARD_KEY)).value).reason == "written by risk"
    await kv.delete(GUARD_KEY)
    await kv.put(STATE_KEY, RiskState(manual_halt=True).model_dump_json().encode())
    assert RiskState.model_validate_json((await kv.get(STATE_KEY)).value).manual_halt
    await kv.delete(STATE_KEY)
    await nc.close()


async def test_venue_bans_are_stated_by_their_source_and_heard_by_every_venue_service(secured_nats):
    nc, _ = await as_user(secured_nats, "ops")
    await ensure_journal(nc.jetstream(), creds(secured_nats, "ops"))
    await nc.close()
    listeners = [(await as_user(secured_nats, u))[0] for u in ("entry", "reconciler")]
    subs = [await nc.subscribe("erl.venue.ban.>") for nc in listeners]
    for nc in listeners:
        await nc.flush()
    router, pub = await as_user(secured_nats, "router")
    ban = VenueBan(banned_until_ms=1, source_service="router")
    await pub.publish(ban, uuid.uuid4().hex)  # journaled: the stream stores it
    for sub in subs:  # every venue service hears it
        assert (await sub.next_msg(timeout=2)).subject == "erl.venue.ban.router"
    entry, entry_pub = await as_user(secured_nats, "entry")
    with pytest.raises(BusUnavailable):
        await entry_pub.publish(ban, uuid.uuid4().hex)  # entry may not state the router's ban
    for nc in (router, entry, *listeners):
        await nc.close()


async def test_whole_stack_runs_on_least_privilege(secured_nats, sim, started):
    """Every service with its own credentials: bootstrap, replay, consumers, KV, fills, stage-1, halt."""
    from services.entry.service import EntryService
    from services.reconciler.service import ReconcilerService
    from services.risk.service import RiskService
    from services.router.service import RouterService
    from services.venue_stream.service import VenueStreamService
    from tests.conftest import Bus, exchange_settings, fast_reconciler_settings, fast_router_settings

    guard = GuardSettings(require_knobs=True)
    risk = await started(
        RiskService(
            creds(secured_nats, "risk"),
            RiskSettings(http_port=0, admin_token="t", min_entry_conf=0, entry_cooldown_sec=0),
            KillSettings(stale_data_sec=60),
        )
    )
    await started(
        RouterService(creds(secured_nats, "router"), exchange_settings(sim), fast_router_settings(), guard)
    )
    await started(
        ReconcilerService(
            creds(secured_nats, "reconciler"), exchange_settings(sim), fast_reconciler_settings()
        )
    )
    entry = await started(
        EntryService(creds(secured_nats, "entry"), EntrySettings(http_port=0), guard, exchange_settings(sim))
    )
    tap = await Bus(creds(secured_nats, "ops")).start()
    try:
        await started(
            VenueStreamService(
                creds(secured_nats, "venue_stream"), exchange_settings(sim), VenueStreamSettings(http_port=0)
            )
        )
        await tap.tap.wait_for(lambda: [s for s in tap.tap.of(VenueStreamStatus) if s.resumed])
        await entry.guard.wait_until(lambda k: k is not None and k.allow_entries)
        strategy, pub = await as_user(secured_nats, "strategy")
        s = signal()
        await pub.publish(s, f"signal.{s.signal_id}")
        await strategy.close()
        await tap.tap.wait_for(
            lambda: (
                [t for t in tap.tap.of(OrderTransition) if t.to_state is OrderState.FILLED]
                and [
                    t
                    for t in tap.tap.of(OrderTransition)
                    if t.bucket.value == "SL" and t.to_state is OrderState.ACKED
                ]
            )
        )
        # the stream's facts, under its own user
        await tap.tap.wait_for(lambda: [f for f in tap.tap.of(VenueOrderFact) if f.source == "venue_stream"])
        assert tap.tap.undecodable == []
        await risk.command("halt", "permission drill", "test", journal=True)
        await entry.guard.wait_until(lambda k: k is not None and not k.allow_entries)
        assert risk.state_persisted and risk.state_revision  # its restart state, with the halt, in KV
        await tap.tap.wait_for(lambda: tap.tap.of(SignalDecision))
    finally:
        await tap.close()
