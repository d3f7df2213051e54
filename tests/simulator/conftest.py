"""Fixtures for talking to the simulator through the real ccxt client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from libs.venue.client import make_exchange


@pytest_asyncio.fixture
async def ex(sim: Any) -> AsyncIterator[Any]:
    client = make_exchange(api_url=sim.base_url, api_key="sim-key", api_secret="sim-secret", timeout_ms=1000)
    await client.load_markets()
    yield client
    await client.close()


@pytest.fixture
def sim(sim: Any) -> Iterator[Any]:
    """The session simulator at the real venue's weight limit (integration tests scale it with time)."""
    sim.set_limits(weight_limit_1m=2400)
    yield sim
