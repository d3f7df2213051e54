"""Run the simulator in a background thread for tests and benchmarks, with a typed control client."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from services.simulator.app import create_app
from services.simulator.config import SimulatorSettings
from services.simulator.engine import Engine


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process owns its signals
        yield


class SimControl:
    """Typed client for a running simulator's control API (/_sim) over HTTP."""

    def __init__(self, base_url: str = "") -> None:
        self.base_url = base_url
        self._http: httpx.Client | None = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, timeout=10.0)
        r = self._http.request(method, path, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text}")
        return r.json()

    def add_fault(self, **rule: Any) -> int:
        return self._call("POST", "/_sim/faults", json=rule)["id"]

    def faults(self) -> list[dict]:
        return self._call("GET", "/_sim/faults")

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sim/faults")

    def remove_fault(self, rule_id: int) -> None:
        """Delete one rule (the others stay)."""
        self._call("DELETE", f"/_sim/faults/{rule_id}")

    def set_price(self, symbol: str, price: float) -> dict:
        return self._call("POST", "/_sim/price", json={"symbol": symbol, "price": price})

    def price(self, symbol: str) -> float:
        return float(self.state()["prices"][symbol])

    def set_position(self, symbol: str, amount: float, entry_price: float | None = None) -> dict:
        return self._call(
            "POST", "/_sim/positions", json={"symbol": symbol, "amount": amount, "entryPrice": entry_price}
        )

    def position(self, symbol: str) -> float:
        for p in self.state()["positions"]:
            if p["symbol"] == symbol:
                return float(p["positionAmt"])
        return 0.0

    def leverage(self, symbol: str) -> int:
        st = self.state()
        return int(st["leverage"].get(symbol, st["default_leverage"]))

    def cancel_behind_back(self, symbol: str, client_order_id: str) -> dict:
        return self._call(
            "POST", "/_sim/orders/cancel", json={"symbol": symbol, "clientOrderId": client_order_id}
        )

    def fill(self, symbol: str, client_order_id: str) -> dict:
        return self._call(
            "POST", "/_sim/orders/fill", json={"symbol": symbol, "clientOrderId": client_order_id}
        )

    def state(self, open_only: bool = False) -> dict:
        """GET /_sim/state; ``open_only``: resting orders only (every order the venue took otherwise)."""
        return self._call("GET", "/_sim/state" + ("?open_only=true" if open_only else ""))

    def status(self) -> dict:
        """GET /status: the health view (persistence, counts)."""
        return self._call("GET", "/status")

    def stream_state(self) -> dict:
        """GET /_sim/stream: the listenKey, its expiry, the open user-data-stream connections."""
        return self._call("GET", "/_sim/stream")

    @property
    def ws_url(self) -> str:
        """The user data stream's base URL, as ccxt's ``urls['api']['ws']['linear']`` wants it."""
        host = httpx.URL(self.base_url).host
        return f"ws://{host}:{self.stream_state()['port']}/ws"

    def requests_log(self) -> list[dict]:
        return self._call("GET", "/_sim/requests")

    def clear_requests(self) -> None:
        self._call("DELETE", "/_sim/requests")

    def limits(self) -> dict:
        """Configured rate limits and the live counters per client IP (GET /_sim/limits)."""
        return self._call("GET", "/_sim/limits")

    def set_limits(
        self,
        *,
        weight_limit_1m: int | None = None,
        orders_limit_10s: int | None = None,
        orders_limit_1m: int | None = None,
        ban_base_sec: float | None = None,
        rate_limits: bool | None = None,
    ) -> dict:
        """Change rate limits at runtime (omitted ones stay); reset() restores the settings."""
        body = {
            "weight_limit_1m": weight_limit_1m,
            "orders_limit_10s": orders_limit_10s,
            "orders_limit_1m": orders_limit_1m,
            "ban_base_sec": ban_base_sec,
            "rate_limits": rate_limits,
        }
        return self._call("POST", "/_sim/limits", json={k: v for k, v in body.items() if v is not None})

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")


class SimulatorThread(SimControl):
    """``with SimulatorThread() as sim: ...`` -> a live simulator on a free loopback port."""

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        settings.setdefault("tick_ms", 0)
        settings.setdefault("port", 0)
        settings.setdefault("start_balance", 1_000_000.0)
        self.settings = SimulatorSettings(**settings)
        self.app = create_app(self.settings)
        self.engine: Engine = self.app.state.sim.engine
        self._server = _Server(
            uvicorn.Config(
                self.app,
                host=self.settings.host,
                port=self.settings.port,
                log_level="warning",
                access_log=False,
                lifespan="on",
            )
        )
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def start(self, within_sec: float = 10.0) -> SimulatorThread:
        self._thread.start()
        deadline = time.monotonic() + within_sec
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("simulator did not start")
            time.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://{self.settings.host}:{port}"
        self._http = httpx.Client(base_url=self.base_url, timeout=10.0)
        self._http.get("/fapi/v1/ping").raise_for_status()
        return self

    def stop(self) -> None:
        self.close()
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
