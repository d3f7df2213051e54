"""The deployment's NATS permission model, enforced by a real nats-server running deploy/nats/nats.conf.

Least privilege must still let every service do its whole job (bootstrap,
replay at start-up, durable consumers, KV watch), and must stop a service from
stating facts that are not its own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import nats.errors
import pytest

from libs.common.bus import (
    BusUnavailable,
    ConsumerSpec,
    Publisher,
    connect_nats,
    ensure_consumer,
    ensure_journal,
)
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
    HaltCommand,
    OrderTransition,
    RouterLoad,
    Signal,
    SignalDecision,
    VenueBan,
    VenueOrderFact,
    VenueStreamStatus,
    encode,
)
from libs.common.replay import load_journal
from libs.common.state_machine import OrderState
from services.risk.state import STATE_KEY, RiskState
from tools.nats_config import DURABLES, USERS, env_var, render
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


async def bootstrap(server) -> None:
    """Create the stream and bucket as a service does at start (ops may not: it only reads)."""
    nc, _ = await as_user(server, "risk")
    await ensure_journal(nc.jetstream(), creds(server, "risk"))
    await nc.close()


class Attempts:
    """Raw requests as one user, made together; which ones the server refused by permission.

    A publish the server refuses never reaches JetStream: the client gets an async
    "Permissions Violation for Publish to <subject>" and the request times out. (nats-py
    lowercases the server's error line: ``denied`` holds lowercased subjects.)
    """

    def __init__(self, server, user: str) -> None:
        self.server, self.user, self.denied = server, user, set()

    async def __aenter__(self) -> Attempts:
        async def on_error(e: Exception) -> None:
            if "permissions violation for publish to" in str(e).lower():
                self.denied.add(str(e).split('"')[1])

        self.nc = await nats.connect(
            self.server.url,
            user=self.user,
            password=PASSWORDS[self.user],
            inbox_prefix=f"_INBOX.{self.user}",
            error_cb=on_error,
            allow_reconnect=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def requests(self, reqs: list[tuple[str, bytes]]) -> dict[str, dict | None]:
        """subject -> the JetStream API's answer, or None when refused (no answer)."""

        async def one(subject: str, data: bytes) -> dict | None:
            try:
                return json.loads((await self.nc.request(subject, data, timeout=1.5)).data or b"{}")
            except nats.errors.TimeoutError:
                return None

        answers = await asyncio.gather(*(one(s, d) for s, d in reqs))
        await self.nc.flush()
        return dict(zip([s for s, _ in reqs], answers, strict=True))

    def refused(self, subjects) -> bool:
        return self.denied == {s.lower() for s in subjects}


def create_forms(durable: str, filter_subject: str) -> list[str]:
    """Every JetStream API subject that creates or updates a named consumer on ERL."""
    return [
        f"$JS.API.CONSUMER.CREATE.ERL.{durable}",
        f"$JS.API.CONSUMER.CREATE.ERL.{durable}.{filter_subject}",  # nats-py 2.16 with one filter
        f"$JS.API.CONSUMER.DURABLE.CREATE.ERL.{durable}",  # legacy
    ]


async def test_no_user_may_create_or_rewrite_a_durable_consumer_it_does_not_own(secured_nats):
    await bootstrap(secured_nats)
    for durable, owner in DURABLES.items():  # each owner creates its consumer, as its service does
        nc, _ = await as_user(secured_nats, owner)
        await ensure_consumer(nc.jetstream(), "ERL", ConsumerSpec(durable, ["erl.intent.>"]))
        await nc.close()
    ops, _ = await as_user(secured_nats, "ops")
    before = {d: (await ops.jetstream().consumer_info("ERL", d)).config for d in DURABLES}

    rewrite = "erl.nothing.>"  # the owner would get nothing any more
    for user in USERS:
        reqs: list[tuple[str, bytes]] = []
        for durable in [*DURABLES, "rogue"]:
            if DURABLES.get(durable) == user:
                continue
            cfg = before.get(durable) or before["router"]
            body = cfg.evolve(
                name=durable, durable_name=durable, filter_subject=rewrite, ack_wait=3600.0, max_deliver=1
            ).as_dict()
            data = json.dumps({"stream_name": "ERL", "config": body}).encode()
            reqs += [(subject, data) for subject in create_forms(durable, rewrite)]
        async with Attempts(secured_nats, user) as a:
            answers = await a.requests(reqs)
            await asyncio.sleep(0)  # let the client run the error callbacks of the last refusals
        assert {s for s, answer in answers.items() if answer is not None} == set(), (user, answers)
        assert a.refused(s for s, _ in reqs), user  # refused by the permission layer, every one

    after = {d: (await ops.jetstream().consumer_info("ERL", d)).config for d in DURABLES}
    assert after == before
    with pytest.raises(nats.js.errors.NotFoundError):
        await ops.jetstream().consumer_info("ERL", "rogue")
    await ops.close()

    # the owner still may update its own (a new ack_wait, on each subject form)
    for durable, owner in DURABLES.items():
        body = before[durable].evolve(name=durable, durable_name=durable, ack_wait=7.0).as_dict()
        data = json.dumps({"stream_name": "ERL", "config": body}).encode()
        async with Attempts(secured_nats, owner) as a:
            answers = await a.requests([(s, data) for s in create_forms(durable, "erl.intent.>")])
        for subject, answer in answers.items():
            assert answer and "error" not in answer and answer["config"]["ack_wait"] == 7_000_000_000, (
                subject,
                answer,
            )


async def test_the_nameless_create_subject_cannot_rewrite_a_durable(secured_nats):
    """The server would take a name in the body of a nameless create as an update of that consumer:
    nobody may publish there (replay reads by direct get instead)."""
    await bootstrap(secured_nats)
    nc, _ = await as_user(secured_nats, "router")
    cfg = await ensure_consumer(nc.jetstream(), "ERL", ConsumerSpec("router", ["erl.intent.>"]))
    await nc.close()
    body = cfg.evolve(durable_name=None, filter_subject="erl.nothing.>", max_deliver=1).as_dict()
    nameless = ("$JS.API.CONSUMER.CREATE.ERL", json.dumps({"stream_name": "ERL", "config": body}).encode())
    for user in USERS:
        async with Attempts(secured_nats, user) as a:
            answers = await a.requests([nameless])
            await asyncio.sleep(0)
        assert answers == {nameless[0]: None} and a.refused([nameless[0]]), (user, answers)
    ops, _ = await as_user(secured_nats, "ops")
    assert (await ops.jetstream().consumer_info("ERL", "router")).config.filter_subject == "erl.intent.>"
    await ops.close()


async def test_halt_and_resume_commands_come_only_from_risk_api_and_the_reconciler(secured_nats):
    await bootstrap(secured_nats)
    allowed = {("risk", "api"), ("reconciler", "reconciler")}
    for user in USERS:
        reqs = []
        for source in ("api", "reconciler", user, "ops"):
            cmd = HaltCommand(action="resume", reason="not yours to resume", source=source)
            reqs.append((f"erl.risk.command.{source}", encode(cmd)))
        async with Attempts(secured_nats, user) as a:
            answers = await a.requests(reqs)
            await asyncio.sleep(0)
        for subject, answer in answers.items():
            source = subject.rsplit(".", 1)[1]
            if (user, source) in allowed:
                assert answer and "seq" in answer, (user, subject, answer)  # journaled
            else:
                assert answer is None and subject.lower() in a.denied, (user, subject, answer)


async def test_ops_may_only_read(secured_nats):
    await bootstrap(secured_nats)
    nc, _ = await as_user(secured_nats, "router")
    await ensure_consumer(nc.jetstream(), "ERL", ConsumerSpec("router", ["erl.intent.>"]))
    await nc.close()
    strategy, pub = await as_user(secured_nats, "strategy")
    await pub.publish(signal(), uuid.uuid4().hex)
    await strategy.close()

    nc, _ = await as_user(secured_nats, "ops")
    js = nc.jetstream()
    assert (await js.stream_info("ERL")).state.messages >= 1
    assert await load_journal(js, "ERL", "erl", ["erl.>"])  # replay: an ephemeral ordered consumer
    await nc.close()
    stream = json.dumps({"name": "ERL", "subjects": ["erl.>"], "max_age": 1}).encode()
    writes = [
        ("$JS.API.STREAM.CREATE.ERL", stream),
        ("$JS.API.STREAM.UPDATE.ERL", stream),
        ("$JS.API.STREAM.DELETE.ERL", b""),
        ("$JS.API.STREAM.PURGE.ERL", b""),
        ("$JS.API.STREAM.MSG.DELETE.ERL", b'{"seq": 1}'),
        ("$JS.API.CONSUMER.DELETE.ERL.router", b""),
        ("$JS.API.STREAM.CREATE.KV_erl_guard", b"{}"),
        ("$KV.erl_guard.knobs", encode(GuardKnobs())),
        ("erl.order.transition.fake", b"{}"),
    ]
    async with Attempts(secured_nats, "ops") as a:
        answers = await a.requests(writes)
        await asyncio.sleep(0)
    assert all(answer is None for answer in answers.values()), answers
    assert a.refused(s for s, _ in writes)


def signal() -> Signal:
    return Signal(signal_id=uuid.uuid4().hex, symbol="BTC/USDT:USDT", side="buy", qty=0.01)


async def test_each_user_may_state_only_its_own_facts(secured_nats):
    await bootstrap(secured_nats)

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
    await bootstrap(secured_nats)
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


async def test_the_router_states_its_load_and_risk_hears_it(secured_nats):
    await bootstrap(secured_nats)
    risk, _ = await as_user(secured_nats, "risk")
    sub = await risk.subscribe("erl.router.load.>")
    await risk.flush()
    router, pub = await as_user(secured_nats, "router")
    load = RouterLoad(lag_sec=0.1, window_sec=5.0, source_service="router")
    await pub.publish(load, uuid.uuid4().hex)  # journaled: the stream stores it
    assert (await sub.next_msg(timeout=2)).subject == "erl.router.load.router"
    entry, entry_pub = await as_user(secured_nats, "entry")
    with pytest.raises(BusUnavailable):
        await entry_pub.publish(load, uuid.uuid4().hex)  # nobody else may state the router's load
    for nc in (risk, router, entry):
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
        # the router's load, published under its user and heard by risk under its own
        await tap.tap.wait_for(lambda: tap.tap.of(RouterLoad) and risk.router_load is not None)
        await risk.command("halt", "permission drill", "api", journal=True)
        await entry.guard.wait_until(lambda k: k is not None and not k.allow_entries)
        assert risk.state_persisted and risk.state_revision  # its restart state, with the halt, in KV
        await tap.tap.wait_for(lambda: tap.tap.of(SignalDecision))
    finally:
        await tap.close()
