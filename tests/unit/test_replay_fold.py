from libs.common.messages import CancelResult, OrderRetry, OrderTransition
from libs.common.replay import JournalEntry, describe, find_by_client_order_id, fold, summarize
from libs.common.state_machine import OrderState as S
from tests.builders import intent


def tr(i, src, dst, **kw):
    return OrderTransition(
        correlation_id=i.correlation_id,
        intent_id=i.intent_id,
        client_order_id=i.client_order_id,
        symbol=i.symbol,
        bucket=i.bucket,
        from_state=src,
        to_state=dst,
        **kw,
    )


def entries(*msgs):
    return [JournalEntry(k + 1, "x", m) for k, m in enumerate(msgs)]


def test_fold_tracks_state_retries_and_restarts():
    i = intent()
    retry = OrderRetry(
        correlation_id=i.correlation_id,
        client_order_id=i.client_order_id,
        symbol=i.symbol,
        operation="create",
        error_class="DDoSProtection",
        reason="rate_limited",
        policy="retryable",
        tries=1,
        attempt=2,
        delay_sec=0.1,
        elapsed_sec=0.1,
    )
    es = entries(
        i,
        tr(i, S.CREATED, S.SUBMITTING),
        # router restarted: the redelivered intent starts again from CREATED
        tr(i, S.CREATED, S.UNKNOWN, reason="redelivered"),
        tr(i, S.UNKNOWN, S.RETRY_WAIT),
        retry,
        tr(i, S.RETRY_WAIT, S.SUBMITTING),
        tr(i, S.SUBMITTING, S.ACKED),
        CancelResult(
            correlation_id=i.correlation_id,
            client_order_id=i.client_order_id,
            symbol=i.symbol,
            outcome="canceled",
        ),
    )
    t = fold(es)[i.correlation_id]
    assert t.intent == i and t.state is S.ACKED and t.retries == 1 and t.restarts == 1
    assert t.cancel_outcomes == ["canceled"] and not t.settled
    assert [describe(e) for e in t.entries]  # every entry renders
    s = summarize({t.correlation_id: t})
    assert s["by_state"] == {"ACKED": 1} and s["unsettled"] == [i.correlation_id] and s["restarts"] == 1


def test_incremental_fold_without_entries_and_lookup_by_client_id():
    a, b = intent(), intent(intent_id="i2", correlation_id="c2", client_order_id="ENTRY2")
    timelines = fold(entries(a, tr(a, S.CREATED, S.SUBMITTING)), keep_entries=False)
    fold(entries(b, tr(a, S.SUBMITTING, S.FILLED)), timelines, keep_entries=False)
    assert timelines[a.correlation_id].state is S.FILLED and timelines[a.correlation_id].entries == []
    assert find_by_client_order_id(timelines, "ENTRY2").correlation_id == "c2"
    assert summarize(timelines)["by_state"] == {"FILLED": 1, "NO_TRANSITIONS": 1}
