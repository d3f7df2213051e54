"""The one schema per bus message.

Every message carries ``kind`` (what it is) and ``v`` (schema version), so the
journal is self-describing and a replay years later can tell old shapes from
new ones. Each kind has exactly one subject family (see ``subject_for``); the
last subject token is the correlation id where there is one, which lets a
consumer pull one intent's whole lifecycle with a subject filter.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from libs.common.ids import Bucket, bucket_of_client_order_id
from libs.common.state_machine import OrderState, PositionBelief, ReplaceState

SCHEMA_VERSION = 1

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop_market", "take_profit_market", "trailing_stop_market"]
# conditional orders: Binance's algo endpoint, looked up and cancelled with ``trigger``
TRIGGER_ORDER_TYPES = frozenset({"stop_market", "take_profit_market", "trailing_stop_market"})
# a trailing stop's callback rate in percent (1 = 1%), as Binance USD-M accepts it
CallbackRate = Annotated[float, Field(ge=0.1, le=10, allow_inf_nan=False)]
# guard-knob modes, from loosest to strictest
GuardMode = Literal["normal", "cautious", "defensive", "halted"]
Qty = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Token = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Symbol = Annotated[str, Field(min_length=3, max_length=40, pattern=r"^[A-Z0-9]+/[A-Z0-9]+(:[A-Z0-9]+)?$")]
OPERATOR_REASON_MAX = 500


def check_operator_reason(v: str) -> str:
    """An operator's reason is read back in the journal, logs and dashboards: one line of real text."""
    if not v.strip():
        raise ValueError("reason must not be blank")
    if not v.isprintable():
        raise ValueError("reason must be printable text on one line (no control characters)")
    return v


# why a halt or resume was asked for: the same rule on REST and on the bus
OperatorReason = Annotated[
    str, Field(min_length=1, max_length=OPERATOR_REASON_MAX), AfterValidator(check_operator_reason)
]


def now_ms() -> int:
    return int(time.time() * 1000)


class Lane(StrEnum):
    """The router consumer a message about an order goes to: entries in one, protection in the other.

    Each lane is its own durable consumer with its own delivery window, so a backlog of entries can
    never hold back a stop, a take-profit, an exit, a repair or a replace (issue 14). A message about
    an order (its cancel, a venue fact) rides in that order's lane: it stays ordered with the order."""

    ENTRY = "entry"
    PROTECT = "protect"


def lane_of_order(client_order_id: str) -> Lane:
    """An order's lane from its client id; an id we did not make (an orphan) goes with protection."""
    return Lane.ENTRY if bucket_of_client_order_id(client_order_id) is Bucket.ENTRY else Lane.PROTECT


class BusMessage(BaseModel):
    """Base of every message on the bus."""

    # cache_strings="keys": pydantic caches parsed JSON strings process-wide (16,384 of them); our values
    # are mostly ids seen once, which would only fill that cache (about 1 MB held, evicting useful entries)
    model_config = ConfigDict(extra="forbid", frozen=True, cache_strings="keys")

    # the subject family below the prefix, e.g. "intent.order"; the one place subjects come from
    family: ClassVar[str]
    v: int = SCHEMA_VERSION
    ts_ms: int = Field(default_factory=now_ms)

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"schema version {v} is newer than this build understands ({SCHEMA_VERSION})")
        return v

    def subject_token(self) -> str:
        """Last subject token; correlation id for per-intent messages."""
        return getattr(self, "correlation_id", None) or "all"

    def lane(self) -> Lane | None:
        """The router lane, a subject token before the last one (``<prefix>.intent.order.entry.<cid>``);
        None for messages outside the router's lanes."""
        return None

    def qualifier(self) -> str | None:
        """The subject token before the last one, if the family has one: the lane of an intent or
        fact, the state of a transition. Consumers filter on it; decode accepts subjects without it
        (journaled before it existed)."""
        lane = self.lane()
        return None if lane is None else lane.value


# ----------------------------------------------------------------------------- signals and intents


class Signal(BusMessage):
    """A strategy's wish to enter; the entry service turns it into an entry intent (or refuses)."""

    family: ClassVar[str] = "signal"
    kind: Literal["signal"] = "signal"
    signal_id: Token
    symbol: Symbol
    side: Side
    qty: Qty
    confidence: float = Field(1.0, ge=0, le=1)
    leverage: int | None = Field(None, ge=1, le=125)
    order_type: Literal["market", "limit"] = "market"
    price: Price | None = None
    ref_price: Price | None = Field(None, description="price at signal time, for notional caps")
    stop_loss_price: Price | None = None
    take_profit_price: Price | None = None
    trailing_callback_rate: CallbackRate | None = Field(
        None, description="stage-1 trailing stop: retrace in percent from the best price (1 = 1%)"
    )
    trailing_activation_price: Price | None = Field(
        None, description="the trailing stop starts tracking once price reaches this (default: at once)"
    )
    source: str = Field("cli", max_length=64)

    @model_validator(mode="after")
    def _limit_needs_price(self) -> Signal:
        if self.order_type == "limit" and self.price is None:
            raise ValueError("a limit signal needs a price")
        if self.trailing_activation_price is not None and self.trailing_callback_rate is None:
            raise ValueError("a trailing activation price needs a trailing callback rate")
        return self

    def subject_token(self) -> str:
        return self.signal_id


class OrderIntent(BusMessage):
    """Place one order. Ids are derived from the intent, so a resend is the same order."""

    family: ClassVar[str] = "intent.order"
    kind: Literal["order.intent"] = "order.intent"
    intent_id: Token
    correlation_id: Token
    client_order_id: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$")]
    bucket: Bucket
    symbol: Symbol
    side: Side
    order_type: OrderType
    qty: Qty | None = None  # None only with close_position
    price: Price | None = None
    stop_price: Price | None = None
    callback_rate: CallbackRate | None = Field(None, description="trailing stops: retrace percent (1 = 1%)")
    activation_price: Price | None = Field(None, description="trailing stops: start tracking at this price")
    reduce_only: bool = False
    close_position: bool = False
    leverage: int | None = Field(None, ge=1, le=125)
    notional_usdt: float | None = Field(None, ge=0, description="qty x reference price, for caps")
    parent_correlation_id: Token | None = None
    signal_id: Token | None = None
    confidence: float | None = Field(None, ge=0, le=1)
    source: str = Field("entry", max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> OrderIntent:
        if self.order_type == "limit" and self.price is None:
            raise ValueError("a limit order needs a price")
        if self.order_type in ("stop_market", "take_profit_market") and self.stop_price is None:
            raise ValueError(f"a {self.order_type} order needs stop_price")
        if self.order_type == "trailing_stop_market":
            if self.callback_rate is None:
                raise ValueError("a trailing_stop_market order needs callback_rate")
            if self.close_position:
                raise ValueError("a trailing stop cannot be close-position (Binance -4136): give it a qty")
        elif self.callback_rate is not None or self.activation_price is not None:
            raise ValueError("callback_rate and activation_price are for trailing_stop_market orders only")
        if self.qty is None and not self.close_position:
            raise ValueError("qty is required unless close_position")
        if self.bucket is Bucket.ENTRY and (self.reduce_only or self.close_position):
            raise ValueError("an ENTRY cannot be reduce-only")
        if self.bucket is not Bucket.ENTRY and not (self.reduce_only or self.close_position):
            raise ValueError(f"a {self.bucket} order must be reduce-only or close-position")
        return self

    @property
    def is_exit(self) -> bool:
        """Exits and protection are never policy-blocked."""
        return self.bucket is not Bucket.ENTRY

    def lane(self) -> Lane:
        return Lane.ENTRY if self.bucket is Bucket.ENTRY else Lane.PROTECT

    @property
    def is_trigger(self) -> bool:
        """Conditional orders live on Binance's algo endpoint and need ``trigger`` on lookups."""
        return self.order_type in TRIGGER_ORDER_TYPES


class CancelIntent(BusMessage):
    family: ClassVar[str] = "intent.cancel"
    kind: Literal["cancel.intent"] = "cancel.intent"
    correlation_id: Token
    client_order_id: Annotated[str, Field(min_length=1, max_length=36)]
    symbol: Symbol
    is_trigger: bool = False
    reason: str = Field("", max_length=200)
    source: str = Field("", max_length=64)

    def lane(self) -> Lane:
        return lane_of_order(self.client_order_id)


class ReplaceIntent(BusMessage):
    """Cancel ``old_client_order_id`` and place ``new_order`` instead, bounded (stop refreshes)."""

    family: ClassVar[str] = "intent.replace"
    kind: Literal["replace.intent"] = "replace.intent"
    correlation_id: Token
    old_client_order_id: Annotated[str, Field(min_length=1, max_length=36)]
    old_is_trigger: bool = True
    new_order: OrderIntent
    reason: str = Field("", max_length=200)
    source: str = Field("", max_length=64)

    def lane(self) -> Lane:
        return self.new_order.lane()


# ----------------------------------------------------------------------------- router events (journal)


class OrderTransition(BusMessage):
    """One edge of an order intent's lifecycle. The journal of these is what replay rebuilds."""

    family: ClassVar[str] = "order.transition"
    kind: Literal["order.transition"] = "order.transition"
    correlation_id: Token
    intent_id: Token
    client_order_id: str
    symbol: Symbol
    bucket: Bucket
    side: Side | None = None
    from_state: OrderState
    to_state: OrderState
    reason: str = ""
    attempt: int = Field(0, ge=0)
    exchange_order_id: str | None = None
    venue_status: str | None = None
    filled_qty: float | None = None
    avg_price: float | None = None
    error_class: str | None = None
    code: int | None = None
    leverage: int | None = None
    venue_ms: float | None = Field(None, description="duration of the venue call that produced this state")

    def qualifier(self) -> str:
        """``<prefix>.order.transition.<to_state>.<cid>``: a consumer that needs a few states (the
        entry's fills and stop outcomes, risk's API errors) filters on them instead of being handed,
        and acking, every transition of every order (issue 14)."""
        return self.to_state.value


class OrderRetry(BusMessage):
    """Exactly one per retry attempt."""

    family: ClassVar[str] = "order.retry"
    kind: Literal["order.retry"] = "order.retry"
    correlation_id: Token
    client_order_id: str
    symbol: Symbol
    operation: Literal["create", "cancel", "fetch", "leverage"]
    error_class: str
    reason: str
    code: int | None = None
    policy: str
    tries: int = Field(ge=1, description="attempts made so far")
    attempt: int = Field(
        ge=1,
        description="the attempt this retry is about to make; after a venue pause (429, IP ban) the same "
        "attempt again, as the venue did not handle it",
    )
    delay_sec: float = Field(ge=0)
    elapsed_sec: float = Field(ge=0)


CancelOutcome = Literal["canceled", "already_gone", "filled", "conflict_open", "unknown", "failed"]


class CancelResult(BusMessage):
    family: ClassVar[str] = "order.cancel"
    kind: Literal["order.cancel"] = "order.cancel"
    correlation_id: Token
    client_order_id: str
    symbol: Symbol
    outcome: CancelOutcome
    order_correlation_id: Token | None = Field(
        None, description="the cancelled order's own correlation id, when the router knows the order"
    )
    status: str | None = Field(None, description="venue status from the cross-check fetch")
    filled_qty: float | None = None
    reason: str = ""
    code: int | None = None


class ReplaceTransition(BusMessage):
    family: ClassVar[str] = "order.replace"
    kind: Literal["order.replace"] = "order.replace"
    correlation_id: Token
    old_client_order_id: str
    new_client_order_id: str
    symbol: Symbol
    from_state: ReplaceState
    to_state: ReplaceState
    attempt: int = Field(ge=0)
    reason: str = ""


class CancelReplaceGiveup(BusMessage):
    family: ClassVar[str] = "order.cancel_replace_giveup"
    kind: Literal["order.cancel_replace_giveup"] = "order.cancel_replace_giveup"
    correlation_id: Token
    old_client_order_id: str
    new_client_order_id: str
    symbol: Symbol
    state: ReplaceState
    attempts: int
    reason: str


# ----------------------------------------------------------------------------- policy


class GuardKnobs(BusMessage):
    """The one guard-knob surface. Stored in KV (current value) and journaled (every change).

    Only entries read these; exits and stop repairs never do. The trace fields say
    why the knobs are what they are, for post-mortem replay.
    """

    family: ClassVar[str] = "risk.guard"
    kind: Literal["guard.knobs"] = "guard.knobs"
    allow_entries: bool = True
    max_notional_usdt: float = Field(1_000_000.0, ge=0)
    max_leverage: int = Field(125, ge=1, le=125)
    min_entry_conf: float = Field(0.0, ge=0, le=1)
    entry_cooldown_sec: float = Field(0.0, ge=0)
    max_open_orders: int = Field(1000, ge=0)
    mode: GuardMode = "normal"
    reason: str = ""
    revision: int = Field(0, ge=0)
    # trace
    controller_mode: str | None = None
    load_mode: str | None = Field(None, description="the router-load controller's mode (entry shedding)")
    belief_debt: float | None = None
    debt_inputs: dict[str, float] = Field(default_factory=dict)
    kill_reasons: list[str] = Field(default_factory=list)
    manual_halt: bool = False
    manual_reason: str = ""


class HaltCommand(BusMessage):
    """Ask risk to halt or resume entries (the REST API and the reconciler's boot freeze use it)."""

    family: ClassVar[str] = "risk.command"
    kind: Literal["risk.command"] = "risk.command"
    action: Literal["halt", "resume"]
    reason: OperatorReason
    source: Token
    command_id: Token | None = Field(
        None,
        description="applied once: risk remembers the ids it applied (a command without one is known by "
        "its stream sequence)",
    )

    def subject_token(self) -> str:
        return self.source


class KillSwitchEvent(BusMessage):
    family: ClassVar[str] = "risk.kill"
    kind: Literal["risk.kill"] = "risk.kill"
    tripped: bool
    reasons: list[str]
    newly_tripped: list[str] = Field(default_factory=list)
    released: list[str] = Field(default_factory=list)
    mismatch_streak: int = 0
    api_errors_in_window: int = 0
    data_age_sec: float | None = None
    drawdown_pct: float = 0.0


# ----------------------------------------------------------------------------- reconcile

MismatchKind = Literal[
    "position_drift",
    "orphan_order",
    "unknown_own_order",
    "missing_order",
    "missing_stop",
    "undersized_stop",
    "misplaced_stop",  # a stop on the right side, but not where this position's stop belongs
    "gap_ttl_breach",
]


class MismatchEvent(BusMessage):
    family: ClassVar[str] = "reconcile.mismatch"
    kind: Literal["reconcile.mismatch"] = "reconcile.mismatch"
    symbol: Symbol
    mismatch: MismatchKind
    detail: str = ""
    exchange_qty: float | None = None
    believed_qty: float | None = None
    client_order_id: str | None = None
    streak: int = 0
    critical: bool = False

    def subject_token(self) -> str:
        return self.mismatch


RepairKind = Literal[
    "place_stop",
    "refresh_stop",  # an undersized stop of ours, replaced (bounded cancel/replace)
    "move_stop",  # a stop that does not belong to this position (wrong price), replaced
    "cancel_leftover",  # a protective order left resting after its position went flat, cancelled
    "emergency_exit",  # repairs kept failing past the gap TTL: the position closed at market
    "adopt_position",
    "forget_order",
    "adopt_order",
    "skip",
]


class RepairAction(BusMessage):
    family: ClassVar[str] = "reconcile.repair"
    kind: Literal["reconcile.repair"] = "reconcile.repair"
    symbol: Symbol
    action: RepairKind
    reason: str = ""
    correlation_id: Token | None = None
    client_order_id: str | None = None

    def subject_token(self) -> str:
        return self.action


class ProtectionGap(BusMessage):
    family: ClassVar[str] = "reconcile.gap"
    kind: Literal["reconcile.gap"] = "reconcile.gap"
    symbol: Symbol
    state: Literal["opened", "breached", "closed"]
    age_sec: float = Field(ge=0)
    ttl_sec: float
    reason: str = ""
    critical: bool = False

    def subject_token(self) -> str:
        return self.state


class PositionBeliefTransition(BusMessage):
    family: ClassVar[str] = "reconcile.belief"
    kind: Literal["reconcile.belief"] = "reconcile.belief"
    symbol: Symbol
    from_state: PositionBelief
    to_state: PositionBelief
    reason: str = ""
    exchange_qty: float = 0.0

    def subject_token(self) -> str:
        return self.to_state.value


class ReconcileSummary(BusMessage):
    """Once per tick with mismatches or repairs, and as a heartbeat otherwise (risk's data feed)."""

    family: ClassVar[str] = "reconcile.summary"
    kind: Literal["reconcile.summary"] = "reconcile.summary"
    tick: int = Field(ge=0)
    symbols: int = 0
    mismatches: int = 0
    mismatch_events: int = 0
    repair_actions: int = 0
    repair_skipped: int = 0
    mismatch_streak: int = 0
    open_gaps: int = 0
    gap_breaches: int = 0
    oldest_gap_sec: float = 0.0
    orphans: int = 0
    unknown_orders: int = 0
    equity: float | None = None
    duration_ms: float = 0.0
    ok: bool = Field(True, description="False: the venue could not be read this tick")
    error: str = ""


class OrphanOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    symbol: Symbol
    client_order_id: str
    side: Side | None = None  # None: the venue's answer did not say (reported all the same)
    qty: float | None = None
    order_type: str = ""


class RebuildSummary(BusMessage):
    family: ClassVar[str] = "reconcile.rebuild"
    kind: Literal["reconcile.rebuild"] = "reconcile.rebuild"
    positions: dict[str, float] = Field(default_factory=dict)
    open_orders: int = 0
    orphans: list[OrphanOrder] = Field(default_factory=list)
    froze: bool = False
    ok: bool = True
    error: str = ""


class Stage1GapAssertion(BusMessage):
    """The entry service could not get stage-1 protection on a fresh fill: start the gap clock now."""

    family: ClassVar[str] = "entry.stage1_gap"
    kind: Literal["entry.stage1_gap"] = "entry.stage1_gap"
    correlation_id: Token
    symbol: Symbol
    reason: str
    stop_client_order_id: str | None = None


class SignalDecision(BusMessage):
    """What the entry service did with a signal, and why."""

    family: ClassVar[str] = "entry.decision"
    kind: Literal["entry.decision"] = "entry.decision"
    signal_id: Token
    symbol: Symbol
    accepted: bool
    reason: str = ""
    correlation_id: Token | None = None
    guard_mode: str | None = None

    def subject_token(self) -> str:
        return self.signal_id


# ----------------------------------------------------------------------------- venue


class VenueBan(BusMessage):
    """The venue banned our IP (HTTP 418): every call until ``banned_until_ms`` would lengthen the ban.

    Journaled by the service that got the 418; every service using the venue pauses its calls until
    then, and risk counts it as an API error.
    """

    family: ClassVar[str] = "venue.ban"
    kind: Literal["venue.ban"] = "venue.ban"
    banned_until_ms: int = Field(
        ge=0, description="calls resume then (the venue's word, at most the pause cap)"
    )
    retry_after_sec: float | None = Field(None, ge=0, description="the Retry-After header, if usable")
    venue_banned_until_ms: int | None = Field(None, description="the body's 'banned until', if readable")
    capped: bool = Field(False, description="the venue asked for longer than EXCHANGE_MAX_PAUSE_SEC")
    source_service: Token
    reason: str = Field("", max_length=500)

    def subject_token(self) -> str:
        return self.source_service


class VenueOrderFact(BusMessage):
    """A venue fact about one of our orders that the router did not see happen.

    Two reporters: the reconciler found the order gone from the open orders (a stop that triggered, an
    order cancelled or expired behind our back): a partial fact, ``state`` unset, and the router looks the
    order up itself; the venue stream (``source`` venue_stream) pushed an order update: a full fact with
    ``state``, the filled quantity and the average price, which the router settles from directly.

    The router, the only writer of order transitions, journals the truth (e.g. ACKED -> FILLED with the
    fill of the order a stop created, CANCELED -> FILLED); it never moves an order back to an older state.
    """

    family: ClassVar[str] = "venue.order"
    kind: Literal["venue.order"] = "venue.order"
    client_order_id: Annotated[str, Field(min_length=1, max_length=36)]
    symbol: Symbol
    is_trigger: bool = Field(False, description="about the conditional (algo) order itself")
    status: str = Field("", max_length=32, description="what the reporter saw (e.g. filled, expired)")
    source: str = Field("", max_length=64)
    state: OrderState | None = Field(None, description="set: the fact says how the order stands (no lookup)")
    filled_qty: float | None = Field(None, ge=0, allow_inf_nan=False)
    avg_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    exchange_order_id: str | None = Field(None, max_length=64)
    actual_order_id: str | None = Field(
        None, max_length=64, description="a triggered conditional order: the id of the order it placed"
    )
    event_ms: int | None = Field(None, ge=0, description="the venue's time of the update (orders updates)")

    def subject_token(self) -> str:
        return self.client_order_id

    def lane(self) -> Lane:
        return lane_of_order(self.client_order_id)


class VenuePositionFact(BusMessage):
    """A symbol's position as the venue pushed it (``ACCOUNT_UPDATE`` on the user data stream). The
    reconciler reads that symbol at once: a position opened, resized or closed behind our back is seen
    without waiting for a tick. Informative only: positions are still read over REST before any repair."""

    family: ClassVar[str] = "venue.position"
    kind: Literal["venue.position"] = "venue.position"
    symbol: Symbol
    qty: float = Field(allow_inf_nan=False, description="signed: long > 0, short < 0, flat 0")
    reason: str = Field("", max_length=32, description="the venue's reason (ORDER, FUNDING_FEE, ...)")
    event_ms: int | None = Field(None, ge=0)
    source_service: Token

    def subject_token(self) -> str:
        return self.source_service


VenueStreamState = Literal["up", "down"]


class VenueStreamStatus(BusMessage):
    """The venue stream's state. ``resumed``: a (re)connection just opened, so what happened while it was
    down is only on the venue: the reconciler reads it at once. Published on every change and as a
    heartbeat (``status_every_sec``): no status for a while means nobody is watching the venue's pushes.
    """

    family: ClassVar[str] = "venue.stream"
    kind: Literal["venue.stream"] = "venue.stream"
    state: VenueStreamState
    resumed: bool = False
    reason: str = Field("", max_length=300)
    since_ms: int = Field(ge=0, description="the state holds since then")
    connects: int = Field(0, ge=0, description="connections opened since the service started")
    source_service: Token

    def subject_token(self) -> str:
        return self.source_service


class RouterLoad(BusMessage):
    """How far behind the router is with entries (``services/router/load.py``). Risk turns it into guard
    knobs that throttle or block new entries (``services/risk/router_load.py``); exits and protection are
    never shed. Published every second while loaded, every ten seconds idle (ROUTER_LOAD_*)."""

    family: ClassVar[str] = "router.load"
    kind: Literal["router.load"] = "router.load"
    lag_sec: float = Field(
        ge=0,
        allow_inf_nan=False,
        description="largest age of an entry when the router took it up, over the window",
    )
    window_sec: float = Field(gt=0, allow_inf_nan=False)
    backlog: int | None = Field(
        None,
        ge=0,
        description="messages the server holds for the router's consumer, not yet delivered (None: unread)",
    )
    in_flight: int = Field(
        0, ge=0, description="messages the router holds in memory (queued or being handled)"
    )
    entries: int = Field(0, ge=0, description="entries the router took up since it started")
    source_service: Token

    def subject_token(self) -> str:
        return self.source_service


# ----------------------------------------------------------------------------- plumbing


class DeadLetter(BusMessage):
    """A message a service could not process; terminated, never redelivered forever."""

    family: ClassVar[str] = "dlq"
    kind: Literal["dlq"] = "dlq"
    service: Token
    subject: str
    stream_seq: int | None = None
    deliveries: int | None = None
    reason: str
    data: str = Field(description="original payload, utf-8 with replacement, truncated")

    def subject_token(self) -> str:
        return self.service


MESSAGE_TYPES: tuple[type[BusMessage], ...] = (
    Signal,
    OrderIntent,
    CancelIntent,
    ReplaceIntent,
    OrderTransition,
    OrderRetry,
    CancelResult,
    ReplaceTransition,
    CancelReplaceGiveup,
    GuardKnobs,
    HaltCommand,
    KillSwitchEvent,
    MismatchEvent,
    RepairAction,
    ProtectionGap,
    PositionBeliefTransition,
    ReconcileSummary,
    RebuildSummary,
    Stage1GapAssertion,
    SignalDecision,
    VenueBan,
    VenueOrderFact,
    VenuePositionFact,
    VenueStreamStatus,
    RouterLoad,
    DeadLetter,
)
_BY_FAMILY: dict[str, type[BusMessage]] = {m.family: m for m in MESSAGE_TYPES}
assert len(_BY_FAMILY) == len(MESSAGE_TYPES), "two messages share a subject family"
# the families whose subjects carry a qualifier token (subject_for), and the tokens each may carry
_LANES = frozenset(lane.value for lane in Lane)
_QUALIFIERS: dict[str, frozenset[str]] = {
    **{m.family: _LANES for m in MESSAGE_TYPES if m.lane is not BusMessage.lane},
    OrderTransition.family: frozenset(s.value for s in OrderState),
}


class DecodeError(ValueError):
    """The bytes on a subject are not a valid message for it."""


def subject_for(prefix: str, msg: BusMessage) -> str:
    qualifier = msg.qualifier()
    if qualifier is not None:
        return f"{prefix}.{msg.family}.{qualifier}.{msg.subject_token()}"
    return f"{prefix}.{msg.family}.{msg.subject_token()}"


def transition_subjects(prefix: str, correlation_id: str) -> list[str]:
    """One intent's transitions: any state, and those journaled before the state token."""
    family = f"{prefix}.{OrderTransition.family}"
    return [f"{family}.*.{correlation_id}", f"{family}.{correlation_id}"]


def transition_filters(prefix: str, states: Iterable[OrderState] | None = None) -> list[str]:
    """Consumer filter for order transitions: all of them, or those ending in one of ``states``
    (plus transitions journaled before the state token, which name no state: kept, never lost)."""
    family = f"{prefix}.{OrderTransition.family}"
    if states is None:
        return [f"{family}.>"]
    return [f"{family}.{s.value}.>" for s in sorted(states)] + [f"{family}.*"]


def family_of(prefix: str, subject: str) -> str:
    if not subject.startswith(prefix + "."):
        raise DecodeError(f"subject {subject!r} is outside prefix {prefix!r}")
    return subject[len(prefix) + 1 : subject.rindex(".")]


def model_for_subject(prefix: str, subject: str) -> type[BusMessage]:
    family = family_of(prefix, subject)
    model = _BY_FAMILY.get(family)
    if model is None:
        # a qualified subject (``intent.order.<lane>``, ``order.transition.<state>``); one without
        # its qualifier is from before qualifiers existed
        base, _, qualifier = family.rpartition(".")
        model = _BY_FAMILY.get(base) if qualifier in _QUALIFIERS.get(base, ()) else None
    if model is None:
        raise DecodeError(f"no schema for subject family {family!r}")
    return model


def decode(prefix: str, subject: str, data: bytes, stored_ts_ms: int | None = None) -> BusMessage:
    """Bytes on ``subject`` -> the one model for that subject, or DecodeError with a readable reason.

    A message is dated by its producer (``ts_ms``); one that came without it is dated by when the
    stream stored it (``stored_ts_ms``, JetStream's metadata), never by when it is read back."""
    model = model_for_subject(prefix, subject)
    try:
        msg = model.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise DecodeError(f"{model.__name__}: {loc}: {first['msg']} ({e.error_count()} error(s))") from None
    if stored_ts_ms is not None and "ts_ms" not in msg.model_fields_set:
        msg = msg.model_copy(update={"ts_ms": stored_ts_ms})
    return msg


def encode(msg: BusMessage) -> bytes:
    return msg.model_dump_json(exclude_none=True).encode()
