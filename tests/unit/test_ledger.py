"""The intent ledger: admission from the last journaled state, the send deadline, the horizon."""

import pytest

from libs.common.state_machine import OrderState as S
from services.router.ledger import Admission, IntentLedger, admit


@pytest.mark.parametrize(
    "state,admission",
    [
        (None, Admission.SEND),
        (S.CREATED, Admission.SEND),
        (S.SUBMITTING, Admission.RESOLVE),
        (S.RETRY_WAIT, Admission.RESOLVE),
        (S.UNKNOWN, Admission.RESOLVE),
        (S.ACKED, Admission.OPEN),
        (S.PARTIALLY_FILLED, Admission.OPEN),
        (S.CANCEL_PENDING, Admission.OPEN),
        *(
            (s, Admission.SETTLED)
            for s in (S.FILLED, S.CANCELED, S.EXPIRED, S.REJECTED, S.MOOT, S.FAILED, S.BLOCKED)
        ),
    ],
)
def test_admission_never_sends_what_the_journal_has_sent(state, admission):
    assert admit(state) is admission


def test_prune_keeps_the_ledger_to_its_horizon_and_moves_what_it_covers():
    ledger = IntentLedger(horizon_sec=60.0, complete_since=0.0)
    ledger.record("OLD", S.FILLED, at=10.0, correlation_id="c1")
    ledger.record("NEW", S.ACKED, at=100.0, correlation_id="c2")
    assert ledger.covers(5.0)
    ledger.prune(now=120.0)
    assert ledger.get("OLD") is None and ledger.get("NEW") is not None and len(ledger) == 1
    assert not ledger.covers(50.0)  # published before the horizon: the journal must be asked
    assert ledger.covers(61.0)


def test_a_full_ledger_drops_its_oldest_and_stops_vouching_for_intents_before_them():
    ledger = IntentLedger(horizon_sec=3600.0, complete_since=0.0, max_entries=2)
    ledger.record("A", S.FILLED, at=10.0, correlation_id="c1")
    ledger.record("B", S.FILLED, at=20.0, correlation_id="c2")
    ledger.record("A", S.FILLED, at=25.0, correlation_id="c1")  # recorded again: now the newest
    ledger.record("C", S.ACKED, at=30.0, correlation_id="c3")
    assert ledger.get("B") is None and len(ledger) == 2  # the least recently recorded went
    assert not ledger.covers(20.0)  # B's intent (published by 20.0): the journal must be asked
    assert ledger.covers(20.5)
