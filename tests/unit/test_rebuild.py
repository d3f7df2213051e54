"""Restart rebuild, pure: the belief from the venue and the journal, and the orphans nobody accounts for."""

from __future__ import annotations

from libs.common.ids import Bucket
from libs.common.replay import IntentTimeline
from libs.common.state_machine import OrderState
from services.reconciler.belief import Belief
from services.reconciler.rebuild import rebuild
from services.reconciler.snapshot import Snapshot, VenueOrderView
from tests.builders import BTC, journal_intent, long, order, ours, transition

S = OrderState


def timelines(*entries: tuple) -> dict[str, IntentTimeline]:
    """(intent, its journaled state) pairs as the journal replay hands them over."""
    return {i.correlation_id: IntentTimeline(i.correlation_id, intent=i, state=s) for i, s in entries}


def limit(cid: str, side: str = "buy") -> VenueOrderView:
    return VenueOrderView(BTC, cid, side, 0.01, False, False, False, "limit", None)


def test_positions_are_the_venues():
    b = Belief()
    b.qty[BTC] = 0.5  # whatever was believed before
    plan = rebuild(b, Snapshot(long(0.02), []), {})
    assert plan.positions == {BTC: 0.02} and b.position(BTC) == 0.02


def test_our_listed_orders_are_adopted_as_acked_with_their_bucket():
    b = Belief()
    stop = order(ours(Bucket.SL, "s"), trigger=48_000.0)
    plan = rebuild(b, Snapshot(long(), [stop]), {})
    o = b.orders[stop.client_order_id]
    assert (o.bucket, o.state, o.is_trigger, o.stop_price) == (Bucket.SL, S.ACKED, True, 48_000.0)
    assert plan.adopted_orders == 1 and plan.orphans == []


def test_an_order_that_can_open_exposure_is_an_orphan_unless_the_journal_has_it_open():
    b = Belief()
    manual, unjournaled = limit("manual_entry"), limit(ours(Bucket.ENTRY, "lost"))
    journaled = journal_intent(key="live")
    plan = rebuild(
        b,
        Snapshot({}, [manual, unjournaled, limit(journaled.client_order_id)]),
        timelines((journaled, S.ACKED)),
    )
    assert [o.client_order_id for o in plan.orphans] == ["manual_entry", unjournaled.client_order_id]
    assert (plan.orphans[0].side, plan.orphans[0].qty, plan.orphans[0].order_type) == ("buy", 0.01, "limit")
    # ours by id, or open in the journal: believed; someone else's is only reported
    assert b.knows(unjournaled.client_order_id) and b.knows(journaled.client_order_id)
    assert not b.knows("manual_entry")
    assert plan.adopted_orders == 2


def test_someone_elses_protection_is_no_orphan_and_not_ours_to_believe():
    b = Belief()
    plan = rebuild(b, Snapshot(long(), [order("manual_stop")]), {})
    assert plan.orphans == [] and plan.adopted_orders == 0 and not b.knows("manual_stop")


def test_an_order_journaled_unknown_is_believed_unknown_debt():
    b = Belief()
    unknown = journal_intent(key="u")
    settled = journal_intent(key="f")
    plan = rebuild(b, Snapshot({}, []), timelines((unknown, S.UNKNOWN), (settled, S.FILLED)))
    assert plan.unknown_from_journal == 1 and b.unknown_orders() == 1
    assert b.orders[unknown.client_order_id].state is S.UNKNOWN and not b.knows(settled.client_order_id)


def test_the_stop_price_asked_for_is_the_newest_stop_intents():
    b = Belief()
    old = journal_intent(Bucket.SL, key="old", stop_price=47_000.0, ts_ms=1_000)
    new = journal_intent(Bucket.SL, key="new", stop_price=48_500.0, ts_ms=2_000)
    entry = journal_intent(key="e", ts_ms=3_000)
    rebuild(b, Snapshot({}, []), timelines((new, S.CANCELED), (old, S.ACKED), (entry, S.FILLED)))
    assert b.last_stop_price == {BTC: 48_500.0}  # whatever became of it: that is where the stop belongs


def test_journaled_open_but_no_longer_listed_is_believed_open_to_be_looked_up():
    b = Belief()
    gone = journal_intent(Bucket.SL, key="g")
    plan = rebuild(b, Snapshot({}, []), timelines((gone, S.ACKED)))
    assert plan.ended_unseen == 1
    o = b.orders[gone.client_order_id]
    assert (o.state, o.is_trigger, o.stop_price) == (S.ACKED, True, 49_000.0)


def test_timelines_without_an_intent_or_a_state_are_skipped():
    b = Belief()
    i = journal_intent()
    partial = {"x": IntentTimeline("x"), i.correlation_id: IntentTimeline(i.correlation_id, intent=i)}
    plan = rebuild(b, Snapshot({}, []), partial)
    assert b.orders == {} and plan.ended_unseen == 0 and plan.unknown_from_journal == 0


def test_an_intent_still_under_way_is_remembered_so_its_live_transitions_know_what_its_order_is():
    # soak seed 13: a stop intent journaled just before the reconciler restarted, its transitions seen
    # live afterwards: without the intent the stop was believed a plain order, looked up where plain
    # orders are, never found, and its expiry never reported
    b = Belief()
    fresh, sent = journal_intent(Bucket.SL, key="fresh"), journal_intent(Bucket.SL, key="sent")
    done = journal_intent(Bucket.SL, key="done")
    rebuild(b, Snapshot(long(), []), timelines((fresh, None), (sent, S.SUBMITTING), (done, S.CANCELED)))
    assert set(b.intents) == {fresh.client_order_id, sent.client_order_id}
    for i in (fresh, sent):
        b.apply_transition(transition(i, S.SUBMITTING, S.ACKED), 100.0)
        assert b.orders[i.client_order_id].is_trigger
