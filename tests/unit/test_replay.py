"""Where a journal read goes on: a replica's word for 'more', the leader's for 'the end'."""

from __future__ import annotations

from types import SimpleNamespace

import nats.js.errors
import pytest

from libs.common.replay import _resume_at


class Leader:
    """A stream leader that has a matching message at ``has`` (None: nothing more)."""

    def __init__(self, has: int | None) -> None:
        self.has, self.asked = has, []

    async def get_msg(self, stream, seq=None, subject=None, direct=False, next=False):
        self.asked.append((stream, seq, subject, direct, next))
        if self.has is None or self.has < seq:
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(seq=self.has)


async def test_more_on_the_replica_reads_on_without_asking_the_leader():
    leader = Leader(None)
    assert await _resume_at(leader, "ERL", "erl.>", 41, more=True) == 42
    assert leader.asked == []


async def test_the_end_is_the_leaders_word_not_a_lagging_replicas():
    leader = Leader(57)  # the replica that answered had not stored 57 yet
    assert await _resume_at(leader, "ERL", "erl.>", 41, more=False) == 57
    assert leader.asked == [("ERL", 42, "erl.>", False, True)]  # STREAM.MSG.GET, not a direct get
    assert await _resume_at(Leader(None), "ERL", "erl.>", 41, more=False) is None


@pytest.mark.parametrize("more", [True, False])
async def test_nothing_read_in_a_time_bounded_read_ends_it(more):
    assert await _resume_at(Leader(57), "ERL", "erl.>", None, more=more) is None
