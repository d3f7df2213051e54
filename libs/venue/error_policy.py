"""The one error policy (Binance USD-M): exchange failure -> what the router may do about it.

Pure: takes an exception (normally ccxt's) or a raw code/text, returns a
decision. The venue package's edge (``binance_usdm``) applies it to every ccxt
error and raises ``VenueError`` carrying the decision; nothing else is
classified. The router, the reconciler and the tests all use this mapping, so
an error is never retried in one place and treated as final in another.

Order of evidence: an IP ban first (HTTP 418 or its "banned until" text: its
body carries -1003 like a plain 429, so the code alone would hide it), then the
Binance error code (parsed from the message, ccxt carries no ``.code``), then
well-known message text, then the ccxt exception class. Anything unrecognised is
``fatal``: a retry storm on an error we do not understand is worse than a
visible failure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

import ccxt

from libs.venue.limits import is_ban_text


class Policy(StrEnum):
    RETRYABLE = "retryable"
    RETRYABLE_WITH_MODIFICATION = "retryable_with_modification"
    IDEMPOTENT_SAFE = "idempotent_safe"
    FATAL = "fatal"


class Modification(StrEnum):
    """What must change before a retry_with_modification attempt."""

    RESYNC_CLOCK = "resync_clock"  # -1021: timestamp outside recvWindow
    # -2022 / -4118 / -4509 / -4129: the position is not what the order assumed: re-read it, shrink or drop
    RESIZE_REDUCE_ONLY = "resize_reduce_only"
    TRIGGER_CROSSED = "trigger_crossed"  # -2021: the stop level is already through: close at market
    # -4130: a close-position stop (or take-profit) already rests in this direction: the protection
    # asked for exists, and the venue allows only one
    PROTECTION_EXISTS = "protection_exists"


@dataclass(frozen=True, slots=True)
class ErrorDecision:
    policy: Policy
    reason: str
    code: int | None
    error_class: str
    # True when the request may have been executed even though it failed:
    # the order must be looked up by client id before anything is resent.
    ambiguous: bool = False
    modification: Modification | None = None
    http_status: int | None = None

    @property
    def retryable(self) -> bool:
        return self.policy in (Policy.RETRYABLE, Policy.RETRYABLE_WITH_MODIFICATION)

    @property
    def venue_pause(self) -> bool:
        """The venue refused for its load (429, too many orders, an IP ban), not for this request:
        wait until it lets us back in; that wait is not a failed attempt."""
        return self.reason in VENUE_PAUSE_REASONS

    @property
    def order_budget_spent(self) -> bool:
        """-1015: the account's order count is at a limit; the order was refused, never placed. A
        protective order waits for the window and goes again; an entry must not be retried into it."""
        return self.reason == ORDER_RATE_LIMITED


ORDER_RATE_LIMITED = "order_rate_limited"
VENUE_PAUSE_REASONS = frozenset({"rate_limited", ORDER_RATE_LIMITED, "ip_banned"})


@dataclass(frozen=True, slots=True)
class _Rule:
    policy: Policy
    reason: str
    ambiguous: bool = False
    modification: Modification | None = None


_R, _RM, _IS, _F = Policy.RETRYABLE, Policy.RETRYABLE_WITH_MODIFICATION, Policy.IDEMPOTENT_SAFE, Policy.FATAL

# Binance USD-M codes. Kept deliberately explicit: adding a code is a reviewed decision.
_BY_CODE: dict[int, _Rule] = {
    -1000: _Rule(_R, "venue_unknown_error", ambiguous=True),
    -1001: _Rule(_R, "venue_disconnected", ambiguous=True),
    -1003: _Rule(_R, "rate_limited"),
    -1006: _Rule(_R, "venue_unexpected_response", ambiguous=True),
    -1007: _Rule(_R, "venue_timeout_unknown_status", ambiguous=True),
    -1008: _Rule(_R, "venue_overloaded"),  # refused, not executed (reduce-only / close-position are spared)
    # too many new orders (the account's 10 s / 1 min order counters): refused, not placed
    -1015: _Rule(_R, ORDER_RATE_LIMITED),
    -1021: _Rule(_RM, "timestamp_outside_recv_window", modification=Modification.RESYNC_CLOCK),
    -1022: _Rule(_F, "bad_signature"),
    -1100: _Rule(_F, "illegal_characters"),  # e.g. a client order id outside ^[.A-Z:/a-z0-9_-]{1,36}$
    -1102: _Rule(_F, "mandatory_parameter_missing"),
    -1106: _Rule(_F, "parameter_not_required"),  # e.g. closePosition with reduceOnly
    -1111: _Rule(_F, "precision_over_maximum"),
    -1131: _Rule(_F, "recv_window_too_large"),  # a recvWindow over 60 s: our configuration, not the order
    -1116: _Rule(_F, "invalid_order_type"),
    -1121: _Rule(_F, "invalid_symbol"),
    # user data stream keepalive / close on a key that expired or was closed: create a new one (POST)
    -1125: _Rule(_F, "listen_key_not_found"),
    -2007: _Rule(_F, "invalid_callback_rate"),  # trailing stop: callbackRate outside 0.1..10 %
    -2010: _Rule(_F, "order_rejected"),
    -2011: _Rule(_IS, "unknown_order"),
    -2013: _Rule(_IS, "order_does_not_exist"),
    -2014: _Rule(_F, "bad_api_key_format"),
    -2015: _Rule(_F, "auth_rejected"),
    -2019: _Rule(_F, "insufficient_margin"),
    -2021: _Rule(_RM, "would_immediately_trigger", modification=Modification.TRIGGER_CROSSED),
    -2022: _Rule(_RM, "reduce_only_rejected", modification=Modification.RESIZE_REDUCE_ONLY),
    -4003: _Rule(_F, "quantity_not_positive"),
    -4014: _Rule(_F, "price_not_tick_multiple"),
    -4016: _Rule(
        _F, "limit_price_outside_band"
    ),  # PERCENT_PRICE: "Price is higher than mark price multiplier cap."
    -4024: _Rule(
        _F, "limit_price_outside_band"
    ),  # PERCENT_PRICE: "Price is lower than mark price multiplier floor."
    -4028: _Rule(_F, "invalid_leverage"),
    -4116: _Rule(_IS, "duplicate_client_order_id"),
    -4118: _Rule(_RM, "reduce_only_check_failed", modification=Modification.RESIZE_REDUCE_ONLY),
    -4120: _Rule(_F, "use_algo_order_endpoint"),
    # closePosition / GTE order with no open position (-4509 now, -4129 before)
    -4129: _Rule(_RM, "no_position_for_close_order", modification=Modification.RESIZE_REDUCE_ONLY),
    -4130: _Rule(_RM, "close_position_order_exists", modification=Modification.PROTECTION_EXISTS),
    # market protection (PERCENT_PRICE against the book in a fast market): refused, may pass a moment later
    -4131: _Rule(_R, "price_protection_rejected"),
    -4135: _Rule(_F, "invalid_activation_price"),
    -4136: _Rule(_F, "close_position_trailing_stop"),  # TRAILING_STOP_MARKET cannot be closePosition
    -4137: _Rule(_F, "close_position_with_quantity"),
    -4164: _Rule(_F, "notional_too_small"),
    -4509: _Rule(_RM, "no_position_for_close_order", modification=Modification.RESIZE_REDUCE_ONLY),
    -5000: _Rule(_F, "invalid_path"),
    -5022: _Rule(_F, "post_only_would_take"),
}

# HTTP 418 / "banned until": every call with this key is refused until the ban ends
_IP_BANNED = _Rule(_R, "ip_banned")

# Message fragments seen from Binance (and from venues whose ccxt errors carry no code).
_BY_TEXT: tuple[tuple[str, int], ...] = (
    ("unknown order sent", -2011),
    ("order does not exist", -2013),
    ("reduceonly order is rejected", -2022),
    ("reduceonly order failed", -4118),
    ("reduce only check failed", -4118),
    ("clientorderid is duplicated", -4116),
    ("order would immediately trigger", -2021),
    ("margin is insufficient", -2019),
    ("closeposition in the direction is existing", -4130),
    ("gte can only be used with open positions", -4509),
    ("does not meet the percent_price filter", -4131),
    ("limit price can't be higher than", -4016),
    ("limit price can't be lower than", -4016),
    ("quantity must be zero with closeposition", -4137),
    ("precision is over the maximum", -1111),
    ("price not increased by tick size", -4014),
    ("illegal characters found in", -1100),
    ("sent when not required", -1106),
    ("too many new orders", -1015),
    ("too many requests", -1003),
    ("server is currently overloaded", -1008),
    ("send status unknown", -1007),
)

# ccxt class -> rule; walked along the exception's MRO so subclasses we never
# listed fall back to their nearest listed ancestor.
_BY_CLASS: dict[type[BaseException], _Rule] = {
    ccxt.RequestTimeout: _Rule(_R, "request_timeout", ambiguous=True),
    ccxt.RateLimitExceeded: _Rule(_R, "rate_limited"),
    ccxt.DDoSProtection: _Rule(_R, "rate_limited"),
    ccxt.OnMaintenance: _Rule(_R, "venue_maintenance", ambiguous=True),
    ccxt.ExchangeNotAvailable: _Rule(_R, "venue_unavailable", ambiguous=True),
    ccxt.InvalidNonce: _Rule(_RM, "invalid_nonce", modification=Modification.RESYNC_CLOCK),
    ccxt.NetworkError: _Rule(_R, "network_error", ambiguous=True),
    ccxt.OrderNotFound: _Rule(_IS, "order_not_found"),
    ccxt.DuplicateOrderId: _Rule(_IS, "duplicate_client_order_id"),
    ccxt.OrderImmediatelyFillable: _Rule(
        _RM, "would_immediately_trigger", modification=Modification.TRIGGER_CROSSED
    ),
    ccxt.InsufficientFunds: _Rule(_F, "insufficient_funds"),
    ccxt.AuthenticationError: _Rule(_F, "auth_rejected"),
    ccxt.PermissionDenied: _Rule(_F, "permission_denied"),
    ccxt.InvalidOrder: _Rule(_F, "invalid_order"),
    ccxt.BadRequest: _Rule(_F, "bad_request"),
    ccxt.BadSymbol: _Rule(_F, "bad_symbol"),
}


def retried_by_class() -> tuple[tuple[str, str], ...]:
    """(error class, reason) of every ccxt error class that is retried: the retry metric's known series."""
    retried = (Policy.RETRYABLE, Policy.RETRYABLE_WITH_MODIFICATION)
    return tuple((cls.__name__, rule.reason) for cls, rule in _BY_CLASS.items() if rule.policy in retried)


_CODE_IN_JSON = re.compile(r"\{.*\}", re.S)
_CODE_BARE = re.compile(r'"code"\s*:\s*"?(-\d+)')
_HTTP_STATUS = re.compile(r"^\S+ (\d{3}) ")


def parse_binance_code(text: str) -> int | None:
    """ccxt puts the raw body in the message (``binanceusdm {"code":-2011,...}``); pull the code out."""
    m = _CODE_IN_JSON.search(text)
    if m:
        try:
            body = json.loads(m.group(0))
            code = body.get("code") if isinstance(body, dict) else None
            if code is not None and int(code) < 0:
                return int(code)
        except (ValueError, TypeError):
            pass
    m2 = _CODE_BARE.search(text)
    return int(m2.group(1)) if m2 else None


def parse_http_status(text: str) -> int | None:
    """ccxt's HTTP-level errors read ``binanceusdm 429 Too Many Requests ...``."""
    m = _HTTP_STATUS.match(text)
    return int(m.group(1)) if m else None


def _decision(rule: _Rule, code: int | None, error_class: str, http_status: int | None) -> ErrorDecision:
    return ErrorDecision(
        policy=rule.policy,
        reason=rule.reason,
        code=code,
        error_class=error_class,
        ambiguous=rule.ambiguous,
        modification=rule.modification,
        http_status=http_status,
    )


def classify_order_error_policy(
    error: BaseException | None = None, *, code: int | None = None, text: str | None = None
) -> ErrorDecision:
    """Map an exchange failure to a policy. Unknown -> fatal."""
    error_class = type(error).__name__ if error is not None else "none"
    message = text if text is not None else (str(error) if error is not None else "")
    http_status = parse_http_status(message)
    if code is None:
        code = parse_binance_code(message)
    if http_status == 418 or is_ban_text(message):
        # an IP ban: sending during it prolongs it. Retryable only after it ends, within the elapsed cap
        return _decision(_IP_BANNED, code, error_class, http_status)
    if code is not None and code in _BY_CODE:
        return _decision(_BY_CODE[code], code, error_class, http_status)
    lowered = message.lower()
    for fragment, mapped in _BY_TEXT:
        if fragment in lowered:
            return _decision(_BY_CODE[mapped], code if code is not None else mapped, error_class, http_status)
    if error is not None:
        for cls in type(error).__mro__:
            rule = _BY_CLASS.get(cls)
            if rule is not None:
                return _decision(rule, code, error_class, http_status)
    return ErrorDecision(Policy.FATAL, "unclassified", code, error_class, http_status=http_status)


class VenueError(Exception):
    """A venue call failed: the ccxt error, classified at the venue package's edge.

    Only ccxt errors become a ``VenueError``; any other exception is a bug of ours and propagates as it is,
    never to be mistaken for (and journaled as) a venue refusal.
    """

    def __init__(self, error: ccxt.BaseError) -> None:
        self.decision = classify_order_error_policy(error)
        self.error = error
        super().__init__(f"{self.decision.error_class}: {error}")


def describe(e: BaseException) -> str:
    """``Class: message`` of a failure; of a venue failure, its ccxt class (as before the edge wrapped it)."""
    return str(e) if isinstance(e, VenueError) else f"{type(e).__name__}: {e}"
