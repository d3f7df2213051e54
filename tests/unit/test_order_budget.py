"""The entry share of the venue's order budget: the decision, the limits read from exchangeInfo, and the
order counts it is given (the venue's last word plus our own sends since). Pure, clock injected."""

from __future__ import annotations

import pytest

from libs.common.config import ConfigError, RouterSettings, load
from libs.venue.limits import OrderLimits, VenueLimits, order_limits_from
from services.router.order_budget import entry_budget_refusal

NOW = 1_700_000_000.0
BINANCE = OrderLimits(300, 1200, "exchangeInfo")


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def test_entries_pass_up_to_their_share_of_either_limit():
    assert entry_budget_refusal(BINANCE, (149, 149), 0.5) == ""  # the 150th order is within 50% of 300
    assert entry_budget_refusal(BINANCE, (150, 150), 0.5) == (
        "order_budget: 151/300 per 10s, entries may use 50%"
    )
    assert entry_budget_refusal(BINANCE, (10, 600), 0.5) == (
        "order_budget: 601/1200 per 1min, entries may use 50%"
    )
    assert entry_budget_refusal(BINANCE, (0, 0), 0.5) == ""


def test_a_share_too_small_for_one_order_refuses_every_entry():
    assert entry_budget_refusal(OrderLimits(3, 1200), (0, 0), 0.2).startswith("order_budget: 1/3 per 10s")


def test_order_limits_from_exchange_info():
    rate_limits = [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 600},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 40},
    ]
    assert order_limits_from(rate_limits) == OrderLimits(40, 600, "exchangeInfo")


@pytest.mark.parametrize(
    "rate_limits",
    [
        None,
        [],
        "garbage",
        [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}],
        [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": "lots"}],
        [{"rateLimitType": "ORDERS", "interval": "FORTNIGHT", "intervalNum": 1, "limit": 5}],
        [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 0}],
    ],
)
def test_unknown_order_limits_are_binances_defaults(rate_limits):
    assert order_limits_from(rate_limits) == OrderLimits(300, 1200, "default")


def test_a_window_the_venue_does_not_state_keeps_its_default():
    only_10s = [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50}]
    assert order_limits_from(only_10s) == OrderLimits(50, 1200, "exchangeInfo")


def counts(count_10s: int, count_1m: int) -> dict[str, str]:
    return {"X-MBX-ORDER-COUNT-10S": str(count_10s), "X-MBX-ORDER-COUNT-1M": str(count_1m)}


def test_counts_are_the_venues_last_word_plus_our_sends_since_its_request():
    clock = Clock()
    v = VenueLimits(clock=clock)
    assert v.order_counts() == (0, 0)
    v.order_sent("a")
    clock.t += 0.1
    v.order_sent("b")  # in flight when the venue answered below: maybe counted twice, never missed
    clock.t += 0.1
    v.record(200, counts(40, 90), "", sent_at=NOW + 0.05)
    v.order_sent("c")
    assert v.order_counts() == (42, 92)


def test_a_count_older_than_its_window_gives_way_to_our_own_sends():
    clock = Clock()
    v = VenueLimits(clock=clock)
    v.record(200, counts(200, 500), "")
    clock.t += 5
    v.order_sent()
    assert v.order_counts() == (201, 501)
    clock.t += 6  # the 10 s count is past its window; our own send 6 s ago is still in it
    assert v.order_counts() == (1, 501)
    clock.t += 60
    assert v.order_counts() == (0, 0)


def test_a_reserved_entry_the_venue_has_not_seen_yet_is_counted_on_top_of_its_count():
    clock = Clock()
    v = VenueLimits(clock=clock)
    v.reserve_order("entry")
    clock.t += 0.1
    v.record(200, counts(5, 5), "", sent_at=clock.t)  # a stop's answer: the entry is not in it yet
    assert v.order_counts() == (6, 6)
    clock.t += 0.1
    v.order_sent("entry")  # now on the wire: counted as a send since that answer, no longer reserved
    assert v.order_counts() == (6, 6)


def test_a_reserved_entry_counts_at_once_and_not_again_when_sent():
    clock = Clock()
    v = VenueLimits(clock=clock)
    v.reserve_order("entry-1")
    v.reserve_order("entry-2")
    assert v.order_counts() == (2, 2)  # a burst decided together sees every earlier decision
    v.order_sent("entry-1")
    v.order_sent("stop-1")
    assert v.order_counts() == (3, 3)
    v.order_sent("entry-1")  # a retry of the same order is another order on the venue's counters
    assert v.order_counts() == (4, 4)


def test_reservations_never_sent_expire_with_the_minute():
    clock = Clock()
    v = VenueLimits(clock=clock)
    v.reserve_order("blocked-later")
    clock.t += 61
    assert v.order_counts() == (0, 0)
    v.order_sent("blocked-later")  # long forgotten: counted like any send
    assert v.order_counts() == (1, 1)


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1])
def test_entry_order_share_must_be_strictly_between_0_and_1(share, monkeypatch):
    monkeypatch.setenv("ROUTER_ENTRY_ORDER_SHARE", str(share))
    with pytest.raises(ConfigError, match="ROUTER_ENTRY_ORDER_SHARE: Input should be"):
        load(RouterSettings)
    monkeypatch.setenv("ROUTER_ENTRY_ORDER_SHARE", "0.3")
    assert load(RouterSettings).entry_order_share == 0.3
