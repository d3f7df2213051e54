"""The intent ledger: what the journal says about each intent, and what the router may do next. Pure.

The venue deduplicates client order ids only among OPEN orders, so a FILLED market
order's id protects nothing: an intent delivered again (redelivery, the same intent
republished with a new message id, after a restart) must be stopped here, from what we
journaled, never from what the venue happens to remember.

The ledger is complete from ``complete_since`` on: the router loads the journal's
recovery window at boot and records every transition it journals afterwards (it is the
only writer of order transitions). An intent published before ``complete_since`` that
the ledger does not know is looked up in the journal itself before anything is sent.

"Not found" after an ambiguous send is not "absent" until the venue can no longer accept
the original request: its ``timestamp + recvWindow``, plus a margin for the clock offset
and the signing delay (``libs.venue.binance_usdm.request_void_after``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from libs.common.journal import EventSink
from libs.common.messages import BusMessage, OrderTransition
from libs.common.state_machine import OrderState

S = OrderState
# sent, but how it ended is not known yet: look it up before doing anything
IN_FLIGHT = frozenset({S.SUBMITTING, S.RETRY_WAIT, S.UNKNOWN})
OPEN = frozenset({S.ACKED, S.PARTIALLY_FILLED, S.CANCEL_PENDING})
SETTLED = frozenset({S.FILLED, S.CANCELED, S.EXPIRED, S.REJECTED, S.MOOT, S.FAILED, S.BLOCKED})
# an order in these states may exist on the venue (a lookup that finds nothing proves nothing)
MAY_EXIST = IN_FLIGHT | OPEN | frozenset({S.FILLED, S.CANCELED, S.EXPIRED})


class Admission(StrEnum):
    SEND = "send"  # never sent: send it
    RESOLVE = "resolve"  # maybe sent: look it up first, send only once it is proven absent
    OPEN = "open"  # resting on the venue: nothing to send
    SETTLED = "settled"  # ended: never send again


def admit(state: OrderState | None) -> Admission:
    if state is None or state is S.CREATED:
        return Admission.SEND
    if state in IN_FLIGHT:
        return Admission.RESOLVE
    if state in OPEN:
        return Admission.OPEN
    return Admission.SETTLED


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    state: OrderState
    at: float  # unix seconds of the transition that set ``state``
    correlation_id: str


class IntentLedger:
    """client order id -> the last journaled state, for the recovery horizon."""

    def __init__(self, horizon_sec: float, complete_since: float, max_entries: int = 100_000) -> None:
        self.horizon_sec = horizon_sec
        self.complete_since = complete_since
        # bounded memory at any rate (about 330 bytes an intent): past it the oldest go, as past the
        # horizon, and an intent from before the newest one dropped is looked up in the journal instead
        self.max_entries = max_entries
        self._entries: OrderedDict[str, LedgerEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, client_order_id: str, state: OrderState, at: float, correlation_id: str) -> None:
        self._entries[client_order_id] = LedgerEntry(state, at, correlation_id)
        self._entries.move_to_end(client_order_id)
        while len(self._entries) > self.max_entries:
            _, dropped = self._entries.popitem(last=False)
            # published no later than its last transition: every intent from before then is looked up
            self.complete_since = max(self.complete_since, dropped.at + 0.001)  # ts are in ms

    def get(self, client_order_id: str) -> LedgerEntry | None:
        return self._entries.get(client_order_id)

    def covers(self, published_at: float) -> bool:
        """Whether the ledger alone knows every transition of an intent published then."""
        return published_at >= self.complete_since

    def prune(self, now: float) -> None:
        """Forget entries older than the horizon; intents from before then need a journal lookup."""
        horizon = now - self.horizon_sec
        while self._entries:
            cid, entry = next(iter(self._entries.items()))
            if entry.at >= horizon:
                break
            del self._entries[cid]
        self.complete_since = max(self.complete_since, horizon)


class LedgerSink:
    """The router's event sink: every transition it journals also lands in the ledger."""

    def __init__(self, inner: EventSink, ledger: IntentLedger) -> None:
        self.inner, self.ledger = inner, ledger

    async def emit(self, msg: BusMessage) -> None:
        if isinstance(msg, OrderTransition):
            self.ledger.record(msg.client_order_id, msg.to_state, msg.ts_ms / 1000, msg.correlation_id)
        await self.inner.emit(msg)

    async def flush(self, within_sec: float = 10.0) -> None:
        await self.inner.flush(within_sec)
