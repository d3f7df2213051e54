"""Simulator settings (env prefix SIM_)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PRICES = {"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0, "SOLUSDT": 150.0}


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIM_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Bind address")
    port: int = Field(8090, ge=0, le=65535, description="HTTP port")
    # 0 by default: stacks started side by side (tests, soak) must not collide on a fixed port
    ws_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="User data stream WebSocket port; 0 = any free port (see GET /_sim/stream)",
    )
    listen_key_validity_sec: float = Field(
        3600.0, gt=0, description="A listenKey expires this long after its last POST / PUT (Binance: 60 min)"
    )
    api_key: str = Field("sim-key", description="Accepted X-MBX-APIKEY")
    api_secret: str = Field("sim-secret", description="HMAC secret for signatures")
    symbols: str = Field(
        "BTCUSDT,ETHUSDT,SOLUSDT",
        description="Comma list of USDT perpetuals, or an integer N for N synthetic ones on top",
    )
    start_balance: float = Field(10_000.0, gt=0, description="USDT wallet balance")
    tick_ms: int = Field(
        500, ge=0, description="Random-walk step period; 0 = price moves only via /_sim/price"
    )
    seed: int | None = Field(None, description="Random-walk seed")
    default_leverage: int = Field(20, ge=1, le=125, description="Leverage before any POST /leverage")
    max_leverage: int = Field(125, ge=1, le=125, description="Highest leverage accepted")
    recv_window_ms: int = Field(
        5_000, ge=1, le=60_000, description="recvWindow when a request sends none (Binance: 5000)"
    )
    half_spread_bps: float = Field(
        2.0, ge=0, le=500, description="Taker fills at mark +/- this (the book), never at the mark"
    )
    query_lag_ms: int = Field(
        0, ge=0, le=60_000, description="Accepted orders stay invisible to queries for this long (-2013)"
    )
    request_log_size: int = Field(10_000, ge=10, description="Requests kept for /_sim/requests")
    rate_limits: bool = Field(
        True,
        description="Enforce Binance's request-weight and order-count limits (429, then 418 bans); "
        "off only for benchmarks that isolate other costs (counters and headers stay)",
    )
    weight_limit_1m: int = Field(2400, ge=1, description="Request weight per IP per rolling minute")
    orders_limit_10s: int = Field(300, ge=1, description="Order placements per 10 s (account-wide)")
    orders_limit_1m: int = Field(1200, ge=1, description="Order placements per minute (account-wide)")
    ban_base_sec: float = Field(
        120.0, gt=0, description="First 418 IP ban; doubles per repeat offence, capped at 3 days"
    )

    state_file: str | None = Field(
        None,
        description="Keep the venue's state (positions, orders, algo orders, balances, ids) in this file: "
        "loaded at start, written atomically when it changes and at shutdown; unset = a restart forgets "
        "everything",
    )
    state_save_sec: float = Field(
        1.0, gt=0, le=60, description="With SIM_STATE_FILE: write the state this often when it changed"
    )

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("SIM_SYMBOLS must not be empty")
        if not v.isdigit():
            for s in v.split(","):
                s = s.strip()
                if not (s.endswith("USDT") and s[:-4].isalnum() and len(s) > 4):
                    raise ValueError(f"SIM_SYMBOLS entry {s!r} is not a USDT perpetual like BTCUSDT")
        return v

    def symbol_list(self) -> list[str]:
        if self.symbols.isdigit():
            n = int(self.symbols)
            return [*DEFAULT_PRICES, *(f"S{i:03d}USDT" for i in range(1, n + 1))]
        return [s.strip() for s in self.symbols.split(",")]
