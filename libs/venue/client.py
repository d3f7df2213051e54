"""The one place that builds a ccxt exchange client (the venue package's transport).

Switching from the simulator to a real venue is configuration only: leave
``EXCHANGE_API_URL`` empty to talk to Binance itself, or point it at anything
that speaks the Binance USD-M wire format (our simulator, a recording proxy).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro

from libs.common.config import ExchangeSettings
from libs.common.logs import RateLimitedLog, log_event, redact
from libs.venue.limits import VenueLimits, VenuePause

log = logging.getLogger("erl.exchange")

# Unix time by which a venue call made from the current task must have gone out. Set by whoever owns a
# retry budget (the router's ``Budget``); unset, a call waits out any pause (up to the pause cap).
venue_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("venue_deadline", default=None)
# when the request being answered went out (set by ``fetch`` for its ``on_rest_response``, same task): the
# order counts it carries cover the account's orders up to then at least
_request_sent_at: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "request_sent_at", default=None
)

# Every fapi endpoint family ccxt's binanceusdm may route to.
FAPI_URL_KEYS: dict[str, str] = {
    "fapiPublic": "/fapi/v1",
    "fapiPublicV2": "/fapi/v2",
    "fapiPublicV3": "/fapi/v3",
    "fapiPrivate": "/fapi/v1",
    "fapiPrivateV2": "/fapi/v2",
    "fapiPrivateV3": "/fapi/v3",
    "fapiData": "/futures/data",
}


class VenuePaused(ccxt.RateLimitExceeded):
    """A venue call that was not sent: a ban or a Retry-After outlasts the caller's retry budget."""

    def __init__(self, pause: VenuePause) -> None:
        until_ms = int(pause.until * 1000)
        what = f"IP banned until {until_ms}" if pause.kind == "ban" else f"rate limited until {until_ms}"
        super().__init__(f"binanceusdm request not sent: {what}")
        self.pause = pause


class VenueBoundary:
    """Our venue boundary on a ccxt binanceusdm client (REST, or ccxt.pro's with the same REST methods):
    request limits for every host, the linear error table for any host.

    Limits: every HTTP response goes through ``on_rest_response`` into ``self.venue_limits`` (used weight,
    order counts, a 418 ban or a 429 Retry-After) before ccxt raises anything, and ``fetch`` holds every
    call while a pause is in force: the venue asked us to stop, so nothing goes out, whoever calls.

    Error table: ccxt picks its per-market error table by URL prefix and only knows Binance's own fapi
    hosts. Against any other host -2019 / -2021 / -2022 / -4116 / -4164 would surface as a bare
    ExchangeError and our error policy would see a different exception tree than in production. We map
    the configured base URL (``linearErrorBaseUrl``, custom hosts only) to the linear table deliberately
    so both paths raise identical classes.
    """

    # not ``limits``: ccxt's own attribute of that name holds market limits
    venue_limits: VenueLimits
    options: dict[str, Any]
    exceptions: dict[str, Any]
    urls: dict[str, Any]

    def __init__(self, config: dict[str, Any] | None = None, venue_limits: VenueLimits | None = None) -> None:
        self.venue_limits = venue_limits or VenueLimits()
        super().__init__(config or {})  # type: ignore[call-arg]  # the ccxt class after us in the MRO

    def get_exceptions_by_url(self, url: str | None, exactOrBroad: str) -> dict:
        linear_base = self.options.get("linearErrorBaseUrl")
        if url is not None and linear_base and url.startswith(linear_base):
            linear = self.exceptions.get("linear") or {}
            return linear.get(exactOrBroad) or {}
        return super().get_exceptions_by_url(url, exactOrBroad)  # type: ignore[misc]

    def on_rest_response(
        self,
        code: int,
        reason: str,
        url: str,
        method: str,
        response_headers: dict,
        response_body: str,
        request_headers: dict,
        request_body: Any,
    ) -> Any:
        pause = self.venue_limits.record(code, response_headers, response_body, _request_sent_at.get())
        if pause is not None:
            log_event(
                log,
                "venue.ban" if pause.kind == "ban" else "venue.rate_limited",
                logging.ERROR if pause.kind == "ban" or pause.capped else logging.WARNING,
                status=code,
                method=method,
                path=url.split("?", 1)[0],
                pause_sec=round(pause.until - self.venue_limits.clock(), 3),
                retry_after_sec=pause.retry_after_sec,
                venue_until_ms=int(pause.venue_until * 1000) if pause.venue_until else None,
                capped=pause.capped,
                body=pause.message,
            )
        return super().on_rest_response(  # type: ignore[misc]
            code, reason, url, method, response_headers, response_body, request_headers, request_body
        )

    async def fetch(self, url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        await wait_out_pause(self.venue_limits)
        _request_sent_at.set(self.venue_limits.clock())
        return await super().fetch(url, method, headers, body)  # type: ignore[misc]


class BinanceUSDMClient(VenueBoundary, ccxt_async.binanceusdm):
    """The REST client every venue-facing service uses."""


class BinanceUSDMStreamClient(VenueBoundary, ccxt.pro.binanceusdm):
    """ccxt.pro's binanceusdm (the user data stream; the same REST methods) behind the same boundary.

    ``connected_cb``: told when a WebSocket connection opens (ccxt's own hook, ``on_connected``).
    """

    connected_cb: Callable[[str], None] | None = None

    def on_connected(self, client: Any, message: Any = None) -> None:
        super().on_connected(client, message)
        if self.connected_cb is not None:
            self.connected_cb(client.url)


_waiting_log = RateLimitedLog(log, 10.0)


async def wait_out_pause(limits: VenueLimits) -> None:
    """Hold a venue call while a ban or a Retry-After is in force (re-checked: a pause may grow meanwhile).

    Under a retry budget (``venue_deadline`` set) a pause that ends after it fails the call at once,
    unsent (``VenuePaused``): the budget's owner ends the intent as it would any exhausted budget, and
    nothing goes out late.
    """
    while (pause := limits.current()) is not None:
        deadline = venue_deadline.get()
        if deadline is not None and pause.until > deadline:
            raise VenuePaused(pause)
        _waiting_log(
            "venue.paused_call", logging.WARNING, reason=pause.reason, wait_sec=round(limits.remaining(), 3)
        )
        await asyncio.sleep(max(pause.until - limits.clock(), 0.001))


def limits_from_settings(settings: ExchangeSettings) -> VenueLimits:
    """The limits state of one client, configured from the exchange settings."""
    return VenueLimits(
        max_pause_sec=settings.max_pause_sec,
        ban_default_sec=settings.ban_default_pause_sec,
        rate_limit_default_sec=settings.rate_limit_default_pause_sec,
    )


def exchange_from_settings(settings: ExchangeSettings) -> BinanceUSDMClient:
    """The signed client a venue-facing service uses, built from its exchange settings."""
    return make_exchange(
        api_url=settings.api_url,
        api_key=settings.api_key.get_secret_value(),
        api_secret=settings.api_secret.get_secret_value(),
        timeout_ms=settings.timeout_ms,
        recv_window_ms=settings.recv_window_ms,
        venue_limits=limits_from_settings(settings),
    )


def stream_client_from_settings(
    settings: ExchangeSettings, venue_limits: VenueLimits | None = None
) -> BinanceUSDMStreamClient:
    """The user data stream's client: the same configuration, plus the stream's WebSocket base
    (``venue_limits``: share another client's, so a ban holds both)."""
    config, api_url = _config(
        api_url=settings.api_url,
        api_key=settings.api_key.get_secret_value(),
        api_secret=settings.api_secret.get_secret_value(),
        timeout_ms=settings.timeout_ms,
        recv_window_ms=settings.recv_window_ms,
    )
    ex = BinanceUSDMStreamClient(config, venue_limits or limits_from_settings(settings))
    # ccxt offers permessage-deflate by default and Binance (like the simulator) accepts it: every event
    # is then deflated by the venue and inflated here, for a few small events per order (py-spy had zlib
    # in both profiles). The extension is the client's to offer (RFC 7692): without it, plain frames.
    ex.options["ws"] = {**ex.options.get("ws", {}), "compress": 0}
    _point_at(ex, api_url)
    if api_url and settings.ws_url:
        # ccxt dials <base without /ws>/private/ws?listenKey=... (Binance's /private split)
        ex.urls["api"] = {**ex.urls["api"], "ws": {**ex.urls["api"]["ws"], "linear": settings.ws_url}}
    return ex


def make_exchange(
    *,
    api_url: str | None,
    api_key: str,
    api_secret: str,
    timeout_ms: int = 10_000,
    recv_window_ms: int = 5_000,
    extra_options: dict[str, Any] | None = None,
    venue_limits: VenueLimits | None = None,
) -> BinanceUSDMClient:
    """Build an async binanceusdm client; the caller must ``await ex.close()``.

    ``venue_limits`` (default: a fresh ``VenueLimits``) is exposed as ``ex.venue_limits``: its pauses hold every
    call of this client, and services read the used weight from it.
    """
    config, base = _config(
        api_url=api_url,
        api_key=api_key,
        api_secret=api_secret,
        timeout_ms=timeout_ms,
        recv_window_ms=recv_window_ms,
        extra_options=extra_options,
    )
    ex = BinanceUSDMClient(config, venue_limits)
    _point_at(ex, base)
    return ex


def _config(
    *,
    api_url: str | None,
    api_key: str,
    api_secret: str,
    timeout_ms: int,
    recv_window_ms: int,
    extra_options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """ccxt's config for our clients, and the custom REST base (None: Binance's own hosts)."""
    redact(api_key, api_secret)
    options: dict[str, Any] = {
        # load_markets then only calls GET /fapi/v1/exchangeInfo
        "fetchCurrencies": False,
        # the router owns retries; ccxt must never resend on its own
        "maxRetriesOnFailure": 0,
        "fetchOpenOrders": {"warnWithoutSymbol": False},
        "defaultType": "swap",
        # a custom venue answers with ms timestamps of its own clock; skip drift guessing
        "adjustForTimeDifference": False,
        # short on purpose: the venue voids a request it has not handled by timestamp + recvWindow,
        # and that is the only hard bound on how long an ambiguous create can stay undecided
        "recvWindow": recv_window_ms,
    }
    if extra_options:
        options.update(extra_options)
    base = api_url.rstrip("/") if api_url else None
    if base:
        options["linearErrorBaseUrl"] = base
    config: dict[str, Any] = {
        "apiKey": api_key,
        "secret": api_secret,
        "timeout": timeout_ms,
        "enableRateLimit": False,
        "options": options,
    }
    return config, base


def _point_at(ex: VenueBoundary, base: str | None) -> None:
    """Every fapi endpoint family at a custom REST base."""
    if base:
        api = dict(ex.urls["api"])
        for key, path in FAPI_URL_KEYS.items():
            api[key] = base + path
        ex.urls["api"] = api
