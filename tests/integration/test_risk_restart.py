"""Risk restarts: what protects money comes back before the first knobs, and commands apply once.

Each restart test trips the first risk process, stops it, starts a new RiskService on the same
journal and bucket, and checks the *first* knobs the new process publishes (never an "allow entries"
window between start and restore).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import httpx
import nats.errors
import nats.js.kv
import pytest

from libs.common.config import KillSettings
from libs.common.messages import GuardKnobs, HaltCommand, ReconcileSummary, VenueBan
from services.risk.kill_switch import Trigger
from services.risk.state import STATE_KEY, RiskState
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_tick = 0


async def post(svc, path: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.post(f"http://127.0.0.1:{svc.bound_port}{path}", json=body, headers=AUTH)


async def summary(bus, **kw) -> None:
    global _tick
    _tick += 1
    await bus.publish(ReconcileSummary(tick=_tick, **kw))


def knobs_after(bus, revision: int) -> list[GuardKnobs]:
    """Knobs journaled after ``revision`` (the KV revision of the last knobs of a stopped process)."""
    return [k for k in bus.tap.of(GuardKnobs) if k.revision > revision]


async def restart(bus, risk_factory, first, kill: KillSettings, pause_sec: float = 0.0):
    """Stop ``first``, start a new risk process; return it, the knobs it published first, and the
    revision they follow."""
    last = first.published.revision
    await first.stop()
    await asyncio.sleep(pause_sec)
    second = await risk_factory(kill=kill)
    first_knobs = await bus.tap.wait_for(lambda: next(iter(knobs_after(bus, last)), None))
    return second, first_knobs, last


async def stored_state(bus) -> RiskState:
    kv = await bus.js.key_value(bus.settings.kv_bucket)
    return RiskState.model_validate_json((await kv.get(STATE_KEY)).value)


def never_open_between(bus, revision: int, until: GuardKnobs | None = None) -> None:
    """No knobs after ``revision`` (and before ``until``) allowed entries."""
    knobs = [k for k in knobs_after(bus, revision) if until is None or k.revision < until.revision]
    assert knobs and not any(k.allow_entries for k in knobs), [(k.allow_entries, k.reason) for k in knobs]


async def released(bus, svc, within_sec: float = 15.0) -> GuardKnobs:
    """The knobs that opened entries again, once the tap has them too."""
    k = await svc.wait_published(lambda k: k.allow_entries, within_sec=within_sec)
    await bus.tap.wait_for(lambda: bus.tap.of(GuardKnobs, revision=k.revision))
    return k


# ----------------------------------------------------------------------------- restarts


async def test_latched_drawdown_and_manual_halt_survive_a_restart(bus, risk_factory):
    kill = KillSettings(max_drawdown_pct=10.0, stale_data_sec=30)
    first = await risk_factory(kill=kill)
    await summary(bus, equity=1000.0)
    await summary(bus, equity=850.0)
    await first.wait_published(lambda k: "equity_drawdown" in k.kill_reasons)
    await post(first, "/halt", {"reason": "looking at the drawdown"})
    second, knobs, seen = await restart(bus, risk_factory, first, kill)
    assert not knobs.allow_entries and knobs.mode == "halted"
    assert knobs.kill_reasons == ["equity_drawdown"] and knobs.manual_halt
    assert knobs.manual_reason == "api: looking at the drawdown"
    assert second.kill.peak_equity == 1000.0 and second.kill.active == {Trigger.DRAWDOWN: float("inf")}
    # recovered equity does not unlatch it, and lifting only the halt is not enough ...
    await summary(bus, equity=1000.0)
    await second.consumer.wait_until(lambda: second.last_summary and second.last_summary.equity == 1000.0)
    await second.evaluate()
    assert "equity_drawdown" in second.published.kill_reasons
    never_open_between(bus, seen)
    # ... an operator resume clears both, and the cleared state is what the next restart finds
    r = await post(second, "/resume", {"reason": "reviewed"})
    assert r.status_code == 200 and r.json()["allow_entries"] is True
    stored = await stored_state(bus)
    assert stored.holds == {} and not stored.manual_halt and stored.peak_equity == 1000.0
    _, knobs, _ = await restart(bus, risk_factory, second, kill)
    assert knobs.allow_entries and knobs.kill_reasons == []


async def test_mismatch_storm_hold_keeps_its_absolute_end_across_a_restart(bus, risk_factory):
    kill = KillSettings(reconcile_mismatch_streak_max=3, reconcile_mismatch_halt_sec=4.0, stale_data_sec=30)
    first = await risk_factory(kill=kill)
    await summary(bus, mismatch_streak=3)
    await first.wait_published(lambda k: "reconcile_mismatch_storm" in k.kill_reasons)
    until = first.kill.active[Trigger.MISMATCH_STORM]
    second, knobs, seen = await restart(bus, risk_factory, first, kill, pause_sec=1.5)
    assert not knobs.allow_entries and knobs.kill_reasons == ["reconcile_mismatch_storm"]
    assert second.kill.active[Trigger.MISMATCH_STORM] == until  # absolute: not restart + 4 s
    await summary(bus, mismatch_streak=0)  # calm again, but the hold has not ended
    opened = await released(bus, second)
    assert until <= opened.ts_ms / 1000 < until + 1.0  # a restart-based hold would end 1.5 s later
    never_open_between(bus, seen, opened)


@pytest.mark.parametrize("trigger", ["api_errors", "stale_data"])
async def test_api_error_and_stale_data_trips_survive_a_restart(bus, risk_factory, trigger):
    if trigger == "api_errors":
        kill = KillSettings(api_error_max=3, stale_data_sec=30)
        first = await risk_factory(kill=kill)
        for _ in range(3):  # a venue IP ban counts as an API error
            await bus.publish(VenueBan(banned_until_ms=1, source_service="router"))
    else:
        kill = KillSettings(stale_data_sec=1.0)  # no reconcile data at all
        first = await risk_factory(kill=kill)
    await first.wait_published(lambda k: trigger in k.kill_reasons)
    second, knobs, seen = await restart(bus, risk_factory, first, kill)
    assert not knobs.allow_entries and knobs.kill_reasons == [trigger]
    if trigger == "api_errors":  # the 30 s hold goes on from where it was, the error window is gone
        held = first.kill.active[Trigger.API_ERRORS]  # as the stopped process last persisted it
        assert second.kill.active[Trigger.API_ERRORS] == held > time.time() + 20
        await asyncio.sleep(1.0)
        assert not second.published.allow_entries
    else:  # no fresh grace period: held until fresh data arrives
        await asyncio.sleep(1.0)
        assert second.published.kill_reasons == ["stale_data"]
        await summary(bus)
        never_open_between(bus, seen, await released(bus, second))


async def test_unreadable_state_at_start_halts_until_it_can_be_read(bus, risk_factory, monkeypatch):
    kill = KillSettings(max_drawdown_pct=10.0, stale_data_sec=30)
    first = await risk_factory(kill=kill)
    await summary(bus, equity=1000.0)
    await summary(bus, equity=800.0)
    await first.wait_published(lambda k: "equity_drawdown" in k.kill_reasons)
    real_get = nats.js.kv.KeyValue.get
    failures = {"left": 3}

    async def flaky_get(self, key, *a, **kw):
        if key == STATE_KEY and failures["left"] > 0:
            failures["left"] -= 1
            raise nats.errors.TimeoutError
        return await real_get(self, key, *a, **kw)

    monkeypatch.setattr(nats.js.kv.KeyValue, "get", flaky_get)
    second, knobs, seen = await restart(bus, risk_factory, first, kill)
    assert not knobs.allow_entries and knobs.kill_reasons[0] == "state_unavailable"
    assert knobs.reason.startswith("state_unavailable: unreadable")
    restored = await second.wait_published(lambda k: "state_unavailable" not in k.kill_reasons)
    assert restored.kill_reasons == ["equity_drawdown"] and failures["left"] == 0
    never_open_between(bus, seen)


async def test_corrupt_state_starts_halted_without_crashing_and_resume_replaces_it(bus, risk_factory, caplog):
    caplog.set_level(logging.INFO, logger="erl.risk")
    kv = await bus.js.key_value(bus.settings.kv_bucket)
    await kv.put(STATE_KEY, b'{"holds": {"equity_drawdown": nul')
    kill = KillSettings(stale_data_sec=30)
    risk = await risk_factory(kill=kill)
    first = await bus.tap.wait_for(lambda: next(iter(bus.tap.of(GuardKnobs)), None))
    assert not first.allow_entries and first.kill_reasons == ["state_unavailable"]
    assert first.reason.startswith("state_unavailable: corrupt risk.state")
    await asyncio.sleep(1.0)  # five evaluations: alive, still halted, logged loudly once
    assert not risk.published.allow_entries and risk.readiness() == (True, "ok")
    async with httpx.AsyncClient() as c:
        status = (await c.get(f"http://127.0.0.1:{risk.bound_port}/guard")).json()
    assert status["state"]["error"].startswith("corrupt")
    corrupt = [r for r in caplog.records if r.getMessage() == "risk.state_corrupt"]
    assert len(corrupt) == 1 and corrupt[0].levelno == logging.CRITICAL
    # halting over it is still possible and does not replace the corrupt value
    await post(risk, "/halt", {"reason": "investigating"})
    assert (await kv.get(STATE_KEY)).value.startswith(b'{"holds": {"equity_drawdown": nul')
    r = await post(risk, "/resume", {"reason": "value inspected, reset"})
    assert r.status_code == 200 and r.json()["allow_entries"] is True
    assert (await stored_state(bus)).holds == {}
    _, knobs, _ = await restart(bus, risk_factory, risk, kill)
    assert knobs.allow_entries


# ----------------------------------------------------------------------------- commands apply once


async def test_one_rest_command_is_applied_once(bus, risk_factory, caplog):
    caplog.set_level(logging.INFO, logger="erl.risk")
    risk = await risk_factory()
    seen = risk.published.revision
    assert (await post(risk, "/halt", {"reason": "maintenance"})).status_code == 200
    assert (await post(risk, "/resume", {"reason": "maintenance over"})).status_code == 200
    await risk.consumer.wait_handled(2)  # both bus copies came back to risk
    await risk.evaluate()
    resumed = [r for r in caplog.records if r.getMessage() == "risk.resumed"]
    assert len(resumed) == 1
    assert risk.command_counts == {"applied": 2, "duplicate": 2}
    # the late bus copy of the halt never re-halted after the resume
    assert risk.published.allow_entries
    await released(bus, risk)
    assert [k.allow_entries for k in knobs_after(bus, seen)] == [False, True]
    ids = [c.command_id for c in bus.tap.of(HaltCommand)]
    assert len(ids) == 2 and all(ids) and (await stored_state(bus)).commands[-2:] == ids


async def test_a_command_id_is_applied_once_even_across_a_restart(bus, risk_factory):
    risk = await risk_factory()
    cmd = HaltCommand(action="halt", reason="drill", source="ops", command_id=uuid.uuid4().hex)
    await bus.publish(cmd)
    await risk.wait_published(lambda k: k.manual_halt)
    await post(risk, "/resume", {"reason": "drill over"})
    await bus.publish(cmd)  # the same command again (a redelivery, a replayed publish)
    await risk.consumer.wait_handled(3)
    assert risk.published.allow_entries and risk.command_counts == {"applied": 2, "duplicate": 2}
    restarted, knobs, _ = await restart(bus, risk_factory, risk, KillSettings(stale_data_sec=30))
    await bus.publish(cmd)
    await restarted.consumer.wait_handled(1)
    assert knobs.allow_entries and restarted.published.allow_entries
    assert restarted.command_counts == {"applied": 0, "duplicate": 1}


async def test_commands_without_an_id_are_known_by_their_stream_sequence(bus, risk_factory):
    risk = await risk_factory()
    for _ in range(2):  # two commands (the reconciler's boot freeze carries no id): both applied
        await bus.publish(HaltCommand(action="halt", reason="orphans at boot", source="reconciler"))
    await risk.consumer.wait_handled(2)
    assert risk.command_counts == {"applied": 2, "duplicate": 0} and risk.published.manual_halt
    stored = await stored_state(bus)
    assert len(stored.commands) == 2 and all(c.startswith("seq") for c in stored.commands)


async def test_state_is_written_only_when_it_changes(bus, risk_factory):
    risk = await risk_factory()
    await summary(bus, equity=1000.0)
    await risk.consumer.wait_handled(1)
    writes = risk.state_writes
    for _ in range(20):
        await summary(bus, equity=1000.0)
    await risk.consumer.wait_handled(21)
    await asyncio.sleep(0.5)  # a few evaluation ticks too
    assert risk.state_writes == writes and risk.state_persisted
