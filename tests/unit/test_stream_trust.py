from libs.common.state_machine import OrderState as S
from services.reconciler.stream_trust import StreamTrust


def trusted_stream() -> StreamTrust:
    t = StreamTrust(confirm_sec=5.0)
    t.on_status(up=True, resumed=True)
    t.on_sweep(up_throughout=True)
    return t


def test_trust_needs_a_full_read_under_a_stream_that_is_up():
    t = StreamTrust(confirm_sec=5.0)
    assert not t.trusted(True)
    t.on_sweep(up_throughout=False)  # the stream dropped during the read
    assert not t.trusted(True)
    t.on_sweep(up_throughout=True)
    assert t.trusted(True) and not t.trusted(False)
    t.on_status(up=True, resumed=True)  # a reconnect: what happened meanwhile is only on the venue
    assert not t.trusted(True)


def test_an_order_the_stream_never_pushed_ends_the_trust():
    t = trusted_stream()
    t.on_transition("a", S.SUBMITTING, S.ACKED, 100.0, up=True)
    assert t.overdue(104.9) == [] and t.trusted(True)
    assert t.overdue(105.0) == ["a"]
    assert not t.trusted(True) and t.unconfirmed == 1
    assert t.overdue(200.0) == []  # counted once
    t.on_sweep(up_throughout=True)  # a full read alone does not make a stalled stream trustworthy
    assert not t.trusted(True)
    t.on_fact("b", 201.0)  # it pushes again
    assert t.trusted(True)


def test_a_new_session_is_judged_on_its_own():
    t = trusted_stream()
    t.on_transition("a", S.SUBMITTING, S.ACKED, 100.0, up=True)
    t.overdue(200.0)
    t.on_status(up=True, resumed=True)
    assert not t.trusted(True)
    t.on_sweep(up_throughout=True)
    assert t.trusted(True)


def test_a_pushed_fact_before_or_after_the_ack_confirms_it():
    t = trusted_stream()
    t.on_fact("early", 99.0)  # the stream is often faster than the REST answer
    t.on_transition("early", S.SUBMITTING, S.ACKED, 100.0, up=True)
    t.on_transition("late", S.UNKNOWN, S.FILLED, 100.0, up=True)
    t.on_fact("late", 101.0)
    assert t.overdue(1_000.0) == [] and t.trusted(True)


def test_only_placements_seen_while_the_stream_is_up_are_checked():
    t = trusted_stream()
    t.on_transition("down", S.SUBMITTING, S.ACKED, 100.0, up=False)
    t.on_transition("moved", S.ACKED, S.CANCELED, 100.0, up=True)  # not a placement
    t.on_transition("gone", S.SUBMITTING, S.ACKED, 100.0, up=True)
    t.on_status(up=False, resumed=False)  # dropped: the new session cannot confirm the old one's
    assert t.overdue(1_000.0) == []


def test_memory_is_bounded():
    t = StreamTrust(confirm_sec=5.0, remember=3)
    for n in range(10):
        t.on_fact(f"f{n}", float(n))
        t.on_transition(f"o{n}", S.SUBMITTING, S.ACKED, float(n), up=True)
    assert len(t._pushed) == 3 and len(t._awaiting) == 3


def test_an_ending_our_read_found_must_have_been_pushed():
    t = trusted_stream()
    t.on_fact("told", 90.0, ended=True)
    t.on_ending_read("told", 100.0, up=True)
    t.on_fact("acked", 90.0)  # its ack was pushed, not its ending
    t.on_ending_read("acked", 100.0, up=True)
    assert t.overdue(105.0) == ["acked"] and not t.trusted(True)
    t.on_ending_read("later", 100.0, up=True)
    t.on_fact("later", 101.0, ended=True)  # pushed a little after the read saw it: in time
    assert t.overdue(1_000.0) == []
