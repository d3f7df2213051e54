"""Venue credentials, as the real-exchange deployment passes them (docker secrets files), are used and
never leave the processes: not in logs (even when the venue rejects them), not in /status, not in
/metrics."""

from __future__ import annotations

import uuid

import httpx
import pytest

from libs.common.state_machine import OrderState
from tests.chaos.harness import ChaosStack, running, send_signal, wait_entry
from tools.stack import SERVICES

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


async def test_exchange_credentials_from_files_never_leave_the_process(tmp_path):
    key, secret = f"key{uuid.uuid4().hex}", f"secret{uuid.uuid4().hex}"
    (tmp_path / "exchange_api_key").write_text(key + "\n")
    (tmp_path / "exchange_api_secret").write_text(secret + "\n")
    c = ChaosStack(
        EXCHANGE_API_KEY_FILE=str(tmp_path / "exchange_api_key"),
        EXCHANGE_API_SECRET_FILE=str(tmp_path / "exchange_api_secret"),
        SIM_API_KEY=key,  # the venue knows only these
        SIM_API_SECRET=secret,
        LOG_LEVEL="DEBUG",
    )
    async with running(c):
        # the credentials work: an order is signed with the secret from the file and filled
        await send_signal(c, "signed")
        await wait_entry(c, "signed")
        # the venue rejects them: the error is logged and journaled, the credentials are not
        c.sim.add_fault(
            kind="binance_error", method="POST", path="/fapi/v1/order", code=-2015, msg="Invalid API-key."
        )
        await send_signal(c, "rejected")
        await wait_entry(c, "rejected", OrderState.REJECTED)
        async with httpx.AsyncClient(timeout=5) as client:
            exposed = [
                (await client.get(c.url(spec.name, path))).text
                for spec in SERVICES
                for path in ("/status", "/metrics", "/healthz", "/readyz")
            ]
    logs = {spec.name: (c.dir / "logs" / f"{spec.name}.log").read_text() for spec in SERVICES}
    assert "auth_rejected" in logs["router"] and "ccxt" in logs["router"]  # debug request logs too
    for text in [*exposed, *logs.values()]:
        assert key not in text and secret not in text
