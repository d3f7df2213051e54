"""Binance USD-M REST rate limits: request weight per IP, order counts, 429s and 418 IP bans.

Pure: no I/O, the clock (seconds since the epoch) is injected. Modelled at least
as strictly as the venue; where Binance's documentation leaves room, the harsher
reading is taken and marked HARSHER.

- Request weight: rolling 60 s window per client IP (Binance's counter is a fixed
  clock minute; a rolling window never forgives a burst straddling a minute
  boundary: HARSHER). Every request counts its weight, including unsigned,
  failed and refused (429/418) ones: Binance counts those too.
- Order counts: Binance counts them per account; the simulator has exactly one
  account, so they are account-wide (shared by every IP), over 10 s and 60 s.
  A placement refused by the limiter itself (429/418) moves no order counter: the
  venue never took it in. A placement the limiter admits counts, even when the
  matching engine rejects it afterwards (-2019, -4116, ...): HARSHER than the
  docs promise, which say rejected orders are "not guaranteed" to be counted. Every order counts,
  reduce-only and close-position ones too (the venue spares them under -1008 load shedding, never
  here); cancels and reads never do. Order modify and batch endpoints are not served (404 -5000).
- Sending anything while the Retry-After of an earlier 429 has not elapsed bans
  the IP (418). The ban lasts ``ban_base_sec`` doubled per earlier ban, capped at
  3 days, and offences are never forgiven until a reset (HARSHER: Binance only
  says bans "scale from 2 minutes to 3 days" for repeat offenders). Every request
  during a ban answers the same 418 and does not extend it.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

WEIGHT_WINDOW_SEC = 60.0
# window -> how Binance names it in -1015's message ("... current limit is 300 orders per 10 SECOND.")
ORDER_WINDOWS = ((10.0, "10 SECOND"), (60.0, "1 MINUTE"))
BAN_MAX_SEC = 3 * 24 * 3600.0

# Injected http_error faults (app.py) imitate a refusal without touching the limiter's state.
INJECTED_RETRY_AFTER_SEC = 1
INJECTED_BAN_SEC = 2

# (method, path) -> weight, or (weight with `symbol`, weight without), as Binance documents them.
WEIGHTS: dict[tuple[str, str], int | tuple[int, int]] = {
    ("GET", "/fapi/v1/ping"): 1,
    ("GET", "/fapi/v1/time"): 1,
    ("GET", "/fapi/v1/exchangeInfo"): 1,
    ("GET", "/fapi/v1/premiumIndex"): (1, 10),
    ("GET", "/fapi/v1/ticker/price"): (1, 2),
    ("GET", "/fapi/v2/ticker/price"): (1, 2),
    ("POST", "/fapi/v1/order"): 0,  # counted on the order counters instead
    ("GET", "/fapi/v1/order"): 1,
    ("DELETE", "/fapi/v1/order"): 1,
    ("GET", "/fapi/v1/openOrders"): (1, 40),
    ("GET", "/fapi/v1/allOrders"): 5,
    ("POST", "/fapi/v1/algoOrder"): 0,  # counted on the order counters instead
    ("GET", "/fapi/v1/algoOrder"): 1,
    ("DELETE", "/fapi/v1/algoOrder"): 1,
    ("GET", "/fapi/v1/openAlgoOrders"): (1, 40),
    ("GET", "/fapi/v1/allAlgoOrders"): 5,
    ("POST", "/fapi/v1/leverage"): 1,
    ("GET", "/fapi/v2/positionRisk"): 5,
    ("GET", "/fapi/v3/positionRisk"): 5,
    ("GET", "/fapi/v2/account"): 5,
    ("GET", "/fapi/v3/account"): 5,
    ("GET", "/fapi/v2/balance"): 5,
    ("GET", "/fapi/v3/balance"): 5,
    ("GET", "/fapi/v1/leverageBracket"): 1,
    ("POST", "/fapi/v1/listenKey"): 1,
    ("PUT", "/fapi/v1/listenKey"): 1,
    ("DELETE", "/fapi/v1/listenKey"): 1,
}
UNKNOWN_WEIGHT = 1

ORDER_PLACEMENT = frozenset({("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder")})

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
ORDER_10S_HEADER = "X-MBX-ORDER-COUNT-10S"
ORDER_1M_HEADER = "X-MBX-ORDER-COUNT-1M"


def request_weight(method: str, path: str, params: Mapping[str, str]) -> int:
    w = WEIGHTS.get((method, path), UNKNOWN_WEIGHT)
    if isinstance(w, tuple):
        return w[0] if params.get("symbol") else w[1]
    return w


def places_order(method: str, path: str) -> bool:
    return (method, path) in ORDER_PLACEMENT


def weight_msg(ip: str, limit: int) -> str:
    return (
        f"Too many requests; current limit of IP({ip}) is {limit} requests per minute. "
        "Please use the websocket for live updates to avoid polling the API."
    )


def orders_msg(limit: int, interval: str) -> str:
    return f"Too many new orders; current limit is {limit} orders per {interval}."


def ban_msg(ip: str, until_ms: int) -> str:
    return (
        f"Way too many requests; IP({ip}) banned until {until_ms}. "
        "Please use the websocket for live updates to avoid bans."
    )


@dataclass(frozen=True)
class Limits:
    weight_limit_1m: int = 2400
    orders_limit_10s: int = 300
    orders_limit_1m: int = 1200
    ban_base_sec: float = 120.0
    rate_limits: bool = True  # False: count and report, never refuse

    def order_limit(self, window_sec: float) -> int:
        return self.orders_limit_10s if window_sec == 10.0 else self.orders_limit_1m


@dataclass(frozen=True)
class Refusal:
    status: int  # 429 or 418
    code: int  # -1003 (weight, ban) or -1015 (orders)
    msg: str
    retry_after_sec: int

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def injected_refusal(status: int, ip: str, now: float, limits: Limits) -> Refusal:
    """What a fault-injected 429/418 answers: realistic body and Retry-After, no state change."""
    if status == 418:
        return Refusal(418, -1003, ban_msg(ip, int((now + INJECTED_BAN_SEC) * 1000)), INJECTED_BAN_SEC)
    return Refusal(429, -1003, weight_msg(ip, limits.weight_limit_1m), INJECTED_RETRY_AFTER_SEC)


@dataclass
class _Ip:
    weights: deque[tuple[float, int]] = field(default_factory=deque)
    used: int = 0
    retry_until: float = 0.0  # a request before this instant "keeps sending after a 429"
    banned_until: float = 0.0
    bans: int = 0


def _seconds_until(t: float, now: float) -> int:
    return max(1, math.ceil(t - now))


class RateLimiter:
    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self._ips: dict[str, _Ip] = {}
        self._orders: dict[float, deque[float]] = {w: deque() for w, _ in ORDER_WINDOWS}

    def reset(self, limits: Limits | None = None) -> None:
        if limits is not None:
            self.limits = limits
        self._ips.clear()
        for q in self._orders.values():
            q.clear()

    def set_limits(self, **changes: Any) -> Limits:
        self.limits = dataclasses.replace(self.limits, **changes)
        return self.limits

    # ------------------------------------------------------------------ accounting

    def _ip(self, ip: str, now: float) -> _Ip:
        st = self._ips.setdefault(ip, _Ip())
        while st.weights and now - st.weights[0][0] >= WEIGHT_WINDOW_SEC:
            st.used -= st.weights.popleft()[1]
        return st

    def _order_counts(self, now: float) -> dict[float, int]:
        for window, q in self._orders.items():
            while q and now - q[0] >= window:
                q.popleft()
        return {w: len(q) for w, q in self._orders.items()}

    def admit(self, ip: str, method: str, path: str, params: Mapping[str, str]) -> Refusal | None:
        """Charge this request and say whether the venue refuses it (None = go ahead)."""
        now = self.clock()
        st = self._ip(ip, now)
        weight = request_weight(method, path, params)
        if weight:
            st.weights.append((now, weight))
            st.used += weight  # refused requests count too, as on Binance
        lim = self.limits
        if lim.rate_limits:
            refusal = self._refusal(ip, st, now, weight, method, path)
            if refusal is not None:
                return refusal
        if places_order(method, path):
            for q in self._orders.values():
                q.append(now)
        return None

    def _refusal(self, ip: str, st: _Ip, now: float, weight: int, method: str, path: str) -> Refusal | None:
        lim = self.limits
        if now < st.banned_until:
            return self._banned(ip, st, now)
        if now < st.retry_until:
            st.bans += 1
            st.banned_until = now + min(lim.ban_base_sec * 2 ** (st.bans - 1), BAN_MAX_SEC)
            st.retry_until = 0.0
            return self._banned(ip, st, now)
        if st.used > lim.weight_limit_1m:
            after = self._weight_retry_after(st, now, weight)
            st.retry_until = now + after
            return Refusal(429, -1003, weight_msg(ip, lim.weight_limit_1m), after)
        if places_order(method, path):
            counts = self._order_counts(now)
            for window, interval in ORDER_WINDOWS:
                limit = lim.order_limit(window)
                if counts[window] + 1 > limit:
                    q = self._orders[window]
                    # the oldest order whose expiry brings the count down to limit - 1
                    idx = min(len(q) - limit, len(q) - 1)
                    after = _seconds_until(q[idx] + window, now) if idx >= 0 else 1
                    st.retry_until = now + after
                    return Refusal(429, -1015, orders_msg(limit, interval), after)
        return None

    def _banned(self, ip: str, st: _Ip, now: float) -> Refusal:
        until_ms = int(st.banned_until * 1000)
        return Refusal(418, -1003, ban_msg(ip, until_ms), _seconds_until(st.banned_until, now))

    def _weight_retry_after(self, st: _Ip, now: float, weight: int) -> int:
        """Seconds until enough weight has left the window for the same request to pass."""
        remaining = st.used
        for t, w in st.weights:
            remaining -= w
            if remaining + weight <= self.limits.weight_limit_1m:
                return _seconds_until(t + WEIGHT_WINDOW_SEC, now)
        return math.ceil(WEIGHT_WINDOW_SEC)  # this request alone is over the limit

    # ------------------------------------------------------------------ reporting

    def headers(self, ip: str, order_counts: bool = True) -> dict[str, str]:
        """The usage headers of an answer to ``ip``; the order counts only with ``order_counts``: Binance
        sends them on order responses alone, and does not promise them on refused orders (HARSHER: a
        client learns the account's count only from its own orders the limiter admitted)."""
        now = self.clock()
        used = self._ip(ip, now).used if ip in self._ips else 0
        out = {WEIGHT_HEADER: str(used)}
        if order_counts:
            counts = self._order_counts(now)
            out[ORDER_10S_HEADER] = str(counts[10.0])
            out[ORDER_1M_HEADER] = str(counts[60.0])
        return out

    def advertised(self) -> list[dict[str, Any]]:
        """exchangeInfo's rateLimits for the limits in force."""
        lim = self.limits
        return [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": lim.weight_limit_1m,
            },
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": lim.orders_limit_1m},
            {
                "rateLimitType": "ORDERS",
                "interval": "SECOND",
                "intervalNum": 10,
                "limit": lim.orders_limit_10s,
            },
        ]

    def view(self) -> dict[str, Any]:
        now = self.clock()
        counts = self._order_counts(now)
        ips = {}
        for ip in list(self._ips):
            st = self._ip(ip, now)
            ips[ip] = {
                "used_weight_1m": st.used,
                # account-wide (the simulator has one account), repeated per IP for convenience
                "order_count_10s": counts[10.0],
                "order_count_1m": counts[60.0],
                "banned": now < st.banned_until,
                "banned_until_ms": int(st.banned_until * 1000) if st.bans else None,
                "bans": st.bans,
                "retry_after_until_ms": int(st.retry_until * 1000) if now < st.retry_until else None,
            }
        return {
            **dataclasses.asdict(self.limits),
            "ban_max_sec": BAN_MAX_SEC,
            "order_count_10s": counts[10.0],
            "order_count_1m": counts[60.0],
            "ips": ips,
        }
