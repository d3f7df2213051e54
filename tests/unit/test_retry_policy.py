import random

import pytest

from libs.common.retry import RetryPolicy


def test_exponential_backoff_is_capped_without_jitter():
    p = RetryPolicy(max_attempts=10, max_elapsed_sec=1000, base_delay_sec=0.5, max_delay_sec=3, jitter=0)
    assert [p.delay(t) for t in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_stays_within_bounds():
    p = RetryPolicy(base_delay_sec=1.0, max_delay_sec=1.0, jitter=0.2)
    rng = random.Random(7)
    delays = [p.delay(1, rng) for _ in range(1000)]
    assert min(delays) >= 0.8 and max(delays) <= 1.2
    assert len(set(delays)) > 100  # actually random


def test_attempt_cap():
    p = RetryPolicy(max_attempts=3, max_elapsed_sec=1000, jitter=0)
    assert p.next_delay(1, 0) is not None
    assert p.next_delay(2, 0) is not None
    assert p.next_delay(3, 0) is None


@pytest.mark.parametrize("elapsed,expect_none", [(0.0, False), (9.0, False), (9.9, True), (50, True)])
def test_elapsed_cap_includes_the_coming_sleep(elapsed, expect_none):
    p = RetryPolicy(max_attempts=100, max_elapsed_sec=10, base_delay_sec=0.5, max_delay_sec=0.5, jitter=0)
    assert (p.next_delay(1, elapsed) is None) is expect_none
