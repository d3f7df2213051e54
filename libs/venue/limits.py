"""What the venue tells us about its request limits, and until when we must not call it. Pure.

Binance USD-M answers every request with the IP's used weight (``X-MBX-USED-WEIGHT-1M``) and order
counts (``X-MBX-ORDER-COUNT-10S`` / ``-1M``). Over the limit it answers HTTP 429 (-1003) with
``Retry-After``; a client that keeps sending is banned: HTTP 418 (-1003 "Way too many requests; IP(...)
banned until <epoch ms>"), and every request during a ban makes it longer. So a ban or a 429 is not an
error of one request but a pause of every call made with this key, and that is what this object holds.

The venue's word is read defensively: ``Retry-After`` first, else the body's "banned until", else a
conservative default; a pause longer than ``max_pause_sec`` is cut to it (and flagged ``capped``), so a
garbled or absurd answer can never stop us for good. Times are unix seconds (``clock``, injectable):
a ban is shared with other processes as an absolute time.

Orders have a budget of their own, per account: ``OrderLimits`` (exchangeInfo's ``rateLimits`` ORDERS,
Binance's defaults when unknown), and ``VenueLimits.order_counts`` is our estimate of how much of it is
used: the venue's last count plus every order this process sent since, so it never lags our own sends.
"""

from __future__ import annotations

import bisect
import email.utils
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

PauseKind = Literal["ban", "rate_limit"]
PauseSource = Literal["response", "bus"]

# defaults of a client's limits (and of the EXCHANGE_* settings that configure them)
MAX_PAUSE_SEC = 300.0
BAN_DEFAULT_SEC = 60.0
RATE_LIMIT_DEFAULT_SEC = 1.0

# a second sighting of a pause we already hold (concurrent calls answered alike) is not news
SAME_PAUSE_SLACK_SEC = 1.0

# Binance USD-M's default order limits per account (exchangeInfo rateLimits ORDERS), when the venue says none
ORDERS_PER_10S = 300
ORDERS_PER_1M = 1200
ORDER_WINDOWS_SEC = (10.0, 60.0)
_INTERVAL_SEC = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}

_BANNED_UNTIL = re.compile(r"banned until\s+(\d{9,})", re.I)
_BAN_TEXT = ("banned until", "way too many requests")


@dataclass(frozen=True, slots=True)
class VenuePause:
    """The venue refused us for a while: no call with this key until ``until``."""

    kind: PauseKind  # ban: HTTP 418; rate_limit: HTTP 429
    until: float  # unix seconds: calls resume then
    retry_after_sec: float | None = None  # the Retry-After header, when there was a usable one
    venue_until: float | None = None  # the venue's own "banned until" (unix seconds), when it said
    capped: bool = False  # the venue asked for longer than max_pause_sec
    source: PauseSource = "response"  # our own response, or another service's (the bus)
    message: str = ""

    @property
    def reason(self) -> str:
        """The error policy's reason for a call this pause refused."""
        return "ip_banned" if self.kind == "ban" else "rate_limited"


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Case-insensitive header lookup (ccxt hands over a plain dict in the server's spelling)."""
    if not headers:
        return None
    wanted = name.lower()
    for k, v in headers.items():
        if k.lower() == wanted:
            return v
    return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After value (delta-seconds or an HTTP date); None if absent or unusable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return seconds if 0 < seconds < float("inf") else None


def parse_banned_until(body: str | None) -> float | None:
    """Unix seconds from a body's "banned until <epoch ms>"; None if absent or unparsable."""
    m = _BANNED_UNTIL.search(body or "")
    if m is None:
        return None
    value = int(m.group(1))
    return value / 1000 if value >= 10**11 else float(value)  # milliseconds, or seconds from a sloppy venue


def is_ban_text(text: str | None) -> bool:
    lowered = (text or "").lower()
    return any(f in lowered for f in _BAN_TEXT)


@dataclass(frozen=True, slots=True)
class OrderLimits:
    """Orders the account may place per 10 s and per minute (the venue refuses more: 429 -1015)."""

    per_10s: int = ORDERS_PER_10S
    per_1m: int = ORDERS_PER_1M
    source: str = "default"  # "exchangeInfo" once read from the venue

    def limit(self, window_sec: float) -> int:
        return self.per_10s if window_sec == 10.0 else self.per_1m


def order_limits_from(rate_limits: Any) -> OrderLimits:
    """The ORDERS entries of exchangeInfo's ``rateLimits`` (10 s and 1 min); Binance's defaults for a
    window the venue does not state (or states unusably)."""
    found: dict[float, int] = {}
    for r in rate_limits if isinstance(rate_limits, list) else []:
        if not isinstance(r, dict) or r.get("rateLimitType") != "ORDERS":
            continue
        try:
            window = float(_INTERVAL_SEC[str(r.get("interval"))] * int(r.get("intervalNum") or 1))
            limit = int(r["limit"])
        except (KeyError, TypeError, ValueError):
            continue
        if window in ORDER_WINDOWS_SEC and limit > 0:
            found[window] = limit
    if not found:
        return OrderLimits()
    return OrderLimits(found.get(10.0, ORDERS_PER_10S), found.get(60.0, ORDERS_PER_1M), "exchangeInfo")


def _count(headers: Mapping[str, str] | None, name: str) -> int | None:
    value = header(headers, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class VenueLimits:
    """Last reported usage plus the pauses in force, for one API key (one process, or several via the bus)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_pause_sec: float = MAX_PAUSE_SEC,
        ban_default_sec: float = BAN_DEFAULT_SEC,
        rate_limit_default_sec: float = RATE_LIMIT_DEFAULT_SEC,
    ) -> None:
        self.clock = clock
        self.max_pause_sec = max_pause_sec
        self.ban_default_sec = ban_default_sec
        self.rate_limit_default_sec = rate_limit_default_sec
        self.used_weight_1m: int | None = None
        self.order_count_10s: int | None = None
        self.order_count_1m: int | None = None
        self.ban: VenuePause | None = None
        self.rate_limit: VenuePause | None = None
        self.order_limits = OrderLimits()  # the venue's own (exchangeInfo) once a service reads them
        self._counts_at: float | None = None  # when the request that brought the last order counts went out
        # our own placements over the last minute, in time order (counted by bisection: at hundreds of
        # orders a minute a scan per entry was a tenth of the router's CPU)
        self._orders_sent: list[float] = []
        self._reserved: dict[str, float] = {}  # client id -> when it was counted ahead of its send
        # told of every new or longer pause (metrics, journal); must not block
        self.listeners: list[Callable[[VenuePause], None]] = []

    # ------------------------------------------------------------------ learning

    def record(
        self,
        status: int | None,
        headers: Mapping[str, str] | None,
        body: str | None,
        sent_at: float | None = None,
    ) -> VenuePause | None:
        """One HTTP response (to a request sent at ``sent_at``, default now). Returns the pause it starts
        or lengthens, else None."""
        for attr, name in (
            ("used_weight_1m", "X-MBX-USED-WEIGHT-1M"),
            ("order_count_10s", "X-MBX-ORDER-COUNT-10S"),
            ("order_count_1m", "X-MBX-ORDER-COUNT-1M"),
        ):
            value = _count(headers, name)
            if value is not None:
                setattr(self, attr, value)
                if attr != "used_weight_1m":
                    self._counts_at = sent_at if sent_at is not None else self.clock()
        if status not in (418, 429):
            return None
        now = self.clock()
        retry_after = parse_retry_after(header(headers, "Retry-After"), now)
        message = (body or "").strip()[:300]
        if status == 418 or is_ban_text(body):
            venue_until = parse_banned_until(body)
            if retry_after is not None:
                until = now + retry_after
            elif venue_until is not None and venue_until > now:
                until = venue_until
            else:  # no usable end (absent, garbled or already past): a conservative default
                until = now + self.ban_default_sec
            pause = VenuePause("ban", until, retry_after, venue_until, message=message)
        else:
            until = now + (retry_after if retry_after is not None else self.rate_limit_default_sec)
            pause = VenuePause("rate_limit", until, retry_after, message=message)
        return self._apply(self._capped(pause, now))

    def learn(
        self, until: float, *, retry_after_sec: float | None = None, message: str = ""
    ) -> VenuePause | None:
        """A ban another service learned from its own response (the bus): pause too, within our own cap."""
        now = self.clock()
        if until <= now:
            return None
        pause = VenuePause("ban", until, retry_after_sec, until, source="bus", message=message[:300])
        return self._apply(self._capped(pause, now))

    def _capped(self, pause: VenuePause, now: float) -> VenuePause:
        if pause.until - now <= self.max_pause_sec:
            return pause
        return replace(pause, until=now + self.max_pause_sec, capped=True)

    def _apply(self, pause: VenuePause) -> VenuePause | None:
        now = self.clock()
        held = self.ban if pause.kind == "ban" else self.rate_limit
        live_until = held.until if held is not None and held.until > now else None
        if live_until is not None and pause.until <= live_until:
            return None
        if pause.kind == "ban":
            self.ban = pause
        else:
            self.rate_limit = pause
        if live_until is not None and pause.until <= live_until + SAME_PAUSE_SLACK_SEC:
            return None  # the same pause seen again (a concurrent call): a little longer, not news
        for listener in self.listeners:
            listener(pause)
        return pause

    def order_sent(self, key: str | None = None) -> None:
        """An order placement goes out now (``key``: its client id, which ends its reservation)."""
        now = self.clock()
        if key is not None:
            self._reserved.pop(key, None)
        sent = self._orders_sent
        sent.append(max(now, sent[-1]) if sent else now)  # kept in order even if the clock steps back
        self._forget(now)

    def reserve_order(self, key: str) -> None:
        """An order allowed to go out shortly: counted from now until it is sent, so a burst decided
        concurrently cannot all pass on one count."""
        now = self.clock()
        self._reserved[key] = now
        self._forget(now)

    def _forget(self, now: float) -> None:
        horizon = now - ORDER_WINDOWS_SEC[-1]
        del self._orders_sent[: bisect.bisect_right(self._orders_sent, horizon)]
        for key in [k for k, t in self._reserved.items() if t <= horizon]:  # never sent: long moot
            del self._reserved[key]

    # ------------------------------------------------------------------ reading

    def order_counts(self) -> tuple[int, int]:
        """The account's order counts (10 s, 1 min) as far as we can tell, erring high: the venue's last
        count plus every order this process sent since the request that carried it went out (a request
        in flight then may be counted twice, never missed) plus the reserved ones not sent yet; once that
        count is older than its window, only our own orders in the window (and the reserved ones)."""
        now = self.clock()
        self._forget(now)
        pending = len(self._reserved)
        out = []
        for window, seen in zip(ORDER_WINDOWS_SEC, (self.order_count_10s, self.order_count_1m), strict=True):
            sent = self._orders_sent
            own = len(sent) - bisect.bisect_right(sent, now - window) + pending
            at = self._counts_at
            if seen is None or at is None or now - at >= window:
                out.append(own)
            else:
                out.append(max(own, seen + len(sent) - bisect.bisect_left(sent, at) + pending))
        return out[0], out[1]

    def current(self) -> VenuePause | None:
        """The pause in force now (the later-ending one when both are), or None."""
        now = self.clock()
        live = [p for p in (self.ban, self.rate_limit) if p is not None and p.until > now]
        return max(live, key=lambda p: p.until, default=None)

    def remaining(self) -> float:
        """Seconds until venue calls may go out again (0 when they may now)."""
        pause = self.current()
        return max(pause.until - self.clock(), 0.0) if pause else 0.0

    def status(self) -> dict:
        pause = self.current()
        return {
            "used_weight_1m": self.used_weight_1m,
            "order_count_10s": self.order_count_10s,
            "order_count_1m": self.order_count_1m,
            "paused": pause.reason if pause else None,
            "paused_for_sec": round(self.remaining(), 3),
        }
