"""Orders sent and not yet answered by the router: the entry's own, instant reading of how far behind the
stack is. Pure (times are given)."""

from __future__ import annotations

from collections import OrderedDict


class Unanswered:
    """Client ids sent and waiting for the router's first answer (any transition), oldest first.

    One unanswered longer than ``expire_sec`` is forgotten: a lost or stuck one must not hold entries
    back for good (an entry still counts as an open entry elsewhere)."""

    def __init__(self, expire_sec: float) -> None:
        self.expire_sec = expire_sec
        self._sent: OrderedDict[str, float] = OrderedDict()

    def sent(self, client_order_id: str, now: float) -> None:
        self._sent[client_order_id] = now
        self._sent.move_to_end(client_order_id)

    def answered(self, client_order_id: str) -> None:
        self._sent.pop(client_order_id, None)

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._sent)

    def oldest_sec(self, now: float) -> float:
        """How long the oldest one has waited (0.0: none waits)."""
        self._expire(now)
        return now - next(iter(self._sent.values())) if self._sent else 0.0

    def _expire(self, now: float) -> None:
        while self._sent and next(iter(self._sent.values())) < now - self.expire_sec:
            self._sent.popitem(last=False)
