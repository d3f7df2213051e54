import re

import pytest

from libs.common.ids import (
    CLIENT_ORDER_ID_LEN,
    Bucket,
    bucket_of_client_order_id,
    make_client_order_id,
    make_correlation_id,
    make_intent_id,
)

SAFE = re.compile(r"^[A-Za-z0-9]{1,32}$")  # valid on Binance, Bybit and OKX


@pytest.mark.parametrize("bucket", list(Bucket))
def test_client_order_id_is_deterministic_fixed_length_and_venue_safe(bucket):
    intent = make_intent_id("signal", "s-1", bucket)
    a = make_client_order_id(intent, bucket)
    assert a == make_client_order_id(intent, bucket)
    assert len(a) == CLIENT_ORDER_ID_LEN
    assert SAFE.match(a)
    assert a.startswith(bucket.value)
    assert bucket_of_client_order_id(a) is bucket


def test_ids_never_grow_with_input_or_generation():
    long_source = "x" * 10_000
    intent = make_intent_id("signal", long_source, Bucket.SL)
    lengths = {len(make_client_order_id(intent, Bucket.SL, g)) for g in range(0, 5000, 7)}
    assert lengths == {CLIENT_ORDER_ID_LEN}


def test_generations_and_buckets_give_distinct_ids():
    intent = make_intent_id("signal", "s-1", Bucket.SL)
    ids = {make_client_order_id(intent, Bucket.SL, g) for g in range(100)}
    assert len(ids) == 100
    assert make_client_order_id(intent, Bucket.SL) != make_client_order_id(intent, Bucket.TP)


def test_intent_and_correlation_ids_are_stable_and_distinct():
    a = make_intent_id("signal", "s-1", Bucket.ENTRY)
    assert a == make_intent_id("signal", "s-1", Bucket.ENTRY)
    assert a != make_intent_id("signal", "s-2", Bucket.ENTRY)
    assert a != make_intent_id("signal", "s-1", Bucket.SL)
    # length-prefixing: shifted boundaries between parts must not collide
    assert make_intent_id("ab", "c", Bucket.ENTRY) != make_intent_id("a", "bc", Bucket.ENTRY)
    c = make_correlation_id(a)
    assert c == make_correlation_id(a) and len(c) == 24 and c.isalnum()


def test_foreign_ids_have_no_bucket():
    assert bucket_of_client_order_id("web_abc123") is None
    assert bucket_of_client_order_id("ENTRY" + "z" * 27) is None


def test_negative_generation_rejected():
    with pytest.raises(ValueError):
        make_client_order_id("i1", Bucket.SL, -1)
