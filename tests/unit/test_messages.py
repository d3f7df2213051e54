import pytest

from libs.common.ids import Bucket, make_client_order_id
from libs.common.messages import (
    CancelIntent,
    DecodeError,
    Lane,
    OrderIntent,
    OrderRetry,
    OrderTransition,
    ReplaceIntent,
    Signal,
    VenueOrderFact,
    decode,
    encode,
    model_for_subject,
    subject_for,
    transition_filters,
    transition_subjects,
)
from libs.common.state_machine import OrderState
from tests.builders import intent


def test_round_trip_through_subject():
    i = intent()
    subj = subject_for("erl", i)
    assert subj == f"erl.intent.order.entry.{i.correlation_id}"
    back = decode("erl", subj, encode(i))
    assert back == i and back.v == 1


def test_router_messages_carry_their_orders_lane():
    entry = intent()
    stop = intent(
        bucket=Bucket.SL,
        client_order_id=make_client_order_id("i1", Bucket.SL),
        order_type="stop_market",
        stop_price=1.0,
        close_position=True,
        qty=None,
    )
    exit_ = intent(bucket=Bucket.EXIT, side="sell", reduce_only=True)
    assert (entry.lane(), stop.lane(), exit_.lane()) == (Lane.ENTRY, Lane.PROTECT, Lane.PROTECT)
    cancel_entry = CancelIntent(
        correlation_id="c1", client_order_id=entry.client_order_id, symbol=entry.symbol
    )
    cancel_stop = CancelIntent(correlation_id="c1", client_order_id=stop.client_order_id, symbol=stop.symbol)
    replace = ReplaceIntent(correlation_id="c1", old_client_order_id=stop.client_order_id, new_order=stop)
    fact = VenueOrderFact(client_order_id=entry.client_order_id, symbol=entry.symbol, status="filled")
    orphan = VenueOrderFact(client_order_id="web_manual_1", symbol=entry.symbol, status="filled")
    assert subject_for("erl", cancel_entry) == "erl.intent.cancel.entry.c1"
    assert subject_for("erl", cancel_stop) == "erl.intent.cancel.protect.c1"
    assert subject_for("erl", replace) == "erl.intent.replace.protect.c1"
    assert subject_for("erl", fact) == f"erl.venue.order.entry.{entry.client_order_id}"
    assert subject_for("erl", orphan) == "erl.venue.order.protect.web_manual_1"  # not ours: with protection
    for m in (stop, cancel_stop, replace, fact, orphan):
        assert decode("erl", subject_for("erl", m), encode(m)) == m


def test_subjects_from_before_lanes_still_decode():
    i = intent()
    assert decode("erl", f"erl.intent.order.{i.correlation_id}", encode(i)) == i
    assert model_for_subject("erl", "erl.intent.order.protect.c1") is OrderIntent
    with pytest.raises(DecodeError):  # a lane token only where lanes exist, and only a known lane
        model_for_subject("erl", "erl.order.retry.entry.c1")
    with pytest.raises(DecodeError):
        model_for_subject("erl", "erl.intent.order.fast.c1")


def _transition(to: OrderState) -> OrderTransition:
    return OrderTransition(
        correlation_id="c1",
        intent_id="i1",
        client_order_id="c1x",
        symbol="BTC/USDT:USDT",
        bucket=Bucket.ENTRY,
        from_state=OrderState.SUBMITTING,
        to_state=to,
    )


def _matches(filter_: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    f, s = filter_.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


def test_transitions_carry_their_state_and_filters_select_by_it():
    filled, submitting = _transition(OrderState.FILLED), _transition(OrderState.SUBMITTING)
    assert subject_for("erl", filled) == "erl.order.transition.FILLED.c1"
    assert decode("erl", subject_for("erl", filled), encode(filled)) == filled
    assert decode("erl", "erl.order.transition.c1", encode(filled)) == filled  # from before the token
    with pytest.raises(DecodeError):
        model_for_subject("erl", "erl.order.transition.entry.c1")  # a state, not a lane
    wanted = transition_filters("erl", {OrderState.FILLED, OrderState.REJECTED})
    picks = [
        s
        for s in ("erl.order.transition.FILLED.c1", "erl.order.transition.SUBMITTING.c1")
        if any(_matches(f, s) for f in wanted)
    ]
    assert picks == [subject_for("erl", filled)]
    assert any(_matches(f, "erl.order.transition.c1") for f in wanted)  # untokened ones are never lost
    assert not any(_matches(f, subject_for("erl", submitting)) for f in wanted)
    assert transition_filters("erl") == ["erl.order.transition.>"]
    one = transition_subjects("erl", "c1")
    for subject in (subject_for("erl", filled), subject_for("erl", submitting), "erl.order.transition.c1"):
        assert any(_matches(f, subject) for f in one)
    assert not any(_matches(f, "erl.order.transition.FILLED.c2") for f in one)


def test_every_family_maps_to_one_model():
    assert model_for_subject("erl", "erl.order.retry.c123") is OrderRetry
    assert model_for_subject("erl", "erl.signal.abc") is Signal
    with pytest.raises(DecodeError):
        model_for_subject("erl", "erl.nope.x")
    with pytest.raises(DecodeError):
        model_for_subject("erl", "other.signal.x")


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"not json", "Invalid JSON"),
        (b'{"kind":"order.intent"}', "Field required"),
        (b'{"v": 99}', "newer than this build"),
    ],
)
def test_malformed_payloads_raise_decode_error_with_reason(data, needle):
    with pytest.raises(DecodeError) as e:
        decode("erl", "erl.intent.order.c1", data)
    assert needle in str(e.value)


def test_intent_invariants():
    with pytest.raises(ValueError, match="reduce-only"):
        intent(bucket=Bucket.SL, order_type="stop_market", stop_price=1.0)
    with pytest.raises(ValueError, match="cannot be reduce-only"):
        intent(reduce_only=True)
    with pytest.raises(ValueError, match="needs stop_price"):
        intent(bucket=Bucket.SL, order_type="stop_market", reduce_only=True)
    with pytest.raises(ValueError, match="needs a price"):
        intent(order_type="limit")
    with pytest.raises(ValueError):
        intent(qty=-1)
    with pytest.raises(ValueError):
        intent(symbol="BTCUSDT")  # unified symbols only
    sl = intent(bucket=Bucket.SL, order_type="stop_market", stop_price=1.0, close_position=True, qty=None)
    assert sl.is_exit and sl.is_trigger


def test_extra_fields_rejected():
    with pytest.raises(ValueError):
        Signal(signal_id="a", symbol="BTC/USDT:USDT", side="buy", qty=1, surprise=1)


def test_decode_dates_a_message_without_ts_ms_by_its_stored_time() -> None:
    from libs.common.messages import decode

    raw = b'{"kind":"entry.decision","signal_id":"s","symbol":"BTC/USDT:USDT","accepted":false}'
    assert decode("erl", "erl.entry.decision.s", raw, stored_ts_ms=1234).ts_ms == 1234
    dated = b'{"kind":"entry.decision","signal_id":"s","symbol":"BTC/USDT:USDT","accepted":false,"ts_ms":7}'
    assert decode("erl", "erl.entry.decision.s", dated, stored_ts_ms=1234).ts_ms == 7


def test_halt_reasons_must_be_printable_non_blank_and_bounded() -> None:
    import pytest
    from pydantic import ValidationError

    from libs.common.messages import HaltCommand

    assert HaltCommand(action="halt", reason="maintenance", source="api").reason == "maintenance"
    for bad in ("", "   ", "a\x07b", "two\nlines", "x" * 501):
        with pytest.raises(ValidationError):
            HaltCommand(action="halt", reason=bad, source="api")
