"""Entry shedding from the router's load (``services/risk/router_load.py`` and its knobs), pure."""

from __future__ import annotations

import pytest

from libs.common.config import RiskSettings
from libs.common.messages import GuardKnobs, RouterLoad
from services.risk.posture import OperatorHalt, knobs_changed, previous_posture
from services.risk.router_load import NOT_REPORTED, LoadLevel, LoadShedder, load_reading, newer
from tests.builders import knobs

NOW = 1_700_000_000.0
S = RiskSettings(
    router_lag_throttle_sec=0.5,
    router_lag_block_sec=2.0,
    router_backlog_throttle=500,
    router_backlog_block=2000,
    router_load_stale_sec=30.0,
    tighten_after=2,
    recover_after=3,
)


def report(lag: float = 0.0, backlog: int | None = 0, in_flight: int = 0, age: float = 1.0) -> RouterLoad:
    return RouterLoad(
        lag_sec=lag,
        window_sec=5.0,
        backlog=backlog,
        in_flight=in_flight,
        ts_ms=int((NOW - age) * 1000),
        source_service="router",
    )


@pytest.mark.parametrize(
    ("r", "level", "words"),
    [
        (report(0.01), LoadLevel.OK, "entry lag 0.01 s, 0 waiting"),
        (report(0.5), LoadLevel.THROTTLE, "lag >= 0.5 s: throttle"),
        (report(0.1, backlog=300, in_flight=200), LoadLevel.THROTTLE, "waiting >= 500: throttle"),
        (report(2.0), LoadLevel.BLOCK, "lag >= 2 s: block"),
        (report(0.0, backlog=1900, in_flight=256), LoadLevel.BLOCK, "waiting >= 2000: block"),
        (report(0.0, backlog=None, in_flight=10), LoadLevel.OK, "10 waiting"),  # backlog unread
    ],
)
def test_the_reading_of_a_fresh_report(r, level, words):
    reading = load_reading(r, NOW, S)
    assert reading.level is level and words in reading.detail


def test_no_report_is_not_counted_a_silent_router_is_unknown():
    assert load_reading(None, NOW, S) is NOT_REPORTED and NOT_REPORTED.level is LoadLevel.OK
    stale = load_reading(report(lag=9.0, age=31.0), NOW, S)  # its last word was "blocked": not kept
    assert stale.level is LoadLevel.UNKNOWN and "router load unknown: last report 31 s ago" in stale.detail


def test_a_router_that_goes_silent_while_blocked_ends_cautious_neither_blocked_nor_healthy():
    sh = LoadShedder(S)
    for _ in range(2):
        sh.step(load_reading(report(3.0), NOW, S))
    assert sh.mode == 3
    unknown = load_reading(report(3.0, age=60.0), NOW, S)
    modes = []
    for _ in range(12):
        sh.step(unknown)
        modes.append(sh.mode)
    assert modes[-1] == 1 and modes == sorted(modes, reverse=True)  # steps back, stops at cautious


def test_the_newest_report_wins_whatever_the_arrival_order():
    a, b = report(1.0, age=2.0), report(0.0, age=1.0)
    assert newer(None, a) is a and newer(a, b) is b and newer(b, a) is b


def test_the_shedder_tightens_after_persistence_and_recovers_one_step_at_a_time():
    sh = LoadShedder(S)
    block = load_reading(report(3.0), NOW, S)
    ok = load_reading(report(0.0), NOW, S)
    assert not sh.step(block) and sh.mode == 0  # one evaluation is not enough (RISK_TIGHTEN_AFTER 2)
    assert sh.step(block) and sh.mode == 3
    assert sh.reason.startswith("router load tighten:") and "lag >= 2 s: block" in sh.reason
    throttle = load_reading(report(1.0), NOW, S)
    for _ in range(5):  # still over the throttle threshold: not relaxed (hysteresis)
        assert not sh.step(throttle)
    assert sh.mode == 3
    modes = []
    for _ in range(9):  # clear: one step back every RISK_RECOVER_AFTER (3) evaluations
        sh.step(ok)
        modes.append(sh.mode)
    assert modes == [3, 3, 2, 2, 2, 1, 1, 1, 0]
    assert sh.reason.startswith("router load recover:")


def test_a_throttle_reading_goes_to_defensive_not_halted():
    sh = LoadShedder(S)
    r = load_reading(report(1.0), NOW, S)
    for _ in range(10):
        sh.step(r)
    assert sh.mode == 2


def compose(**kw) -> GuardKnobs:
    return knobs(S, **kw)


def test_the_knobs_take_the_stricter_controller_and_say_the_router_is_behind():
    k = compose(load_mode=3, load_reason="router load tighten: x; entry lag 3.00 s", load_level=3)
    assert not k.allow_entries and k.mode == "halted" and k.reason.startswith("router load tighten")
    assert k.controller_mode == "normal" and k.load_mode == "halted" and k.debt_inputs["router_load"] == 3.0
    k = compose(load_mode=2, load_reason="router load tighten: y")
    assert k.allow_entries and k.mode == "defensive" and k.max_open_orders == 1  # throttled
    k = compose(controller_mode=3, load_mode=2, load_reason="router load tighten: y")
    assert k.mode == "halted" and "router load" not in k.reason  # the belief controller is stricter
    k = compose(load_mode=3, load_reason="router load z", operator=OperatorHalt(True, "api: x"))
    assert k.reason == "manual: api: x; router load z"  # every halt in force is named
    assert knobs_changed(compose(), compose(load_mode=1))


def test_a_restart_takes_the_load_mode_over_from_the_previous_knobs():
    assert previous_posture(GuardKnobs(load_mode="halted"), NOW).load_mode == 3
    assert previous_posture(GuardKnobs(), NOW).load_mode == 0
    sh = LoadShedder(S)
    sh.restore(3)
    assert sh.mode == 3 and "taken over" in sh.reason


def test_thresholds_are_validated_by_name():
    with pytest.raises(ValueError, match="RISK_ROUTER_LAG_BLOCK_SEC must be >= RISK_ROUTER_LAG_THROTTLE_SEC"):
        RiskSettings(router_lag_throttle_sec=3.0, router_lag_block_sec=2.0)
    with pytest.raises(ValueError, match="RISK_ROUTER_BACKLOG_BLOCK must be >= RISK_ROUTER_BACKLOG_THROTTLE"):
        RiskSettings(router_backlog_throttle=100, router_backlog_block=50)
