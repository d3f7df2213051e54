"""Whether the venue stream may stand in for reading every watched symbol each tick. Pure.

Trusted = the stream is up, every symbol's orders were read since it last (re)connected, and it has
not missed an order of ours since: a stream that stalls while its pings are still answered looks
healthy, so every order the router placed must show up on it (any pushed fact for its client id)
within ``confirm_sec``, and so must every ending of one that a read of ours found (filled, cancelled,
expired). One that does not ends the trust until the stream proves itself again (a
pushed fact, or a new session) and a full read followed.
"""

from __future__ import annotations

from libs.common.state_machine import OrderState

# the router learned from the venue that an order of ours exists: the venue pushed it too
_PLACED = frozenset({OrderState.ACKED, OrderState.PARTIALLY_FILLED, OrderState.FILLED})
_PLACING = frozenset({OrderState.SUBMITTING, OrderState.UNKNOWN})


class StreamTrust:
    def __init__(self, confirm_sec: float, *, remember: int = 2_000) -> None:
        self.confirm_sec = confirm_sec
        self.remember = remember  # bounded: the facts and the orders awaiting one
        self.swept_while_up = False
        self.proven = True  # no order of ours went missing on this session (since its last fact)
        self._pushed: dict[str, float] = {}  # client id -> when the stream last told us about it
        self._pushed_end: dict[str, float] = {}  # client id -> when the stream told us it ended
        self._awaiting: dict[str, float] = {}  # client id -> the time its fact is due by
        self.unconfirmed = 0  # orders the stream never told us about (for /status and metrics)

    def trusted(self, up: bool) -> bool:
        return up and self.swept_while_up and self.proven

    def on_status(self, *, up: bool, resumed: bool) -> None:
        if resumed or not up:
            # events may have been missed: read everything before trusting it again; and what was
            # placed while it was down is not the new session's to confirm
            self.swept_while_up = False
            self._awaiting.clear()
        if resumed:
            self.proven = True  # a new session: judged on its own

    def on_sweep(self, *, up_throughout: bool) -> None:
        self.swept_while_up = up_throughout

    def on_fact(self, client_order_id: str, now: float, *, ended: bool = False) -> None:
        self._pushed[client_order_id] = now
        if ended:
            self._pushed_end[client_order_id] = now
            _bound(self._pushed_end, self.remember)
        self.proven = True
        self._awaiting.pop(client_order_id, None)
        _bound(self._pushed, self.remember)

    def on_ending_read(self, client_order_id: str, now: float, *, up: bool) -> None:
        """A read of ours found one of our orders ended: the stream owes us that ending too."""
        if up and client_order_id not in self._pushed_end:
            self._awaiting.setdefault(client_order_id, now + self.confirm_sec)
            _bound(self._awaiting, self.remember)

    def on_transition(
        self, client_order_id: str, from_state: OrderState, to_state: OrderState, now: float, *, up: bool
    ) -> None:
        if not up or from_state not in _PLACING or to_state not in _PLACED:
            return
        if client_order_id in self._pushed:  # the stream was first
            return
        self._awaiting[client_order_id] = now + self.confirm_sec
        _bound(self._awaiting, self.remember)

    def overdue(self, now: float) -> list[str]:
        """Orders whose fact never came: the stream is not to be trusted until the next full read."""
        late = [cid for cid, due in self._awaiting.items() if due <= now]
        for cid in late:
            del self._awaiting[cid]
        if late:
            self.unconfirmed += len(late)
            self.proven = False
        return late


def _bound(d: dict[str, float], size: int) -> None:
    while len(d) > size:
        del d[next(iter(d))]  # the oldest first (insertion order)
