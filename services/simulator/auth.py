"""Binance HMAC-SHA256 request signing, checked exactly as ccxt signs. Pure."""

from __future__ import annotations

import hashlib
import hmac

from services.simulator.engine import SimError


def split_signature(payload: str) -> tuple[str, str | None]:
    """'a=1&b=2&signature=xx' -> ('a=1&b=2', 'xx'); the signed part is everything before it."""
    marker = "&signature="
    i = payload.rfind(marker)
    if i >= 0:
        return payload[:i], payload[i + len(marker) :]
    if payload.startswith("signature="):
        return "", payload[len("signature=") :]
    return payload, None


def check_api_key(api_key_header: str | None, api_key: str) -> None:
    """USER_STREAM endpoints (listenKey) need the API key only, no signature."""
    if not api_key_header or not hmac.compare_digest(api_key_header, api_key):
        raise SimError(401, -2015, "Invalid API-key, IP, or permissions for action.")


def check_signed_request(
    *,
    api_key_header: str | None,
    payload: str,
    timestamp_ms: int | None,
    recv_window_ms: int | None,
    now_ms: int,
    api_key: str,
    api_secret: str,
    default_recv_window_ms: int,
) -> None:
    """Raise the SimError Binance would answer with, or return for a valid request."""
    check_api_key(api_key_header, api_key)
    signed, signature = split_signature(payload)
    if signature is None:
        raise SimError(
            400, -1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."
        )
    expected = hmac.new(api_secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SimError(400, -1022, "Signature for this request is not valid.")
    if timestamp_ms is None:
        raise SimError(
            400, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."
        )
    if recv_window_ms is not None and recv_window_ms > 60_000:
        raise SimError(400, -1131, "recvWindow must be less than 60000")
    window = recv_window_ms or default_recv_window_ms
    if timestamp_ms > now_ms + 1000 or now_ms - timestamp_ms > window:
        raise SimError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
