"""What the system believes about the venue, built from the journal. Pure.

Positions are the last adopted venue quantity plus fills the router reported
since; orders are the ones the router last saw open. The reconciler compares
this with the venue every tick. A symbol with order activity in the last
``settle_sec`` is "busy": its fills may not have reached us yet, so drift is
only judged on quiet symbols (no false alarms from ordinary races).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from libs.common.config import ReconcilerSettings
from libs.common.ids import Bucket
from libs.common.messages import OrderIntent, OrderTransition
from libs.common.state_machine import OPEN_ORDER_STATES, OrderState

IN_FLIGHT_STATES = frozenset(
    {OrderState.CREATED, OrderState.SUBMITTING, OrderState.RETRY_WAIT, OrderState.UNKNOWN}
)
# a stop the venue refused, or the router gave up on: protection asked for and not obtained
STOP_REFUSED = frozenset({OrderState.REJECTED, OrderState.FAILED, OrderState.BLOCKED})
# intents the journal has shown no order for yet: the router's first transition follows within moments,
# but some never get one (a replace given up before its new order was sent), so they are capped
MAX_INTENTS_WITHOUT_ORDER = 1_000


@dataclass
class KnownOrder:
    client_order_id: str
    symbol: str
    bucket: Bucket
    side: str | None
    state: OrderState
    filled: float = 0.0
    is_trigger: bool = False
    stop_price: float | None = None


@dataclass
class Belief:
    settle_sec: float = ReconcilerSettings.model_fields["settle_sec"].default  # RECONCILE_SETTLE_SEC
    qty: dict[str, float] = field(default_factory=dict)
    orders: dict[str, KnownOrder] = field(default_factory=dict)
    last_activity: dict[str, float] = field(default_factory=dict)
    last_stop_price: dict[str, float] = field(default_factory=dict)
    intents: dict[str, OrderIntent] = field(default_factory=dict)  # client id -> intent, see _bound_intents
    # symbol -> when stop-losses (anyone's: stage-1 or repairs) were refused; the emergency exit counts them
    stop_refusals: dict[str, deque] = field(default_factory=dict)

    # ------------------------------------------------------------------ from the journal

    def apply_intent(self, intent: OrderIntent, now: float) -> None:
        self.remember_intent(intent)
        self.last_activity[intent.symbol] = now
        if intent.bucket is Bucket.SL and intent.stop_price:
            self.last_stop_price[intent.symbol] = intent.stop_price

    def remember_intent(self, intent: OrderIntent) -> None:
        """What its order is (a conditional order is looked up where the venue keeps those): the order's
        transitions may come long after, and may be all we see of it."""
        self.intents[intent.client_order_id] = intent
        self._bound_intents()

    def _bound_intents(self) -> None:
        """Forget the oldest intents without an order once there are more than the cap (an order's
        intent is forgotten with the order)."""
        if len(self.intents) <= MAX_INTENTS_WITHOUT_ORDER:
            return
        orderless = [cid for cid in self.intents if cid not in self.orders]
        for cid in orderless[: len(orderless) - MAX_INTENTS_WITHOUT_ORDER]:
            del self.intents[cid]

    def apply_transition(self, t: OrderTransition, now: float) -> None:
        if not _leaves_the_position_alone(t):
            self.last_activity[t.symbol] = now
        o = self.orders.get(t.client_order_id)
        intent = self.intents.get(t.client_order_id)
        if o is None:
            o = KnownOrder(
                t.client_order_id,
                t.symbol,
                t.bucket,
                t.side or (intent.side if intent else None),
                t.to_state,
                is_trigger=bool(intent and intent.is_trigger),
                stop_price=intent.stop_price if intent else None,
            )
            self.orders[t.client_order_id] = o
        o.state = t.to_state
        if (
            t.bucket is Bucket.SL
            and t.to_state in STOP_REFUSED
            and not (intent and intent.order_type == "trailing_stop_market")
        ):
            self.stop_refusals.setdefault(t.symbol, deque(maxlen=32)).append((now, t.client_order_id))
        if t.filled_qty is not None and t.filled_qty > o.filled and o.side is not None:
            delta = t.filled_qty - o.filled
            o.filled = t.filled_qty
            self.qty[t.symbol] = round(
                self.qty.get(t.symbol, 0.0) + (delta if o.side == "buy" else -delta), 12
            )
        if o.state not in OPEN_ORDER_STATES and o.state not in IN_FLIGHT_STATES:
            # settled: keep nothing but what coverage or debt needs
            self.orders.pop(t.client_order_id, None)
            self.intents.pop(t.client_order_id, None)

    # ------------------------------------------------------------------ queries

    def position(self, symbol: str) -> float:
        return self.qty.get(symbol, 0.0)

    def busy(self, symbol: str, now: float) -> bool:
        if now - self.last_activity.get(symbol, float("-inf")) < self.settle_sec:
            return True
        return any(o.symbol == symbol and o.state in IN_FLIGHT_STATES for o in self.orders.values())

    def open_orders(self, symbol: str | None = None) -> list[KnownOrder]:
        return [
            o
            for o in self.orders.values()
            if o.state in OPEN_ORDER_STATES and (symbol is None or o.symbol == symbol)
        ]

    def refusals_since(self, symbol: str, since: float) -> int:
        """Stop-losses on ``symbol`` refused (or given up) since ``since``."""
        return len({cid for at, cid in self.stop_refusals.get(symbol, ()) if at >= since})

    def unknown_orders(self) -> int:
        return sum(1 for o in self.orders.values() if o.state is OrderState.UNKNOWN)

    def knows(self, client_order_id: str) -> bool:
        return client_order_id in self.orders

    # ------------------------------------------------------------------ repairs of belief

    def adopt_position(self, symbol: str, qty: float) -> None:
        self.qty[symbol] = qty

    def adopt_order(self, o: KnownOrder) -> None:
        self.orders[o.client_order_id] = o

    def forget_order(self, client_order_id: str) -> None:
        self.orders.pop(client_order_id, None)
        self.intents.pop(client_order_id, None)


def _leaves_the_position_alone(t: OrderTransition) -> bool:
    """A stop or take-profit that ended without a fill (cancelled or expired, e.g. behind our back): no
    fill can be on its way, so the symbol need not settle before its protection is repaired (the crash
    bench's cancelled stops otherwise waited a paced tick, about 10 s)."""
    return (
        t.bucket in (Bucket.SL, Bucket.TP)
        and t.to_state in (OrderState.CANCELED, OrderState.EXPIRED)
        and not t.filled_qty
    )
