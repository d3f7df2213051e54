"""Every Prometheus metric, defined once.

Services import the metric they update from here, so a metric name can never be
spelled two ways. Labels are low-cardinality by design: no symbol or order id.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, get_args

from prometheus_client import Counter, Gauge, Histogram

from libs.common.messages import CancelOutcome, GuardMode, MismatchKind, OrderRetry, RepairKind

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """``metric.labels(*values)``, each child looked up once: prometheus_client's ``labels`` takes a lock
    and rebuilds the label tuple on every call, and the per-message paths call it several times a message.
    Children are never removed from our metrics, so a kept child stays the live series."""

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[Any, ...], M] = {}

    def __call__(self, *values: Any) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


_LAT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# --- bus / plumbing
NATS_CONNECTED = Gauge("erl_nats_connected", "1 while the service holds a NATS connection", ["service"])
DEAD_LETTERS = Counter(
    "erl_dead_letters_total", "Messages terminated and dead-lettered", ["service", "reason"]
)
BUS_MESSAGES = Counter("erl_bus_messages_total", "Messages consumed", ["service", "family", "outcome"])
PUBLISH_FAILURES = Counter(
    "erl_publish_failures_total", "Journal publishes that failed every attempt", ["service"]
)
HTTP_REQUESTS = Histogram(
    "erl_http_request_duration_seconds",
    "REST request latency",
    ["service", "method", "route", "status"],
    buckets=_LAT_BUCKETS,
)

# --- order path
INTENTS = Counter("erl_intents_total", "Intents received", ["service", "kind", "bucket"])
ORDERS = Counter("erl_orders_total", "Order intents by terminal/settled outcome", ["bucket", "outcome"])
ORDER_TRANSITIONS = Counter("erl_order_transitions_total", "Order lifecycle transitions", ["to_state"])
RETRIES = Counter("erl_order_retries_total", "Retry attempts", ["operation", "error_class", "reason"])
RETRY_DELAY = Histogram("erl_order_retry_delay_seconds", "Backoff before a retry", buckets=_LAT_BUCKETS)
SUBMIT_LATENCY = Histogram(
    "erl_order_submit_latency_seconds",
    "Venue round trip of one create attempt",
    ["outcome"],
    buckets=_LAT_BUCKETS,
)
INTENT_LATENCY = Histogram(
    "erl_intent_to_settled_seconds",
    "Intent receipt to settled state (acked/filled/final)",
    buckets=_LAT_BUCKETS,
)
CANCELS = Counter("erl_cancels_total", "Cancel requests by outcome", ["outcome"])
CANCEL_REPLACE_GIVEUPS = Counter("erl_cancel_replace_giveups_total", "Cancel/replace give-ups", ["state"])
ROUTER_ENTRY_LAG = Gauge(
    "erl_router_entry_lag_seconds",
    "Largest age of an entry when the router took it up, over ROUTER_LOAD_WINDOW_SEC (risk sheds entries on it)",
)
ROUTER_BACKLOG = Gauge(
    "erl_router_backlog",
    "Messages waiting for the router: server-side backlog of its consumer + held in memory",
)
POLICY_BLOCKS = Counter("erl_policy_blocks_total", "Intents refused by policy", ["service", "reason"])
LEVERAGE_CAPPED = Counter("erl_leverage_capped_total", "Entries whose leverage was capped")
UNKNOWN_ORDERS = Gauge("erl_orders_unknown", "Orders whose venue outcome is not yet known")
NOT_RESENT = Counter(
    "erl_router_not_resent_total",
    "Intents delivered again but not sent: the journal has them resting (open) or ended (settled)",
    ["admission"],
)

# --- entry
SIGNALS = Counter("erl_signals_total", "Signals by decision", ["decision"])
ENTRY_BLOCKS = Counter("erl_entry_blocks_total", "Signals refused by guard knobs", ["reason"])
STAGE1_GAPS = Counter("erl_stage1_gap_assertions_total", "Fills whose stage-1 stop could not be placed")

# --- reconcile
RECONCILE_TICKS = Histogram("erl_reconcile_tick_seconds", "Reconcile tick duration", buckets=_LAT_BUCKETS)
RECONCILE_READ_FAILURES = Counter(
    "erl_reconcile_read_failures_total", "Ticks where the venue could not be read"
)
RECONCILE_INTERVAL = Gauge(
    "erl_reconcile_interval_seconds", "Time to the next reconcile tick, paced by the venue read budget"
)
RECONCILE_MISMATCHES = Counter("erl_reconcile_mismatches_total", "Mismatches by kind", ["kind"])
RECONCILE_REPAIRS = Counter("erl_reconcile_repairs_total", "Repair actions by kind", ["action"])
RECONCILE_REPAIR_SKIPPED = Counter(
    "erl_reconcile_repair_skipped_total", "Repairs held back (cooldown/anti-churn)"
)
MISMATCH_STREAK = Gauge("erl_reconcile_mismatch_streak", "Consecutive ticks with mismatches")
PROTECTION_GAPS = Gauge("erl_protection_gaps_open", "Symbols currently without adequate stop coverage")
PROTECTION_GAP_BREACHES = Gauge("erl_protection_gaps_breached", "Gaps older than the TTL")
PROTECTION_GAP_AGE = Gauge("erl_protection_gap_oldest_seconds", "Age of the oldest open protection gap")
# per symbol, only while its gap is over the TTL (bounded: the series goes when the gap closes), so an
# alert can name the symbol and hand over the command that replays it
PROTECTION_GAP_BREACHED_SYMBOL = Gauge(
    "erl_protection_gap_breached_symbol",
    "1 for each symbol whose protection gap outlived the TTL",
    ["symbol"],
)
UNPROTECTED_TIME = Histogram(
    "erl_unprotected_seconds",
    "How long closed protection gaps lasted",
    buckets=(0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300),
)
ORPHAN_ORDERS = Gauge("erl_orphan_orders", "Open orders that could add exposure and nobody tracks")
LEFTOVER_CANCELS = Counter(
    "erl_reconcile_leftover_cancels_total",
    "Protective orders cancelled because they rested on a flat symbol (their position was gone)",
)
EMERGENCY_EXITS = Counter(
    "erl_emergency_exits_total",
    "Positions closed at market because their protection gap outlived the TTL and repairs kept failing",
)

# --- venue limits (every service holding an exchange client)
VENUE_BANNED_UNTIL = Gauge(
    "erl_venue_banned_until_seconds",
    "End of the latest venue IP ban (unix time; in the past: none)",
    ["service"],
)
VENUE_BANS = Counter(
    "erl_venue_bans_total",
    "Venue IP bans (HTTP 418) learned, from our own responses or the bus",
    ["service", "source"],
)

# --- risk
KILL_SWITCH = Gauge("erl_kill_switch_tripped", "1 while the kill switch holds entries")
KILL_TRIPS = Counter("erl_kill_switch_trips_total", "Kill-switch trips by trigger", ["reason"])
MANUAL_HALT = Gauge("erl_manual_halt", "1 while an operator halt is in force")
GUARD_ALLOW_ENTRIES = Gauge("erl_guard_allow_entries", "Published guard knob: entries allowed")
GUARD_MAX_NOTIONAL = Gauge("erl_guard_max_notional_usdt", "Published guard knob")
GUARD_MAX_LEVERAGE = Gauge("erl_guard_max_leverage", "Published guard knob")
GUARD_MIN_CONF = Gauge("erl_guard_min_entry_conf", "Published guard knob")
GUARD_MODE = Gauge("erl_guard_mode", "Published guard mode (1 for the active one)", ["mode"])
BELIEF_DEBT = Gauge("erl_belief_debt", "Belief debt driving the controller")
ROUTER_LOAD_LEVEL = Gauge(
    "erl_risk_router_load_level",
    "The router's load as risk reads it: 0 ok, 1 unknown (its reports stopped), 2 throttle, 3 block",
)
ROUTER_LOAD_MODE = Gauge(
    "erl_risk_router_load_mode",
    "The router-load controller's mode: 0 normal, 1 cautious, 2 defensive, 3 halted",
)

# venue user data stream (services/venue_stream) and the router's use of its facts
STREAM_UP = Gauge("erl_venue_stream_up", "1 while the venue's user data stream is connected")
STREAM_SESSIONS = Counter(
    "erl_venue_stream_session_ends_total", "Stream sessions ended, by reason (then reconnected)", ["reason"]
)
STREAM_EVENTS = Counter(
    "erl_venue_stream_events_total",
    "Order and position updates from the stream: published, duplicate (already journaled), malformed "
    "(ignored)",
    ["outcome"],
)
VENUE_FACTS = Counter(
    "erl_router_venue_facts_total",
    "Venue facts by what the router did: settled, same, stale (older than what it knows: refused), "
    "lookup, orphan (a client id it does not know), ignored",
    ["outcome"],
)
STREAM_UNCONFIRMED = Counter(
    "erl_reconcile_stream_unconfirmed_total",
    "Orders the router placed that the venue stream never pushed (a stalled stream): the reconciler "
    "then reads every symbol until the stream proves itself again",
)
STREAM_TRUSTED = Gauge(
    "erl_reconcile_stream_trusted",
    "1 while the reconciler lets the venue stream stand in for reading every watched symbol each tick",
)
VENUE_FACT_OUTCOMES = ("settled", "same", "stale", "lookup", "orphan", "ignored")


# Known label values are created at zero when a service starts, so dashboards and alerts see "none
# yet" as 0 instead of as a missing series (which looks the same as a misspelt metric).
_Known = list[tuple[Counter | Gauge, tuple[tuple[str, ...], ...]]]


def _venue(service: str) -> _Known:
    """Series of a service that talks to the venue."""
    return [
        (VENUE_BANNED_UNTIL, ((service,),)),
        (VENUE_BANS, ((service, "response"), (service, "bus"))),
    ]


_KNOWN: dict[str, _Known] = {
    "router": [
        *_venue("router"),
        (CANCEL_REPLACE_GIVEUPS, (("INTENT_CREATED",), ("CANCEL_SENT_UNKNOWN",), ("REPLACE_RACE",))),
        (NOT_RESENT, (("open",), ("settled",), ("resolve",))),
        (VENUE_FACTS, tuple((o,) for o in VENUE_FACT_OUTCOMES)),
        (
            CANCELS,
            tuple((o,) for o in get_args(CancelOutcome)),
        ),
        (
            ORDERS,
            tuple(
                (b, o)
                for b in ("ENTRY", "TP", "SL", "EXIT")
                for o in ("ACKED", "FILLED", "REJECTED", "FAILED", "BLOCKED", "UNKNOWN", "MOOT")
            ),
        ),
        (
            POLICY_BLOCKS,
            tuple(
                ("router", r)
                for r in (
                    "entries_blocked",
                    "guard_unavailable",
                    "stale_intent",
                    "notional_cap",
                    "leverage_not_set",
                    "order_budget",
                )
            ),
        ),
    ],
    "entry": [
        *_venue("entry"),
        (SIGNALS, (("sent",), ("refused",))),
        (
            ENTRY_BLOCKS,
            tuple(
                (r,)
                for r in (
                    "guard_unavailable",
                    "entries_blocked",
                    "confidence_below_floor",
                    "cooldown",
                    "open_order_cap",
                    "no_reference_price",
                    "notional_cap",
                )
            ),
        ),
    ],
    "reconciler": [
        *_venue("reconciler"),
        (
            RECONCILE_MISMATCHES,
            tuple((k,) for k in get_args(MismatchKind)),
        ),
        (RECONCILE_REPAIRS, tuple((a,) for a in get_args(RepairKind) if a != "skip")),
    ],
    "venue_stream": [
        *_venue("venue_stream"),
        (STREAM_EVENTS, (("published",), ("duplicate",), ("malformed",))),
        (
            STREAM_SESSIONS,
            (("connection_lost",), ("listen_key_gone",), ("listen_key_expired",), ("silent",)),
        ),
    ],
    "risk": [
        (KILL_TRIPS, (("api_errors",), ("stale_data",), ("equity_drawdown",), ("reconcile_mismatch_storm",))),
        (GUARD_MODE, tuple((m,) for m in get_args(GuardMode))),
    ],
}


def _retry_series() -> tuple[tuple[str, str, str], ...]:
    """Retries by every operation and every retried ccxt error class: the retry panels read 0, not "no
    data", on a fresh stack. Imported here, not at the top: only the router pays for loading ccxt."""
    from libs.venue.error_policy import retried_by_class

    operations = get_args(OrderRetry.model_fields["operation"].annotation)
    return tuple((op, cls, reason) for op in operations for cls, reason in retried_by_class())


def preinit(service: str) -> None:
    """Create this service's known series at zero (idempotent)."""
    if service == "router":
        for operation, error_class, reason in _retry_series():
            RETRIES.labels(operation, error_class, reason)
    NATS_CONNECTED.labels(service)
    PUBLISH_FAILURES.labels(service)
    for kind in ("decode", "handler"):
        DEAD_LETTERS.labels(service, kind)
    for metric, label_sets in _KNOWN.get(service, []):
        for labels in label_sets:
            metric.labels(*labels)
