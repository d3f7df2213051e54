"""Configuration from the environment, one settings class per concern.

Every knob has a sane default so the local stack runs with no environment at
all; ``describe_settings`` renders the whole table for the README and
``/status``. Bad values fail at start-up with a message naming the variable.
"""

from __future__ import annotations

import errno
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.retry import RetryPolicy
from libs.venue import limits

# the engines' own defaults are the settings' defaults: defined once, there
_RETRY = RetryPolicy()


class ConfigError(SystemExit):
    """Raised (as a clean exit, not a traceback) when the environment is invalid."""


class _Base(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)


# Values that were published as examples or dev defaults (compose files, docs): anyone can read them, so
# a service given one as a secret refuses to start rather than run with a password the world knows.
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "admin", "password", "secret", "sim-key", "sim-secret"}
)


def placeholder_problem(value: str) -> str | None:
    """Why ``value`` cannot be a secret (empty or a published placeholder), or None when it can."""
    v = value.strip().lower()
    if not v:
        return "is empty"
    if v in PLACEHOLDER_SECRETS or v.endswith("-dev-password"):
        return "is a published placeholder, not a secret"
    return None


def _refuse_placeholder(value: SecretStr | None) -> SecretStr | None:
    if value is not None and (problem := placeholder_problem(value.get_secret_value())):
        raise ValueError(f"{problem} (`make secrets` generates real ones for compose)")
    return value


class NatsSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="NATS_", extra="ignore", frozen=True)

    url: str = Field("nats://127.0.0.1:4222", description="Comma-separated NATS server URLs")
    user: str | None = Field(None, description="NATS user (per-service credentials in compose)")
    password: SecretStr | None = Field(
        None, description="NATS password (unset: none; empty or a published placeholder: refused)"
    )
    stream: str = Field("ERL", description="JetStream stream that is the durable event journal")
    subject_prefix: str = Field("erl", description="First token of every subject")
    kv_bucket: str = Field("erl_guard", description="KV bucket holding the guard knobs")
    duplicate_window_sec: float = Field(120.0, gt=0, description="Nats-Msg-Id dedup window")
    max_age_days: float = Field(30.0, gt=0, description="Journal retention")
    replicas: int = Field(1, ge=1, le=5, description="Stream replicas (3 on a cluster)")
    connect_timeout_sec: float = Field(2.0, gt=0, description="Per-attempt connect timeout")
    publish_timeout_sec: float = Field(2.0, gt=0, description="Per-attempt JetStream publish ack timeout")
    publish_attempts: int = Field(5, ge=1, description="Publish attempts (same Nats-Msg-Id) before failing")

    _password = field_validator("password")(_refuse_placeholder)


class ExchangeSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="EXCHANGE_", extra="ignore", frozen=True)

    api_url: str | None = Field(
        "http://127.0.0.1:8090",
        description="Binance USD-M compatible base URL; empty string = the real Binance fapi hosts",
    )
    api_key: SecretStr = Field(SecretStr("sim-key"), description="API key (never logged)")
    api_secret: SecretStr = Field(SecretStr("sim-secret"), description="API secret (never logged)")
    timeout_ms: int = Field(5000, ge=100, description="Per-request HTTP timeout")
    recv_window_ms: int = Field(
        5000,
        ge=500,
        le=60_000,
        description="recvWindow of signed requests: a request the venue has not handled by then is void, "
        "which bounds how long an ambiguous order can stay undecided",
    )
    ambiguity_margin_ms: int = Field(
        1000,
        ge=0,
        le=60_000,
        description="Added to recvWindow before 'not found' counts as absent (clock offset, signing delay)",
    )
    api_key_file: str | None = Field(None, description="Read the API key from this file (docker secrets)")
    api_secret_file: str | None = Field(
        None, description="Read the API secret from this file (docker secrets)"
    )
    max_pause_sec: float = Field(
        limits.MAX_PAUSE_SEC,
        gt=0,
        description="Longest a 418 ban or 429 Retry-After holds venue calls before one try",
    )
    ban_default_pause_sec: float = Field(
        limits.BAN_DEFAULT_SEC,
        gt=0,
        description="Pause after a 418 ban whose end cannot be read (no Retry-After, no date)",
    )
    rate_limit_default_pause_sec: float = Field(
        limits.RATE_LIMIT_DEFAULT_SEC, gt=0, description="Pause after a 429 without a usable Retry-After"
    )
    ws_url: str | None = Field(
        "ws://127.0.0.1:8091/ws",
        description="User data stream WebSocket base (ccxt's urls.api.ws.linear); ignored (Binance's own) "
        "when EXCHANGE_API_URL is empty",
    )

    @model_validator(mode="after")
    def _normalise(self) -> ExchangeSettings:
        if self.api_url is not None and not self.api_url.strip():
            object.__setattr__(self, "api_url", None)  # empty = the real Binance fapi hosts
        if self.api_url is None or (self.ws_url is not None and not self.ws_url.strip()):
            object.__setattr__(self, "ws_url", None)  # the real venue: its stream host comes with it
        for field, path in (("api_key", self.api_key_file), ("api_secret", self.api_secret_file)):
            if path:
                try:
                    with open(path) as f:
                        object.__setattr__(self, field, SecretStr(f.read().strip()))
                except OSError as e:
                    # docker secrets from files keep the host's owner and mode: the image runs as uid 10001
                    hint = (
                        " (the image runs as uid 10001: see README, Deployment)"
                        if e.errno == errno.EACCES
                        else ""
                    )
                    raise ValueError(
                        f"cannot read EXCHANGE_{field.upper()}_FILE {path}: {e.strerror}{hint}"
                    ) from None
        return self

    def require_keys(self) -> ExchangeSettings:
        """For a service that signs requests: on the real venue, refuse missing or placeholder keys.

        The simulator accepts any key, so its defaults stay; a real venue would only answer a placeholder
        with auth errors on every order, found when the first one matters.
        """
        if self.api_url is None:
            for field in ("api_key", "api_secret"):
                problem = placeholder_problem(getattr(self, field).get_secret_value())
                if problem:
                    name = f"EXCHANGE_{field.upper()}"
                    raise ConfigError(
                        f"invalid configuration: {name} (or {name}_FILE) {problem} (a real venue: "
                        "EXCHANGE_API_URL is empty)"
                    )
        return self


class GuardSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="GUARD_", extra="ignore", frozen=True)

    require_knobs: bool = Field(
        False, description="Block entries while no guard knobs are published (set 1 when risk runs)"
    )
    stale_after_sec: float = Field(5.0, gt=0, description="Knobs unconfirmed this long -> entries blocked")


class RouterSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", frozen=True)

    http_host: str = Field("127.0.0.1", description="REST bind address")
    http_port: int = Field(8101, ge=0, le=65535, description="REST port (/healthz /readyz /status /metrics)")
    retry_max_attempts: int = Field(
        _RETRY.max_attempts, ge=1, le=50, description="Attempts per operation, first included"
    )
    retry_max_elapsed_sec: float = Field(
        _RETRY.max_elapsed_sec, gt=0, description="Hard cap on time spent retrying one op"
    )
    retry_base_delay_sec: float = Field(
        _RETRY.base_delay_sec, ge=0, description="First backoff; doubles per retry"
    )
    retry_max_delay_sec: float = Field(_RETRY.max_delay_sec, ge=0, description="Backoff ceiling")
    retry_jitter: float = Field(_RETRY.jitter, ge=0, le=1, description="Fraction of each delay randomised")
    max_leverage: int = Field(20, ge=1, le=125, description="Hard entry leverage cap (exits never capped)")
    intent_max_age_sec: float = Field(
        30.0,
        gt=0,
        description="Entries older than this (from the intent's own timestamp) are refused as stale",
    )
    cancel_replace_max_attempts: int = Field(
        3, ge=1, le=20, description="Cancel/replace rounds before give-up"
    )
    replace_strict_transitions: bool = Field(True, description="Raise on invalid replace transitions")
    max_in_flight: int = Field(
        256, ge=1, description="Intents processed concurrently per lane (entry, protect; per-symbol ordered)"
    )
    ack_wait_sec: float = Field(
        5.0, gt=0, description="Redelivery delay of an intent lost in transit (held ones heartbeat)"
    )
    max_deliver: int = Field(10, ge=1, description="Deliveries before an intent is dead-lettered")
    resolve_every_sec: float = Field(
        2.0, gt=0, description="The resolver asks the venue about undecided orders this often"
    )
    cancel_verify_after_sec: float = Field(
        2.0,
        ge=0,
        description="Look an order up again this long after its cancel was acknowledged: a fill that "
        "raced the cancel is journaled CANCELED -> FILLED",
    )
    mark_cache_sec: float = Field(
        1.0,
        ge=0,
        description="Entry notional cap: venue mark reused this long, then re-read in the background",
    )
    mark_max_stale_sec: float = Field(
        5.0,
        gt=0,
        description="Entry notional cap: a mark older than this is re-read first; unreadable -> BLOCKED "
        "notional_unknown",
    )
    load_window_sec: float = Field(
        5.0,
        gt=0,
        description="Entry lag (router.load, read by risk to shed entries) is the largest age of an entry "
        "when the router took it up over this window",
    )
    load_every_sec: float = Field(
        1.0, gt=0, description="router.load published this often while loaded (and once when it clears)"
    )
    load_idle_every_sec: float = Field(
        10.0,
        gt=0,
        description="router.load published this often while idle (keep it well under RISK_ROUTER_LOAD_STALE_SEC)",
    )
    entry_order_share: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of the venue's order limits (exchangeInfo ORDERS per 10 s and per minute) "
        "entries may use; past it entries are BLOCKED order_budget, protective orders keep the rest",
    )

    @property
    def retry_policy(self) -> RetryPolicy:
        """The router's retry budget per intent: the one place it is derived from the settings."""
        return RetryPolicy(
            max_attempts=self.retry_max_attempts,
            max_elapsed_sec=self.retry_max_elapsed_sec,
            base_delay_sec=self.retry_base_delay_sec,
            max_delay_sec=self.retry_max_delay_sec,
            jitter=self.retry_jitter,
        )

    @model_validator(mode="after")
    def _delays(self) -> RouterSettings:
        if self.retry_max_delay_sec < self.retry_base_delay_sec:
            raise ValueError("ROUTER_RETRY_MAX_DELAY_SEC must be >= ROUTER_RETRY_BASE_DELAY_SEC")
        return self

    @model_validator(mode="after")
    def _marks(self) -> RouterSettings:
        if self.mark_max_stale_sec < self.mark_cache_sec:
            raise ValueError("ROUTER_MARK_MAX_STALE_SEC must be >= ROUTER_MARK_CACHE_SEC")
        return self

    @model_validator(mode="after")
    def _load_reports(self) -> RouterSettings:
        if self.load_idle_every_sec < self.load_every_sec:
            raise ValueError("ROUTER_LOAD_IDLE_EVERY_SEC must be >= ROUTER_LOAD_EVERY_SEC")
        return self


class EntrySettings(_Base):
    model_config = SettingsConfigDict(env_prefix="ENTRY_", extra="ignore", frozen=True)

    http_host: str = Field("127.0.0.1", description="REST bind address")
    http_port: int = Field(8104, ge=0, le=65535, description="REST port")
    default_leverage: int = Field(5, ge=1, le=125, description="Leverage for signals that name none")
    max_deliver: int = Field(5, ge=1, description="Deliveries before a signal is dead-lettered")
    max_entries_waiting: int = Field(
        10,
        ge=1,
        description="Entries sent and not yet answered by the router (acked, filled or refused); past it "
        "new entries are refused router_behind, at once (the shedding through risk takes seconds)",
    )
    stop_waiting_sec: float = Field(
        0.25,
        gt=0,
        description="A filled entry's stage-1 stop unanswered by the router this long refuses new entries "
        "(stop_waiting) until it is answered: under overload, positions waiting for protection come "
        "first. Keep it above the venue's usual order round trip",
    )
    unanswered_expire_sec: float = Field(
        60.0,
        gt=0,
        description="An order unanswered this long no longer counts against ENTRY_MAX_ENTRIES_WAITING or "
        "ENTRY_STOP_WAITING_SEC (an entry still counts as an open entry): a stuck one must not hold "
        "entries back for good",
    )
    unsent_retry_sec: float = Field(
        2.0,
        gt=0,
        description="An accepted entry whose intent publish failed is sent again this often (same msg id) "
        "until stored; it counts as an open entry meanwhile",
    )
    default_stop_pct: float = Field(
        0.02, gt=0, lt=1, description="Stage-1 stop distance when a signal names none"
    )
    price_cache_sec: float = Field(
        1.0, ge=0, description="Venue mark reused this long for notional caps, then re-read in the background"
    )
    price_max_stale_sec: float = Field(
        5.0,
        gt=0,
        description="A venue mark older than this is re-read before a cap check; unreadable -> refused "
        "mark_price_unavailable",
    )

    @model_validator(mode="after")
    def _prices(self) -> EntrySettings:
        if self.price_max_stale_sec < self.price_cache_sec:
            raise ValueError("ENTRY_PRICE_MAX_STALE_SEC must be >= ENTRY_PRICE_CACHE_SEC")
        return self


T = TypeVar("T", bound=BaseSettings)


class ReconcilerSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="RECONCILE_", extra="ignore", frozen=True)

    http_host: str = Field("127.0.0.1", description="REST bind address")
    http_port: int = Field(8102, ge=0, le=65535, description="REST port")
    interval_sec: float = Field(1.0, gt=0, description="Shortest time between reconcile ticks")
    max_interval_sec: float = Field(
        12.0,
        gt=0,
        description="Longest time between ticks, whatever the read budget says (50 positions need ~10 s "
        "at 25% of 2,400; below the protection-gap TTL)",
    )
    weight_budget_share: float = Field(
        0.25, gt=0, le=1, description="Share of the venue's request-weight limit the reconciler paces to"
    )
    venue_weight_limit_1m: int = Field(
        2400, ge=1, description="The venue's request weight per IP per minute (Binance: 2400)"
    )
    sweep_every_sec: float = Field(
        30.0,
        gt=0,
        description="Read every symbol's open orders at least this often (orders behind our back)",
    )
    repair_cooldown_sec: float = Field(
        10.0, ge=0, description="Minimum time between stop repairs of a symbol"
    )
    min_delta_ratio: float = Field(
        0.1, gt=0, le=1, description="Anti-churn: refresh an undersized stop above this shortfall"
    )
    max_refresh_interval_sec: float = Field(
        60.0, gt=0, description="Anti-churn: refresh small shortfalls after this long"
    )
    protection_gap_ttl_sec: float = Field(
        15.0, gt=0, description="Unprotected longer than this = critical breach"
    )
    default_stop_pct: float = Field(
        0.02, gt=0, lt=1, description="Repair stop distance from mark when no stop price is known"
    )
    stop_price_tolerance: float = Field(
        0.005,
        gt=0,
        lt=1,
        description="A stop protects a position only within this fraction of where its stop belongs (the "
        "last stop price asked for, else the default distance); one further away is replaced",
    )
    emergency_exit: bool = Field(
        True,
        description="Close a position at market (reduce-only, never halted) when its protection gap "
        "outlives the TTL and its stops keep being refused",
    )
    emergency_exit_after_refusals: int = Field(
        2,
        ge=1,
        description="Stop-losses refused by the venue (or given up by the router) during one gap before "
        "its emergency exit",
    )
    settle_sec: float = Field(2.0, ge=0, description="Quiet time after order activity before drift counts")
    not_found_grace_sec: float = Field(
        30.0,
        ge=0,
        description="An order we believe open that the venue says it does not know is looked up again "
        "for this long before it is forgotten as missing: a venue lists an order it took only after a lag",
    )
    summary_heartbeat_sec: float = Field(5.0, gt=0, description="reconcile.summary at least this often")
    stream_up_interval_sec: float = Field(
        10.0,
        gt=0,
        description="While the venue stream is up (fills and cancels are pushed), ticks are at least this far "
        "apart: REST is the backstop (the stream's every reconnect still triggers a tick at once)",
    )
    stream_up_sweep_sec: float = Field(
        60.0,
        gt=0,
        description="While the venue stream is trusted (up, proven, read in full since it connected), every "
        "symbol's open orders are read this often instead of RECONCILE_SWEEP_EVERY_SEC: the bound on what a "
        "stream that stalls unnoticed can hide. 60 s keeps a reconnect's extra full read inside 10% of the "
        "venue's weight with 50 positions",
    )
    stream_confirm_sec: float = Field(
        5.0,
        gt=0,
        description="With the venue stream up, an order the router placed must show up on it within this "
        "long; one that does not means the stream may be stalled: every symbol is read until it proves itself",
    )
    stream_status_stale_sec: float = Field(
        15.0,
        gt=0,
        description="A venue stream status older than this counts as down (the stream service is gone)",
    )
    equity_every_ticks: int = Field(5, ge=1, description="Read the balance (equity) every N ticks")
    recovery_hours: float = Field(24.0, gt=0, description="Journal window read at boot")


class VenueStreamSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="VENUE_STREAM_", extra="ignore", frozen=True)

    http_host: str = Field("127.0.0.1", description="REST bind address")
    http_port: int = Field(8105, ge=0, le=65535, description="REST port")
    keepalive_sec: float = Field(
        1800.0,
        gt=0,
        description="Send our own listenKey keepalive (PUT) this often (the venue expires a key after 60 min; "
        "ccxt sends only one)",
    )
    silence_sec: float = Field(
        120.0,
        gt=0,
        description="No stream event for this long: the stream may be stalled (pings still answered), so "
        "reconnect, and the reconciler re-reads the venue",
    )
    connect_timeout_sec: float = Field(10.0, gt=0, description="Give up on one connection attempt after this")
    backoff_base_sec: float = Field(0.5, gt=0, description="First reconnect delay; doubles per failure")
    backoff_max_sec: float = Field(30.0, gt=0, description="Reconnect delay ceiling")
    status_every_sec: float = Field(
        5.0, gt=0, description="Publish the stream's state (up / down) at least this often"
    )

    @model_validator(mode="after")
    def _backoff(self) -> VenueStreamSettings:
        if self.backoff_max_sec < self.backoff_base_sec:
            raise ValueError("VENUE_STREAM_BACKOFF_MAX_SEC must be >= VENUE_STREAM_BACKOFF_BASE_SEC")
        return self


class BootSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="BOOT_", extra="ignore", frozen=True)

    rebuild_on_start: bool = Field(True, description="Rebuild positions and orders from the venue at start")
    rebuild_freeze_on_orphans: bool = Field(
        False, description="Halt entries when orphan orders are found at start"
    )


class RiskSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="RISK_", extra="ignore", frozen=True)

    http_host: str = Field("127.0.0.1", description="REST bind address")
    http_port: int = Field(8103, ge=0, le=65535, description="REST port")
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for POST /halt and /resume (unset: disabled; empty or a published "
        "placeholder: refused)",
    )
    eval_interval_sec: float = Field(1.0, gt=0, description="Kill-switch evaluation period")
    max_notional_usdt: float = Field(10_000.0, ge=0, description="Normal-mode notional cap per entry")
    max_leverage: int = Field(10, ge=1, le=125, description="Normal-mode leverage cap")
    min_entry_conf: float = Field(0.5, ge=0, le=1, description="Normal-mode confidence floor")
    entry_cooldown_sec: float = Field(
        5.0, ge=0, description="Normal-mode cooldown between entries per symbol"
    )
    max_open_orders: int = Field(10, ge=0, description="Normal-mode open entry order cap")
    tighten_after: int = Field(2, ge=1, description="Evaluations above a threshold before tightening")
    recover_after: int = Field(5, ge=1, description="Clean evaluations before relaxing one step")
    router_lag_throttle_sec: float = Field(
        0.5,
        gt=0,
        description="Router entry lag (router.load) from which entries are throttled (defensive knobs: one "
        "entry order open at a time), after RISK_TIGHTEN_AFTER evaluations",
    )
    router_lag_block_sec: float = Field(
        2.0,
        gt=0,
        description="Router entry lag from which new entries are blocked (halted knobs) until it has stayed "
        "clear for RISK_RECOVER_AFTER evaluations per step back; keep it under ROUTER_INTENT_MAX_AGE_SEC",
    )
    router_backlog_throttle: int = Field(
        500,
        ge=1,
        description="Messages waiting for the router (server backlog + in memory) that throttle entries",
    )
    router_backlog_block: int = Field(
        2000, ge=1, description="Messages waiting for the router that block new entries"
    )
    router_load_stale_sec: float = Field(
        30.0,
        gt=0,
        description="A router that reported its load and then went silent this long is unknown: entries "
        "cautious (never blocked) until it reports again; not counted before its first report",
    )

    _admin_token = field_validator("admin_token")(_refuse_placeholder)

    @model_validator(mode="after")
    def _router_thresholds(self) -> RiskSettings:
        if self.router_lag_block_sec < self.router_lag_throttle_sec:
            raise ValueError("RISK_ROUTER_LAG_BLOCK_SEC must be >= RISK_ROUTER_LAG_THROTTLE_SEC")
        if self.router_backlog_block < self.router_backlog_throttle:
            raise ValueError("RISK_ROUTER_BACKLOG_BLOCK must be >= RISK_ROUTER_BACKLOG_THROTTLE")
        return self


class KillSettings(_Base):
    model_config = SettingsConfigDict(env_prefix="KILL_", extra="ignore", frozen=True)

    api_error_max: int = Field(
        20, ge=1, description="API errors (retries + rejections) in the window that trip"
    )
    api_error_window_sec: float = Field(60.0, gt=0, description="API error counting window")
    stale_data_sec: float = Field(30.0, gt=0, description="No reconcile data for this long trips")
    stream_down_sec: float = Field(
        60.0,
        gt=0,
        description="The venue stream down (or its status silent) this long trips as stale data; never "
        "when no stream service has reported",
    )
    max_drawdown_pct: float = Field(10.0, gt=0, description="Equity drawdown from peak that trips (latches)")
    reconcile_mismatch_streak_max: int = Field(6, ge=1, description="Mismatch streak that trips")
    reconcile_mismatch_halt_sec: float = Field(300.0, ge=0, description="Minimum halt after a mismatch storm")


def load(cls: type[T]) -> T:
    """Instantiate settings; on bad input exit with one readable line per problem."""
    try:
        return cls()
    except ValidationError as e:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            # a model-level check has no location: its message names the setting itself
            (f"{prefix}{'.'.join(str(p) for p in err['loc']).upper()}: " if err["loc"] else "") + err["msg"]
            for err in e.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def describe_settings(*classes: type[BaseSettings]) -> list[dict[str, str]]:
    """Every setting with its env name, default and description (for docs and /status)."""
    rows = []
    for cls in classes:
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            default = field.default
            if isinstance(default, SecretStr):
                default = "(secret)"
            rows.append(
                {
                    "env": f"{prefix}{name}".upper(),
                    "default": "" if default is None else str(default),
                    "description": field.description or "",
                }
            )
    return rows
