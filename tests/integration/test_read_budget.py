"""The reconciler lives inside the venue's request-weight budget (issue 7, item 9).

The simulator counts weight as Binance does; the reconciler must pick its query shape
and pace from what a tick costs and what the venue reports, never poll everything at
its base interval.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.reconciler.read_budget import SWEEP
from services.simulator.testing import SimulatorThread

pytestmark = pytest.mark.integration


def used(sim: Any) -> int:
    return sum(ip["used_weight_1m"] for ip in sim.limits()["ips"].values())


async def test_idle_ticks_read_per_symbol_and_pace_to_the_share(sim, reconciler_factory):
    rec = await reconciler_factory(
        interval_sec=0.05,
        weight_budget_share=0.25,
        venue_weight_limit_1m=2400,
        sweep_every_sec=30.0,
        equity_every_ticks=5,
    )
    await rec.wait_ticks(1)  # the first tick sweeps every symbol
    budget = 0.25 * rec.settings.venue_weight_limit_1m
    before = used(sim)
    summary = await rec.wait_ticks(1)
    plan = rec.last_plan
    assert summary.ok and plan is not None and plan.symbols == ()  # nothing watched: positions only
    assert used(sim) - before == plan.cost  # the venue counted exactly what the plan said
    # paced: this shape at this delay, plus the sweeps' reserve, stays inside the share
    sweeps_1m = SWEEP.cost * 60 / rec.settings.sweep_every_sec
    assert (int(60 / rec.next_delay_sec) + 1) * plan.cost + sweeps_1m <= budget
    assert rec.next_delay_sec > rec.settings.interval_sec  # the 0.05 s base alone would blow the budget


async def test_a_watched_symbol_is_read_on_its_own(sim, reconciler_factory):
    sim.set_position("BTCUSDT", 0.02)
    rec = await reconciler_factory()
    await rec.wait_ticks(2)
    assert rec.last_plan is not None and rec.last_plan.symbols == ("BTC/USDT:USDT",)


async def test_fifty_positions_use_every_symbol_queries_at_a_slower_pace(nats_settings, started):
    from libs.common.config import ExchangeSettings
    from services.reconciler.service import ReconcilerService
    from tests.conftest import fast_reconciler_settings

    with SimulatorThread(symbols="50") as big:
        symbols = [s for s in big.state()["prices"]][:50]
        for s in symbols:
            big.set_position(s, 1.0 if not s.startswith("BTC") else 0.01)
        settings = fast_reconciler_settings(
            interval_sec=0.05,
            weight_budget_share=0.25,
            venue_weight_limit_1m=2400,
            repair_cooldown_sec=60.0,
            max_interval_sec=30.0,
        )
        ex = ExchangeSettings(api_url=big.base_url, api_key="sim-key", api_secret="sim-secret")
        rec = await started(ReconcilerService(nats_settings, ex, settings))
        await rec.wait_ticks(1, within_sec=30)
        plan = rec.last_plan
        assert plan is not None and plan.symbols is None  # 50 symbols: the 40-weight query is cheaper
        assert plan.cost == SWEEP.cost + 5  # + the balance (equity every tick in the fast settings)
        budget = 0.25 * settings.venue_weight_limit_1m
        assert rec.next_delay_sec == pytest.approx(plan.cost * 60 / (budget - plan.cost))
        assert (int(60 / rec.next_delay_sec) + 1) * plan.cost <= budget  # a full window fits
        assert not [ip for ip in big.limits()["ips"].values() if ip["banned"] or ip["retry_after_until_ms"]]
