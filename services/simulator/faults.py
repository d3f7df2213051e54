"""Fault-injection rules. Pure: matching and counting; the app performs the effect."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "latency",  # sleep delay_ms, then handle normally
    "timeout_after_accept",  # handle (the order IS stored), then hang delay_ms: the client times out
    "unknown_after_accept",  # handle, then answer 503 -1007 "execution status unknown"
    "http_error",  # answer `status` before handling (429 / 418 / 5xx)
    "binance_error",  # answer 400 {code, msg} before handling
    "fill_on_cancel",  # on cancel: the order fills first, then the cancel answers -2011
    "fill_after_cancel_ack",  # on cancel: answer CANCELED, but the order is recorded as filled
    # an accepted order answers -2013 to lookups and is missing from openOrders for delay_ms
    # (the venue does this right after timeouts and -1007)
    "query_lag",
    # -1008 "server busy" before handling; like the venue, reduce-only and close-position orders pass
    "overload",
    # when a position goes flat, its close-position orders keep resting instead of expiring
    "keep_protection",
    # user data stream (userstream.py): cut the connection; stop sending without closing (for delay_ms,
    # 0 = for good); hold each event delay_ms; expire the listenKey now
    "stream_drop",
    "stream_stall",
    "stream_delay",
    "listen_key_expire",
]

PRE_KINDS = ("latency", "http_error", "binance_error", "overload")
POST_KINDS = ("timeout_after_accept", "unknown_after_accept")
CANCEL_KINDS = ("fill_on_cancel", "fill_after_cancel_ack")
ACCEPT_KINDS = ("query_lag",)  # applied to the order a create just placed
POSITION_KINDS = ("keep_protection",)  # matched against the symbol whose position went flat


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    method: Literal["GET", "POST", "DELETE", "PUT"] | None = Field(None, description="None = any method")
    path: str | None = Field(None, description="exact path, e.g. /fapi/v1/order; None = any Binance path")
    symbol: str | None = Field(None, description="only requests for this exchange symbol (BTCUSDT)")
    count: int | None = Field(1, ge=1, description="requests to affect; null = until cleared")
    delay_ms: int = Field(0, ge=0, le=120_000)
    status: int | None = Field(None, ge=400, le=599)
    code: int | None = None
    msg: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> FaultRule:
        if self.kind == "http_error" and self.status is None:
            raise ValueError("http_error needs status (e.g. 429, 418, 500, 502, 503, 504)")
        if self.kind == "binance_error" and self.code is None:
            raise ValueError("binance_error needs code (e.g. -2011, -4116, -2022, -2019)")
        if (
            self.kind in ("latency", "timeout_after_accept", "query_lag", "stream_delay")
            and self.delay_ms <= 0
        ):
            raise ValueError(f"{self.kind} needs delay_ms > 0")
        return self


class ActiveRule:
    _ids = itertools.count(1)

    def __init__(self, rule: FaultRule) -> None:
        self.id = next(self._ids)
        self.rule = rule
        self.remaining = rule.count
        self.hits = 0

    def matches(self, method: str, path: str, symbol: str | None) -> bool:
        r = self.rule
        if self.remaining is not None and self.remaining <= 0:
            return False
        if r.method is not None and r.method != method:
            return False
        if r.path is not None and r.path != path:
            return False
        return not (r.symbol is not None and r.symbol != symbol)

    def consume(self) -> None:
        self.hits += 1
        if self.remaining is not None:
            self.remaining -= 1

    def view(self) -> dict:
        return {"id": self.id, **self.rule.model_dump(), "remaining": self.remaining, "hits": self.hits}


class FaultBook:
    def __init__(self) -> None:
        self.rules: list[ActiveRule] = []

    def add(self, rule: FaultRule) -> ActiveRule:
        r = ActiveRule(rule)
        self.rules.append(r)
        return r

    def clear(self) -> None:
        self.rules.clear()

    def remove(self, rule_id: int) -> bool:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.id != rule_id]
        return len(self.rules) != before

    def take(self, kinds: tuple[str, ...], method: str, path: str, symbol: str | None) -> list[FaultRule]:
        """Matching rules of these kinds, consumed (counted down) in the order they were added."""
        out = []
        for r in self.rules:
            if r.rule.kind in kinds and r.matches(method, path, symbol):
                r.consume()
                out.append(r.rule)
        return out
