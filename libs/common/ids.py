"""The one id generator: intent ids, correlation ids and client order ids.

Every id is a pure function of the intent it names, so a retry, a redelivery
after a crash, or a replay of the journal produces exactly the same id. Client
order ids have a fixed length whatever the input, so retries and replacement
generations can never make them grow past a venue's limit.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum


class Bucket(StrEnum):
    """What an order is for; becomes the visible prefix of its client order id."""

    ENTRY = "ENTRY"
    TP = "TP"
    SL = "SL"
    EXIT = "EXIT"


# <= 32 alphanumerics is valid on Binance (36 of [.A-Z:/a-z0-9_-]), Bybit (36) and OKX (32 alnum).
CLIENT_ORDER_ID_LEN = 32
CORRELATION_ID_LEN = 24


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        # length-prefix each part so ("ab","c") and ("a","bc") never collide
        h.update(f"{len(part)}:{part}|".encode())
    return h.hexdigest()


def make_intent_id(source: str, source_id: str, bucket: Bucket, generation: int = 0) -> str:
    """Stable id of one thing we want done, e.g. the entry for signal ``s-42``."""
    return "i" + _digest("intent", source, source_id, bucket.value, str(generation))[:31]


def make_correlation_id(intent_id: str) -> str:
    """Ties create, retries, cancels and replacements of one intent together in logs and the journal."""
    return "c" + _digest("corr", intent_id)[: CORRELATION_ID_LEN - 1]


def make_client_order_id(intent_id: str, bucket: Bucket, generation: int = 0) -> str:
    """Deterministic, fixed-length client order id: ``<BUCKET><hex>``, 32 alphanumerics.

    ``generation`` distinguishes the replacement of an order (a refreshed stop)
    from the original; it changes the hash, never the length.
    """
    if generation < 0:
        raise ValueError("generation must be >= 0")
    prefix = bucket.value
    return (
        prefix
        + _digest("coid", intent_id, bucket.value, str(generation))[: CLIENT_ORDER_ID_LEN - len(prefix)]
    )


def bucket_of_client_order_id(client_order_id: str) -> Bucket | None:
    """Recover the bucket from one of our ids; None for ids we did not make (orphans, manual orders)."""
    if len(client_order_id) != CLIENT_ORDER_ID_LEN or not client_order_id.isalnum():
        return None
    # ENTRY and EXIT share the leading E, so test the longest prefixes first
    for bucket in sorted(Bucket, key=lambda b: -len(b.value)):
        rest = client_order_id[len(bucket.value) :]
        if client_order_id.startswith(bucket.value) and all(c in "0123456789abcdef" for c in rest):
            return bucket
    return None
