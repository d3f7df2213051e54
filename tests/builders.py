"""Builders shared by test modules: one place, so no test module imports another."""

from __future__ import annotations

from typing import Any

from libs.common.config import ReconcilerSettings, RiskSettings
from libs.common.ids import Bucket, make_client_order_id, make_correlation_id, make_intent_id
from libs.common.messages import GuardKnobs, OrderIntent, OrderTransition
from libs.common.protection import stage1_intents
from libs.common.state_machine import OrderState
from services.reconciler.belief import Belief, KnownOrder
from services.reconciler.snapshot import PositionView, Snapshot, VenueOrderView
from services.reconciler.state import ReconcileState, TickResult
from services.reconciler.tick import reconcile_tick
from services.risk.belief_controller import DebtInputs
from services.risk.kill_switch import KillState
from services.risk.posture import OperatorHalt, compose_knobs

# ============================================================================= messages


def intent(**kw: Any) -> OrderIntent:
    """A BTC market-buy entry intent with fixed ids; ``kw`` overrides any field."""
    iid = make_intent_id("t", "1", Bucket.ENTRY)
    base: dict[str, Any] = dict(
        intent_id=iid,
        correlation_id=make_correlation_id(iid),
        client_order_id=make_client_order_id(iid, Bucket.ENTRY),
        bucket=Bucket.ENTRY,
        symbol="BTC/USDT:USDT",
        side="buy",
        order_type="market",
        qty=0.01,
    )
    base.update(kw)
    return OrderIntent(**base)


def stage1(**kw: Any) -> list[OrderIntent]:
    """Stage-1 protection for a BTC buy of 0.02 filled at 50,000 (default stop distance 2 %)."""
    args: dict[str, Any] = dict(
        entry_intent_id="ientry",
        entry_correlation_id="centry",
        symbol="BTC/USDT:USDT",
        entry_side="buy",
        fill_price=50_000.0,
        qty=0.02,
        stop_loss_price=None,
        take_profit_price=None,
        default_stop_pct=0.02,
    )
    args.update(kw)
    return stage1_intents(**args)


# ============================================================================= reconciler

BTC = "BTC/USDT:USDT"


def ours(bucket: Bucket = Bucket.SL, key: str = "1") -> str:
    """A client order id of ours (the reconciler recognises its bucket)."""
    return make_client_order_id(make_intent_id("test", key, bucket), bucket)


def order(
    cid: str, *, side="sell", qty=None, close=True, reduce_only=False, trigger=49_000.0, typ="stop_market"
) -> VenueOrderView:
    """A BTC order as the venue lists it: by default a close-position stop-market sell at 49,000."""
    return VenueOrderView(BTC, cid, side, qty, reduce_only, close, typ != "limit", typ, trigger)


def long(qty: float = 0.02, mark: float = 50_000.0) -> dict[str, PositionView]:
    return {BTC: PositionView(qty, mark, mark)}


def reconciler_settings(**overrides: Any) -> ReconcilerSettings:
    """Fast unit-test settings: a 1 s repair cooldown and a 3 s gap TTL unless told otherwise."""
    return ReconcilerSettings(**{"repair_cooldown_sec": 1.0, "protection_gap_ttl_sec": 3.0, **overrides})


def state(**overrides: Any) -> ReconcileState:
    return ReconcileState(reconciler_settings(**overrides))


def tick(belief, st, positions, orders, now, lookups=None) -> TickResult:
    return reconcile_tick(belief, Snapshot(positions, orders), lookups or {}, st, now=now)


def known(belief: Belief, o: VenueOrderView, bucket: Bucket = Bucket.SL) -> None:
    """``belief`` knows ``o`` as acked (the journal saw it placed)."""
    belief.adopt_order(
        KnownOrder(o.client_order_id, o.symbol, bucket, o.side, OrderState.ACKED, is_trigger=o.is_trigger)
    )


def of(out: TickResult, kind: type) -> list:
    return [i for i in out.intents if isinstance(i, kind)]


def actions(out: TickResult, action: str) -> list:
    return [r for r in out.repairs if r.action == action]


def journal_intent(bucket: Bucket = Bucket.ENTRY, key: str = "1", **fields: Any) -> OrderIntent:
    """A BTC intent of ours as the journal holds it: by default a limit buy of 0.01 at 48,000; an SL
    bucket makes it a close-position stop-market sell at 49,000."""
    iid = make_intent_id("test", key, bucket)
    base: dict[str, Any] = dict(
        intent_id=iid,
        correlation_id=make_correlation_id(iid),
        client_order_id=make_client_order_id(iid, bucket),
        bucket=bucket,
        symbol=BTC,
    )
    if bucket is Bucket.SL:
        base.update(side="sell", order_type="stop_market", stop_price=49_000.0, close_position=True)
    else:
        base.update(side="buy", order_type="limit", qty=0.01, price=48_000.0)
    return OrderIntent(**{**base, **fields})


def transition(intent: OrderIntent, src: OrderState, dst: OrderState, **fields: Any) -> OrderTransition:
    """The router's journal entry moving ``intent``'s order from ``src`` to ``dst``."""
    return OrderTransition(
        **{
            "correlation_id": intent.correlation_id,
            "intent_id": intent.intent_id,
            "client_order_id": intent.client_order_id,
            "symbol": intent.symbol,
            "bucket": intent.bucket,
            "side": intent.side,
            "from_state": src,
            "to_state": dst,
            **fields,
        }
    )


def refused(b: Belief, intent: OrderIntent, now: float) -> None:
    """The journal says the router could not get this stop placed (the venue refused it)."""
    b.apply_intent(intent, now)
    for src, dst in (
        (OrderState.CREATED, OrderState.SUBMITTING),
        (OrderState.SUBMITTING, OrderState.REJECTED),
    ):
        b.apply_transition(transition(intent, src, dst, code=-2010), now)


def knobs(settings: RiskSettings, **kw: Any) -> GuardKnobs:
    """Risk's knobs from a calm posture (normal controller, no kill, no operator halt); ``kw`` overrides."""
    args: dict[str, Any] = dict(
        controller_mode=0,
        trace=None,
        debt_inputs=DebtInputs(),
        kill=KillState(False, ()),
        operator=OperatorHalt(),
        state_error=None,
    )
    args.update(kw)
    return compose_knobs(settings, **args)


# ============================================================================= venue client, offline


SIM_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]


async def offline_client(answer: Any = None) -> Any:
    """A real ccxt client (our ``make_exchange``) with the simulator's markets and no server: its HTTP
    ``fetch`` records each request in ``client.sent`` (url, method, headers, body) and answers ``answer``
    (``client.answer``, changeable). The caller closes it."""
    from libs.venue.client import make_exchange
    from services.simulator import wire
    from services.simulator.engine import Engine

    client = make_exchange(api_url="http://sim.invalid", api_key="k", api_secret="s")
    info = wire.exchange_info(Engine(SIM_SYMBOLS))

    async def exchange_info(params: Any = None) -> Any:
        return info

    client.fapiPublicGetExchangeInfo = exchange_info
    await client.load_markets()
    client.sent, client.answer = [], answer

    async def fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        client.sent.append((url, method, headers, body))
        return client.answer

    client.fetch = fetch
    client.timeout_on_exit = 0  # no connection ever opened: nothing to wait for on close
    return client
