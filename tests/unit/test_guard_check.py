"""The shared entry check against the guard knobs (libs/common/guard_check.py), used by entry and router."""

from __future__ import annotations

import pytest

from libs.common.guard_check import GuardCheck, check_entry
from libs.common.messages import GuardKnobs

KNOBS = GuardKnobs(
    max_notional_usdt=10_000,
    max_leverage=10,
    min_entry_conf=0.5,
    entry_cooldown_sec=5,
    max_open_orders=3,
)


def check(knobs: GuardKnobs | None = KNOBS, **kw) -> GuardCheck:
    args = dict(notional_usdt=1_000.0, unpriced="notional_unknown")
    args.update(kw)
    return check_entry(knobs, **args)


def test_allowed_counts_the_notional_and_sets_no_leverage_without_a_hard_cap():
    assert check() == GuardCheck(True, "", 1_000.0)
    # every fact at its limit still passes
    c = check(confidence=0.5, since_last_entry_sec=5.0, open_entries=2, age_sec=30.0, max_age_sec=30.0)
    assert c.allowed and c.leverage is None
    assert check(notional_usdt=10_000.0).allowed


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"knobs": None}, "guard_unavailable"),
        ({"knobs": GuardKnobs(allow_entries=False, mode="halted")}, "entries_blocked:halted"),
        ({"confidence": 0.4}, "confidence_below_floor:0.4<0.5"),
        ({"since_last_entry_sec": 1.5}, "cooldown:3.5s"),
        ({"open_entries": 3}, "open_order_cap:3>=3"),
        ({"age_sec": 30.04, "max_age_sec": 30.0}, "stale_intent:30.04s>30s"),
        ({"notional_usdt": None}, "notional_unknown"),
        ({"notional_usdt": None, "unpriced": "mark_price_unavailable"}, "mark_price_unavailable"),
        ({"notional_usdt": 10_000.5}, "notional_cap:10000.50>10000"),
    ],
)
def test_each_refusal(kw, reason):
    c = check(**kw)
    assert not c.allowed and c.reason == reason and c.leverage is None
    # only a notional over the cap is reported with the refusal (it was counted)
    assert c.notional_usdt == (kw["notional_usdt"] if reason.startswith("notional_cap") else None)


def test_first_refusal_wins_in_a_fixed_order():
    everything_wrong = dict(
        confidence=0.1,
        since_last_entry_sec=0.0,
        open_entries=99,
        age_sec=99.0,
        max_age_sec=30.0,
        notional_usdt=None,
    )
    order = [
        "confidence_below_floor",
        "cooldown",
        "open_order_cap",
        "stale_intent",
        "notional_unknown",
    ]
    fixed = dict(
        confidence=None, since_last_entry_sec=None, open_entries=None, age_sec=None, notional_usdt=1.0
    )
    facts = dict(everything_wrong)
    assert check(None, **facts).reason == "guard_unavailable"
    assert (
        check(GuardKnobs(allow_entries=False, mode="defensive"), **facts).reason
        == "entries_blocked:defensive"
    )
    for name, key in zip(order, fixed, strict=True):
        assert check(**facts).reason.startswith(name)
        facts[key] = fixed[key]  # cure it: the next one shows
    assert check(**facts).allowed


def test_leverage_is_capped_by_the_hard_cap_and_the_knobs():
    c = check(requested_leverage=50, hard_max_leverage=20)
    assert c.allowed and c.leverage == 10 and c.leverage_capped  # knobs say 10
    c = check(GuardKnobs(max_leverage=125), requested_leverage=50, hard_max_leverage=20)
    assert c.leverage == 20 and c.leverage_capped
    c = check(requested_leverage=2, hard_max_leverage=20)
    assert c.leverage == 2 and not c.leverage_capped
    c = check(requested_leverage=None, hard_max_leverage=20)  # none asked: the cap
    assert c.leverage == 10 and not c.leverage_capped
    assert check(requested_leverage=50, hard_max_leverage=20, notional_usdt=None).leverage is None
