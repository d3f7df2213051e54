"""Entries are shed before the router's backlog grows: router.load -> risk -> guard knobs, end to end.

The router measures how late entries are when it takes them up (``services/router/load.py``) and
publishes it; risk throttles or blocks entries on it with persistence and hysteresis
(``services/risk/router_load.py``) and lets them back when the lag is gone. Exits and protection are
never shed.
"""

from __future__ import annotations

import time

import pytest

from libs.common.config import GuardSettings
from libs.common.messages import GuardKnobs, RouterLoad, Signal, SignalDecision
from libs.common.state_machine import OrderState
from tests.integration.helpers import BTC, make_intent, protection_goes_through, settled

pytestmark = pytest.mark.integration

S = OrderState
SHEDDING = dict(
    router_lag_throttle_sec=0.5,
    router_lag_block_sec=2.0,
    router_backlog_throttle=500,
    router_backlog_block=2000,
    tighten_after=2,
    recover_after=2,
)


def sig(signal_id: str) -> Signal:
    return Signal(signal_id=signal_id, symbol=BTC, side="buy", qty=0.01)


async def decided(bus, signal_id: str) -> SignalDecision:
    return await bus.tap.wait_for(lambda: next(iter(bus.tap.of(SignalDecision, signal_id=signal_id)), None))


async def test_late_entries_at_the_router_block_new_entries_exits_flow_and_entries_come_back(
    bus, sim, router_factory, risk_factory, entry_factory
):
    guard = GuardSettings(require_knobs=True)
    router = await router_factory(
        guard=guard, load_window_sec=2.0, load_every_sec=0.2, load_idle_every_sec=1.0
    )
    risk = await risk_factory(**SHEDDING)
    entry = await entry_factory(guard=guard)
    await router.guard.wait_until(lambda k: k is not None and k.allow_entries)

    # an entry that waited 3 s before the router took it up (the router's own measurement path)
    late = make_intent(ts_ms=int(time.time() * 1000) - 3_000)
    await bus.publish(late)
    knobs = await risk.wait_published(lambda k: k.mode == "halted")
    assert not knobs.allow_entries and knobs.load_mode == "halted" and knobs.controller_mode == "normal"
    assert knobs.reason.startswith("router load tighten") and "lag >= 2 s: block" in knobs.reason
    assert knobs.debt_inputs["router_load"] == 3.0
    report = next(r for r in bus.tap.of(RouterLoad) if r.lag_sec >= 2.0)
    assert report.source_service == "router" and report.entries >= 1

    # blocked: a new signal is refused, an entry reaching the router is not sent ...
    await entry.guard.wait_until(lambda k: k is not None and not k.allow_entries)
    await bus.publish(sig("shed-1"))
    assert (await decided(bus, "shed-1")).reason == "entries_blocked:halted"
    queued = make_intent()
    await bus.publish(queued)
    t = await bus.tap.wait_for(lambda: settled(bus.tap, queued))
    assert (t.to_state, t.reason) == (S.BLOCKED, "entries_blocked:halted")
    # ... while a stop and an exit go through: protection is never shed
    await protection_goes_through(bus, sim)

    # the late entry leaves the window: the lag is gone, entries come back one step at a time
    await risk.wait_published(lambda k: k.mode == "normal", within_sec=30)
    await bus.tap.wait_for(lambda: bus.tap.of(GuardKnobs)[-1].mode == "normal")  # journaled
    modes = [k.mode for k in bus.tap.of(GuardKnobs)]
    modes = [m for i, m in enumerate(modes) if i == 0 or m != modes[i - 1]]
    assert modes[modes.index("halted") :] == ["halted", "defensive", "cautious", "normal"]
    await entry.guard.wait_until(lambda k: k is not None and k.allow_entries and k.mode == "normal")
    await bus.publish(sig("back-1"))
    assert (await decided(bus, "back-1")).accepted


async def repeat_until(risk, send, predicate, within_sec: float = 15.0) -> GuardKnobs:
    """Send a report the way a live router does, again and again, until risk publishes knobs that satisfy
    ``predicate`` (waiting on risk's own publications, never a fixed sleep)."""
    deadline = time.monotonic() + within_sec
    while True:
        await send()
        try:
            return await risk.wait_published(predicate, within_sec=0.3)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


async def test_load_reports_throttle_block_recover_and_a_silent_router_is_unknown(bus, risk_factory):
    risk = await risk_factory(**SHEDDING, router_load_stale_sec=1.0)
    await risk.wait_published(lambda k: k.mode == "normal")

    def report(lag: float = 0.0, backlog: int = 0):
        return lambda: bus.publish(
            RouterLoad(lag_sec=lag, window_sec=5.0, backlog=backlog, source_service="router")
        )

    k = await repeat_until(risk, report(lag=0.8), lambda k: k.mode == "defensive")
    assert k.allow_entries and k.max_open_orders == 1 and "lag >= 0.5 s: throttle" in k.reason  # throttled
    k = await repeat_until(risk, report(backlog=5_000), lambda k: k.mode == "halted")
    assert not k.allow_entries and "waiting >= 2000: block" in k.reason
    k = await repeat_until(risk, report(), lambda k: k.mode == "normal")
    assert k.allow_entries and k.load_mode == "normal"
    # the router goes silent: its load is unknown, neither healthy nor blocked
    k = await risk.wait_published(lambda k: k.mode == "cautious", within_sec=15)
    assert k.allow_entries and "router load unknown" in k.reason
    assert risk.status()["router_load"]["level"] == "unknown"
