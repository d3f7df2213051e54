"""The reconciler's read plan and pacing against the venue's request-weight budget."""

import pytest

from services.reconciler.read_budget import (
    SWEEP,
    ReadPlan,
    average_tick_cost,
    next_delay,
    plan_reads,
    sweep_reserve_1m,
    symbols_to_read,
)


def test_per_symbol_when_cheaper_every_symbol_on_a_sweep():
    p = plan_reads({"BTCUSDT", "ETHUSDT"}, sweep=False, with_equity=False)
    assert p.symbols == ("BTCUSDT", "ETHUSDT") and p.cost == 5 + 2 * 2
    assert plan_reads({"BTCUSDT"}, sweep=True, with_equity=False).symbols is None
    assert plan_reads(set(), sweep=False, with_equity=True).cost == 5 + 5  # positions + balance only


def test_many_symbols_switch_to_the_every_symbol_query():
    fifty = {f"S{i:03d}USDT" for i in range(50)}
    p = plan_reads(fifty, sweep=False, with_equity=False)
    assert p.symbols is None and p.cost == 5 + 2 * 40
    assert plan_reads(list(fifty)[:39], sweep=False, with_equity=False).symbols is not None


@pytest.mark.parametrize(
    "cost,used,expected",
    [
        (9, None, 1.0),  # cheap tick: the configured floor
        (85, None, 85 * 60 / (600 - 85)),  # 85 weight at 600/min, one tick held back: ~9.9 s
        (85, 1200, 10.0),  # the IP is at twice the budget: stretched, capped by max_sec
        (9, 1200, 2.0),  # stretched by used/budget
        (9, 300, 1.0),  # under budget: no stretch
    ],
)
def test_next_delay(cost, used, expected):
    d = next_delay(base_sec=1.0, max_sec=10.0, tick_cost=cost, used_1m=used, budget_1m=600)
    assert d == pytest.approx(expected)


def test_steady_state_stays_inside_the_budget():
    """Whatever the shape, the most ticks a rolling minute can hold at the chosen pace fit the budget."""
    for plan in (ReadPlan(None, True), ReadPlan(("A",) * 30, False), ReadPlan((), False)):
        d = next_delay(base_sec=0.01, max_sec=60.0, tick_cost=plan.cost, used_1m=None, budget_1m=600)
        most_in_a_window = int(60 / d) + 1
        assert most_in_a_window * plan.cost <= 600


def test_sweeps_are_paid_from_a_reserve():
    regular = plan_reads({"BTCUSDT"}, sweep=False, with_equity=False)  # 7 weight
    reserve = sweep_reserve_1m(regular, 30.0)
    assert reserve == SWEEP.cost * 2  # two sweeps a minute
    d = next_delay(
        base_sec=0.1, max_sec=60.0, tick_cost=regular.cost, used_1m=None, budget_1m=600, reserved_1m=reserve
    )
    assert (regular.cost * 60 / d) + regular.cost + reserve == pytest.approx(600)  # one tick held back
    every = plan_reads({f"S{i}" for i in range(45)}, sweep=False, with_equity=False)
    assert sweep_reserve_1m(every, 30.0) == 0  # every tick is a sweep already


def test_balance_reads_are_amortised_and_the_dearest_tick_held_back():
    every = plan_reads({f"S{i}" for i in range(50)}, sweep=False, with_equity=True)
    avg = average_tick_cost(every, equity_every_ticks=5)
    assert avg == 85 + 1  # the 5-weight balance read every 5th tick
    d = next_delay(
        base_sec=1.0, max_sec=60.0, tick_cost=avg, burst_cost=every.cost, used_1m=None, budget_1m=600
    )
    assert (int(60 / d) + 1) * every.cost <= 600  # even if every tick in a window read the balance


def test_untrusted_stream_reads_every_watched_symbol():
    watched = {"BTCUSDT", "ETHUSDT"}
    assert symbols_to_read(watched, trusted=False, changed=set(), positions={}, last_positions={}) == watched
    # trusted, but no earlier read to compare positions with: everything
    assert symbols_to_read(watched, trusted=True, changed=set(), positions={}, last_positions=None) == watched


def test_trusted_stream_reads_only_what_changed_or_moved():
    watched = {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    kw = {"trusted": True, "positions": {"BTCUSDT": 1.0, "ETHUSDT": 2.0}}
    quiet = symbols_to_read(watched, changed=set(), last_positions={"BTCUSDT": 1.0, "ETHUSDT": 2.0}, **kw)
    assert quiet == set()
    # journal or stream activity, even on a symbol nobody watches (a foreign order)
    assert symbols_to_read(watched, changed={"XRPUSDT"}, last_positions=kw["positions"], **kw) == {"XRPUSDT"}
    # a position that moved, opened or closed without an order event
    moved = symbols_to_read(watched, changed=set(), last_positions={"BTCUSDT": 0.5, "SOLUSDT": 1.0}, **kw)
    assert moved == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
