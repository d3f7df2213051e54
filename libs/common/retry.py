"""Bounded retry budget: attempts + elapsed cap, exponential backoff with jitter. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    max_elapsed_sec: float = 20.0
    base_delay_sec: float = 0.25
    max_delay_sec: float = 4.0
    jitter: float = 0.2  # fraction of the delay randomised, symmetric

    def delay(self, tries: int, rng: random.Random | None = None) -> float:
        """Backoff before attempt ``tries + 1``: base * 2^(tries-1), capped, +/- jitter."""
        raw = min(self.base_delay_sec * (2 ** max(tries - 1, 0)), self.max_delay_sec)
        if self.jitter and raw > 0:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            raw = raw * (1 + r)
        return max(raw, 0.0)

    def next_delay(self, tries: int, elapsed_sec: float, rng: random.Random | None = None) -> float | None:
        """Delay before the next attempt, or None when the budget is spent.

        The elapsed cap includes the coming sleep: we never start an attempt
        after ``max_elapsed_sec``.
        """
        if tries >= self.max_attempts:
            return None
        d = self.delay(tries, rng)
        if elapsed_sec + d > self.max_elapsed_sec:
            return None
        return d
