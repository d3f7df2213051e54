"""The one place that builds a ccxt exchange client.

Switching from the simulator to a real venue is configuration only: leave
``EXCHANGE_API_URL`` empty to talk to Binance itself, or point it at anything
that speaks the Binance USD-M wire format (our simulator, a recording proxy).
"""

from __future__ import annotations

from typing import Any

import ccxt.async_support as ccxt_async

from libs.common.logs import redact

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


class BinanceUSDMAnyHost(ccxt_async.binanceusdm):
    """binanceusdm that applies the futures (linear) error table to a custom host too.

    ccxt picks its per-market error table by URL prefix and only knows Binance's own
    fapi hosts. Against any other host -2019 / -2021 / -2022 / -4116 / -4164 would
    surface as a bare ExchangeError and our error policy would see a different
    exception tree than in production. We map the configured base URL to the
    linear table deliberately so both paths raise identical classes.
    """

    def get_exceptions_by_url(self, url: str | None, exactOrBroad: str) -> dict:
        linear_base = self.options.get("linearErrorBaseUrl")
        if url is not None and linear_base and url.startswith(linear_base):
            return self.safe_dict(self.safe_dict(self.exceptions, "linear", {}), exactOrBroad, {})
        return super().get_exceptions_by_url(url, exactOrBroad)


def make_exchange(
    *,
    api_url: str | None,
    api_key: str,
    api_secret: str,
    timeout_ms: int = 10_000,
    extra_options: dict[str, Any] | None = None,
) -> ccxt_async.binanceusdm:
    """Build an async binanceusdm client; the caller must ``await ex.close()``."""
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
    }
    if extra_options:
        options.update(extra_options)
    config: dict[str, Any] = {
        "apiKey": api_key,
        "secret": api_secret,
        "timeout": timeout_ms,
        "enableRateLimit": False,
        "options": options,
    }
    if api_url:
        base = api_url.rstrip("/")
        options["linearErrorBaseUrl"] = base
        ex = BinanceUSDMAnyHost(config)
        api = dict(ex.urls["api"])
        for key, path in FAPI_URL_KEYS.items():
            api[key] = base + path
        ex.urls["api"] = api
        return ex
    return ccxt_async.binanceusdm(config)
