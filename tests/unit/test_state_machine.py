import pytest

from libs.common.state_machine import (
    TERMINAL_ORDER_STATES,
    OrderState,
    PositionBelief,
    ReplaceState,
    TransitionError,
    can_transition,
    transition,
)

S = OrderState


def test_happy_path():
    s = S.CREATED
    for nxt in (S.SUBMITTING, S.ACKED, S.PARTIALLY_FILLED, S.PARTIALLY_FILLED, S.FILLED):
        s = transition(s, nxt)
    assert s is S.FILLED


def test_retry_and_unknown_paths():
    s = S.CREATED
    for nxt in (S.SUBMITTING, S.UNKNOWN, S.RETRY_WAIT, S.SUBMITTING, S.UNKNOWN, S.ACKED):
        s = transition(s, nxt)
    assert s is S.ACKED


def test_late_fill_after_cancel_is_valid():
    s = transition(transition(transition(S.ACKED, S.CANCEL_PENDING), S.CANCELED), S.FILLED)
    assert s is S.FILLED


@pytest.mark.parametrize(
    "src,dst",
    [
        (S.FILLED, S.ACKED),
        (S.REJECTED, S.SUBMITTING),
        (S.CREATED, S.FILLED),  # a fill without a send is a lifecycle bug
        (S.RETRY_WAIT, S.ACKED),
        (S.BLOCKED, S.SUBMITTING),
        (S.ACKED, S.SUBMITTING),  # never resend an order that is live
    ],
)
def test_invalid_transitions_raise(src, dst):
    with pytest.raises(TransitionError) as e:
        transition(src, dst, key="c1")
    assert src.value in str(e.value) and "c1" in str(e.value)
    assert not can_transition(src, dst)


def test_terminal_states_only_allow_late_fills():
    for t in TERMINAL_ORDER_STATES:
        for dst in S:
            if can_transition(t, dst):
                assert dst in (S.FILLED, S.PARTIALLY_FILLED), (t, dst)


def test_cross_machine_transition_rejected():
    with pytest.raises(TransitionError):
        transition(S.CREATED, ReplaceState.DONE)  # type: ignore[arg-type]


def test_replace_machine_bounded_states():
    s = ReplaceState.INTENT_CREATED
    s = transition(s, ReplaceState.CANCEL_SENT_UNKNOWN)
    s = transition(s, ReplaceState.REPLACE_RACE)
    s = transition(s, ReplaceState.FILLED_AFTER_CANCEL)
    s = transition(s, ReplaceState.DONE)
    with pytest.raises(TransitionError):
        transition(s, ReplaceState.INTENT_CREATED)
    with pytest.raises(TransitionError):
        transition(ReplaceState.FILLED_AFTER_CANCEL, ReplaceState.REPLACE_RACE)


def test_position_belief_machine():
    s = PositionBelief.FLAT
    for nxt in (
        PositionBelief.OPENING,
        PositionBelief.OPEN_UNPROTECTED,
        PositionBelief.OPEN_PROTECTED,
        PositionBelief.CLOSING,
        PositionBelief.FLAT,
    ):
        s = transition(s, nxt)
    with pytest.raises(TransitionError):
        transition(PositionBelief.DESYNC, PositionBelief.CLOSING)
    with pytest.raises(TransitionError):
        transition(PositionBelief.FLAT, PositionBelief.CLOSING)
