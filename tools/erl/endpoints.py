"""Where the stack is: the services' own settings (NATS_*, <SERVICE>_HTTP_PORT, EXCHANGE_API_URL) with
their defaults, short timeouts, and the admin token. Plain stdlib HTTP: the CLI needs no client library."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from libs.common.config import (
    EntrySettings,
    ExchangeSettings,
    NatsSettings,
    ReconcilerSettings,
    RiskSettings,
    RouterSettings,
    VenueStreamSettings,
    load,
)

HTTP_TIMEOUT_SEC = 2.0
BINANCE_FAPI = "https://fapi.binance.com"


class Unreachable(RuntimeError):
    """The bus, a service or the venue did not answer; the message says which and where."""


class HttpError(RuntimeError):
    def __init__(self, url: str, status: int, body: Any) -> None:
        super().__init__(f"{url}: HTTP {status}: {body}")
        self.url, self.status, self.body = url, status, body


def _url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class Endpoints:
    nats: NatsSettings
    services: dict[str, str]  # name -> base URL
    venue_url: str  # Binance USD-M compatible base (the simulator by default)
    simulated: bool

    @classmethod
    def from_env(cls) -> Endpoints:
        # a CLI fails fast: a dead bus is an answer, not something to wait out
        nats = load(NatsSettings)
        if "NATS_URL" not in os.environ and os.environ.get("NATS_PORT", "").isdigit():
            # the local run's port variables (make run honours them): the bus on this machine
            nats = nats.model_copy(update={"url": f"nats://127.0.0.1:{os.environ['NATS_PORT']}"})
        nats = nats.model_copy(
            update={"connect_timeout_sec": min(nats.connect_timeout_sec, 2.0), "publish_attempts": 2}
        )
        if not os.environ.get("NATS_USER"):
            # `make run`'s secured bus: connect as its operator user with the run's password
            password = _read(_run_dir() / "nats" / "ops.password")
            if password:
                nats = nats.model_copy(update={"user": "ops", "password": SecretStr(password)})
        ex = load(ExchangeSettings)
        services = {
            "router": _url(*_hp(load(RouterSettings))),
            "reconciler": _url(*_hp(load(ReconcilerSettings))),
            "risk": _url(*_hp(load(RiskSettings))),
            "entry": _url(*_hp(load(EntrySettings))),
            "venue_stream": _url(*_hp(load(VenueStreamSettings))),
        }
        venue = (ex.api_url or BINANCE_FAPI).rstrip("/")
        if "EXCHANGE_API_URL" not in os.environ and os.environ.get("SIM_PORT", "").isdigit():
            venue = f"http://127.0.0.1:{os.environ['SIM_PORT']}"  # the local run's simulator
        return cls(nats, services, venue, simulated=ex.api_url is not None)


def _hp(s: Any) -> tuple[str, int]:
    return s.http_host, s.http_port


def http(
    method: str,
    url: str,
    body: dict | None = None,
    token: str | None = None,
    timeout: float = HTTP_TIMEOUT_SEC,
) -> Any:
    """One JSON request; Unreachable when nothing answers, HttpError on a non-2xx answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            detail = json.loads(raw)
        except ValueError:
            detail = raw.decode(errors="replace")
        raise HttpError(
            url, e.code, detail.get("detail", detail) if isinstance(detail, dict) else detail
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"{url}: {reason}") from None
    return json.loads(raw) if raw else None


def admin_token() -> str | None:
    """RISK_ADMIN_TOKEN, else the local run's token file (ERL_RUN_DIR or ./.run, `admin-token`)."""
    if os.environ.get("RISK_ADMIN_TOKEN"):
        return os.environ["RISK_ADMIN_TOKEN"].strip()
    return _read(_run_dir() / "admin-token")


def _run_dir() -> Path:
    """The local run's folder (make run: ./.run, or ERL_RUN_DIR)."""
    return Path(os.environ.get("ERL_RUN_DIR", ".run"))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def venue_markets(venue_url: str) -> set[str]:
    """The symbols the venue lists (exchangeInfo, weight 1)."""
    info = http("GET", f"{venue_url}/fapi/v1/exchangeInfo", timeout=5.0)
    return {s["symbol"] for s in info.get("symbols", []) if s.get("status", "TRADING") == "TRADING"}
