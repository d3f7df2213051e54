"""Risk service: kill switch + belief controller -> the guard knobs in KV, plus the halt API.

Inputs arrive from the journal (reconcile summaries, retries, rejections,
venue IP bans, halt commands), and the router's load over core NATS (only the latest matters, and it
must not queue behind the order transitions this service also reads, least of all under load).
Every evaluation computes one knob set; when it differs from
the published one it is written to the KV bucket with compare-and-set and
journaled with its trace. Knobs only ever constrain entries. What the inputs mean (which summary
is evidence, what counts as an API error, which halt wins, what changed) is decided in
``services/risk/posture.py``; this shell folds inputs, persists, publishes, journals and serves REST.

What protects money survives a restart: kill-switch trips with their hold ends, the equity peak,
the operator halt and the ids of applied halt/resume commands live in the same bucket under
``risk.state`` (see ``services/risk/state.py``), written with CAS before the knobs that depend on
them and read back before the first knobs of a new process. If that state cannot be read, risk
publishes halted knobs (``state_unavailable``) until it can, or until an operator resumes over a
corrupt value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Annotated

import nats.js.errors
from fastapi import FastAPI, Header, HTTPException, Request
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from libs.common.aio import wait_event
from libs.common.bus import ConsumerLoop, ConsumerSpec, Delivery, stored_ts_ms
from libs.common.config import KillSettings, NatsSettings, RiskSettings
from libs.common.guard import GUARD_KEY
from libs.common.logs import RateLimitedLog, log_event
from libs.common.messages import (
    OPERATOR_REASON_MAX,
    BusMessage,
    DecodeError,
    GuardKnobs,
    HaltCommand,
    RebuildSummary,
    ReconcileSummary,
    RouterLoad,
    VenueStreamStatus,
    check_operator_reason,
    decode,
    encode,
    transition_filters,
)
from libs.common.service import Service
from libs.common.telemetry import (
    BELIEF_DEBT,
    GUARD_ALLOW_ENTRIES,
    GUARD_MAX_LEVERAGE,
    GUARD_MAX_NOTIONAL,
    GUARD_MIN_CONF,
    GUARD_MODE,
    KILL_SWITCH,
    KILL_TRIPS,
    MANUAL_HALT,
    ROUTER_LOAD_LEVEL,
    ROUTER_LOAD_MODE,
)
from services.risk.belief_controller import MODES, BeliefController
from services.risk.kill_switch import KillState, KillSwitch
from services.risk.posture import (
    API_ERROR_STATES,
    UNREADABLE_KNOBS,
    ApiErrorWindow,
    BeliefTrace,
    Evidence,
    OperatorHalt,
    SummaryUse,
    after_command,
    belief_trace,
    compose_knobs,
    fold_summary,
    is_api_error,
    kill_inputs,
    kill_switch_event,
    knobs_changed,
    previous_posture,
    stream_down_for,
    stricter,
    summary_use,
)
from services.risk.router_load import LoadShedder, load_reading, newer
from services.risk.state import (
    STATE_KEY,
    RiskState,
    active_from_holds,
    holds_from_active,
    merge,
    remember,
)


class StateNotPersisted(RuntimeError):
    """A command was applied but the state recording it is not in KV yet: do not ack its message."""


def new_command_id() -> str:
    return uuid.uuid4().hex


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the bus command's rule (non-blank, printable, bounded), and at least a word
    reason: Annotated[
        str,
        Field(min_length=3, max_length=OPERATOR_REASON_MAX, description="why: goes into the journal"),
        AfterValidator(check_operator_reason),
    ]


class RiskService(Service):
    name = "risk"

    def __init__(
        self, nats_settings: NatsSettings, settings: RiskSettings, kill: KillSettings | None = None
    ) -> None:
        self.settings = settings
        kill = kill or KillSettings()
        self.kill_cfg = kill
        self.kill = KillSwitch(kill, started_at=time.time())
        self.controller = BeliefController(settings)
        self.operator = OperatorHalt()
        self.api_errors = ApiErrorWindow(kill.api_error_window_sec)
        self.evidence = Evidence()
        self.stream_status: VenueStreamStatus | None = None  # the venue stream's last word, if it runs
        self.router_load: RouterLoad | None = None  # the router's last load report, if it runs
        self.shedder = LoadShedder(settings)
        self.orphans_at_boot = 0
        self.trace: BeliefTrace | None = None  # None until the first fresh summary
        self.kill_state = KillState(False, ())
        self.published: GuardKnobs | None = None
        self.kv_revision: int | None = None
        # the persisted risk state (KV key risk.state): revision for CAS, what was last written, and
        # why it is unavailable (None: known). Unknown or corrupt -> halted knobs, never open ones.
        self.state_revision: int | None = None
        self.state_known = False
        self.state_error: str | None = "not loaded yet"
        self._state_written: RiskState | None = None
        self.state_writes = 0
        self.applied_commands: list[str] = []  # ids (or stream sequences) of halt/resume applied
        self.command_counts: dict[str, int] = {"applied": 0, "duplicate": 0}
        self._command_lock = asyncio.Lock()
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self._published_cond = asyncio.Condition()
        super().__init__(nats_settings, settings.http_host, settings.http_port)
        self._limited = RateLimitedLog(self.log)

    # ------------------------------------------------------------------ start-up

    async def prepare(self) -> None:
        """Pick up where the previous process left off before publishing anything: the persisted risk
        state (trips, hold ends, equity peak, operator halt) and the last knobs (posture)."""
        await self._restore()
        try:
            await self.evaluate()
        except Exception as e:  # knobs not writable yet: the evaluation loop keeps trying, never a crash loop
            log_event(self.log, "risk.first_publish_failed", logging.ERROR, error=f"{type(e).__name__}: {e}")

    @property
    def last_summary(self) -> ReconcileSummary | None:
        return self.evidence.summary

    def readiness(self) -> tuple[bool, str]:
        ok, why = super().readiness()
        if ok and self.published is None:
            return False, "guard knobs not published yet"
        return ok, why

    async def _kv_bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.nats_settings.kv_bucket)
        return self._kv

    async def _restore(self) -> None:
        """Read the previous process's knobs and state; while they cannot be read the knobs say
        ``state_unavailable`` and the evaluation loop calls this again."""
        timeout = self.nats_settings.publish_timeout_sec
        try:
            kv = await asyncio.wait_for(self._kv_bucket(), timeout)
            if self.published is None:  # once we have published, the bucket holds our own knobs
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    self._restore_from_knobs(await asyncio.wait_for(kv.get(GUARD_KEY), timeout))
            state_entry = None
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                state_entry = await asyncio.wait_for(kv.get(STATE_KEY), timeout)
        except Exception as e:  # bus or bucket unavailable: fail safe and try again later
            self.state_error = f"unreadable: {type(e).__name__}: {e}"
            self._limited("risk.state_unreadable", logging.ERROR, error=self.state_error)
            return
        if state_entry is None:
            self.state_revision, state = None, None
        else:
            self.state_revision = state_entry.revision
            try:
                state = RiskState.model_validate_json(state_entry.value or b"")
            except Exception as e:  # a corrupt value: halted until an operator resumes over it
                self.state_known = True
                self.state_error = f"corrupt {STATE_KEY} (revision {state_entry.revision})"
                log_event(
                    self.log,
                    "risk.state_corrupt",
                    logging.CRITICAL,
                    revision=state_entry.revision,
                    error=f"{type(e).__name__}: {str(e)[:500]}",
                    value=(state_entry.value or b"")[:200].decode("utf-8", errors="replace"),
                )
                return
        self.state_known, self.state_error = True, None
        if state is not None:
            self._adopt(state)
            self._state_written = state.comparable()  # what is stored (memory may hold more: written next)
        log_event(
            self.log,
            "risk.state_restored",
            logging.WARNING if self.kill.active or self.operator.halted else logging.INFO,
            found=state is not None,
            revision=self.state_revision,
            holds={t.value: r for t, r in holds_from_active(self.kill.active).items()},
            peak_equity=self.kill.peak_equity,
            manual_halt=self.operator.halted,
        )

    def _restore_from_knobs(self, entry: KeyValue.Entry) -> None:
        """The last published knobs: the posture, and (should the state write have been lost) the
        operator halt and a latched drawdown they name."""
        try:
            prev = GuardKnobs.model_validate_json(entry.value or b"")
        except Exception as e:  # unreadable previous knobs: start strict, say so
            log_event(self.log, "risk.restore_failed", logging.ERROR, error=f"{type(e).__name__}: {e}")
            self.operator = UNREADABLE_KNOBS
            self.kv_revision = entry.revision
            return
        self.kv_revision = entry.revision
        previous = previous_posture(prev, time.time())
        self.operator = stricter(self.operator, previous.operator)
        if previous.controller_mode is not None:
            self.controller.mode = previous.controller_mode
        if previous.load_mode:
            self.shedder.restore(previous.load_mode)
        self.kill.restore(previous.holds, None)
        log_event(self.log, "risk.restored", manual_halt=self.operator.halted, mode=prev.controller_mode)

    def _adopt(self, state: RiskState) -> None:
        """Take ``state`` into this process, never loosening anything already held here."""
        self.kill.restore(active_from_holds(state.holds), state.peak_equity, state.trips)
        self.operator = stricter(self.operator, OperatorHalt(state.manual_halt, state.manual_reason))
        self.applied_commands = remember(self.applied_commands, *state.commands)
        MANUAL_HALT.set(1 if self.operator.halted else 0)

    def _state_now(self) -> RiskState:
        return RiskState(
            holds=holds_from_active(self.kill.active),
            peak_equity=self.kill.peak_equity,
            trips=dict(self.kill.trips),
            manual_halt=self.operator.halted,
            manual_reason=self.operator.reason,
            commands=list(self.applied_commands),
        )

    @property
    def state_persisted(self) -> bool:
        return self._state_written is not None and self._state_written == self._state_now().comparable()

    async def _persist_state(self) -> None:
        """Write the state if it changed (CAS); never raises, never waits longer than a publish timeout.

        Called before the knobs are published, so knobs never name a trip the state does not hold.
        Nothing is written while the stored state is unknown or corrupt (that would erase what it held).
        """
        if not self.state_known or self.state_error is not None:
            return
        state = self._state_now().comparable()
        if state == self._state_written:
            return
        timeout = self.nats_settings.publish_timeout_sec
        try:
            kv = await asyncio.wait_for(self._kv_bucket(), timeout)
            for _ in range(3):
                data = encode_state(state.stamped())
                try:
                    if self.state_revision is None:
                        rev = await asyncio.wait_for(kv.create(STATE_KEY, data), timeout)
                    else:
                        rev = await asyncio.wait_for(
                            kv.update(STATE_KEY, data, last=self.state_revision), timeout
                        )
                except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                    await self._merge_foreign_state(kv, timeout)
                    state = self._state_now().comparable()
                    continue
                self.state_revision, self._state_written = rev, state
                self.state_writes += 1
                return
            raise RuntimeError(f"{STATE_KEY} CAS kept failing")
        except Exception as e:  # retried at the next evaluation; commands are not acked meanwhile
            self._limited("risk.state_persist_failed", logging.ERROR, error=f"{type(e).__name__}: {e}")

    async def _merge_foreign_state(self, kv: KeyValue, within_sec: float) -> None:
        """Someone else wrote the state: take theirs into ours (the stricter of both) and go on."""
        try:
            entry = await asyncio.wait_for(kv.get(STATE_KEY), within_sec)
        except nats.js.errors.KeyNotFoundError:
            self.state_revision = None  # deleted meanwhile: create it again
            return
        self.state_revision = entry.revision
        try:
            theirs = RiskState.model_validate_json(entry.value or b"")
        except Exception as e:  # we hold the state in memory: overwrite the garbage with it
            log_event(
                self.log, "risk.state_corrupt", logging.ERROR, revision=entry.revision, error=str(e)[:500]
            )
            return
        log_event(self.log, "risk.state_conflict", logging.WARNING, revision=entry.revision)
        self._adopt(merge(self._state_now(), theirs))

    async def run_tasks(self) -> list[Awaitable[None]]:
        p = self.nats_settings.subject_prefix
        spec = ConsumerSpec(
            durable="risk",
            filter_subjects=[
                f"{p}.reconcile.summary.>",
                f"{p}.reconcile.rebuild.>",
                f"{p}.risk.command.>",
                f"{p}.order.retry.>",
                *transition_filters(p, API_ERROR_STATES),
                f"{p}.venue.ban.>",
                f"{p}.venue.stream.>",
            ],
            max_deliver=3,
            max_ack_pending=1024,
        )
        self.consumer = ConsumerLoop(
            self.js,
            self.publisher,
            self.nats_settings.stream,
            spec,
            self.on_event,
            service=self.name,
            before_ack=self.journal.flush,
        )
        await self.bus.nc.subscribe(f"{p}.router.load.>", cb=self._on_router_load)
        return [self.consumer.run(self.stop_event), self._eval_loop()]

    # ------------------------------------------------------------------ inputs

    async def on_event(self, msg: BusMessage, delivery: Delivery) -> None:
        if isinstance(msg, ReconcileSummary):
            use = summary_use(msg, time.time(), self.kill_cfg.stale_data_sec)
            if use is SummaryUse.IGNORE:
                return
            if use is SummaryUse.FRESH:
                self.evidence = fold_summary(self.evidence, msg, self.orphans_at_boot)
                self.trace = belief_trace(self.controller.step(self.evidence.debt_inputs), self.trace)
                BELIEF_DEBT.set(self.trace.debt)
            await self.evaluate()
        elif isinstance(msg, VenueStreamStatus):
            if self.stream_status is None or msg.ts_ms >= self.stream_status.ts_ms:
                self.stream_status = msg
        elif isinstance(msg, RebuildSummary):
            self.orphans_at_boot = len(msg.orphans)
        elif isinstance(msg, HaltCommand):
            # the bus copy of a REST command carries the id it was applied under: applied once
            await self._apply_command(msg, msg.command_id or f"seq{delivery.stream_seq}", journal=False)
        elif is_api_error(msg):
            self.api_errors.add(msg.ts_ms / 1000)

    async def _on_router_load(self, m: Msg) -> None:
        try:
            msg = decode(self.nats_settings.subject_prefix, m.subject, m.data, stored_ts_ms(m))
        except DecodeError as e:
            self._limited("risk.router_load_unreadable", logging.WARNING, error=str(e))
            return
        if isinstance(msg, RouterLoad):
            self.router_load = newer(self.router_load, msg)

    def step_load(self, now: float) -> None:
        """One evaluation of the router-load controller (the evaluation loop's period is its cadence)."""
        reading = load_reading(self.router_load, now, self.settings)
        if self.shedder.step(reading):
            log_event(
                self.log,
                "risk.router_load",
                logging.WARNING,
                mode=MODES[self.shedder.mode],
                reason=self.shedder.reason,
            )
        ROUTER_LOAD_LEVEL.set(int(reading.level))
        ROUTER_LOAD_MODE.set(self.shedder.mode)

    async def command(self, action: str, reason: str, source: str, *, journal: bool) -> GuardKnobs:
        """A new command (REST API): applied here under a fresh id and, with ``journal``, journaled
        with it, so its copy coming back from the bus is recognised and not applied again."""
        cmd = HaltCommand(action=action, reason=reason, source=source, command_id=new_command_id())  # type: ignore[arg-type]
        assert cmd.command_id is not None
        return await self._apply_command(cmd, cmd.command_id, journal=journal)

    async def _apply_command(self, cmd: HaltCommand, key: str, *, journal: bool) -> GuardKnobs:
        """Apply a halt/resume exactly once per ``key``; the key is persisted with its effect.

        One command at a time: the bus copy of a REST command waits here until the REST call has
        applied and persisted it, then is acknowledged as a duplicate.
        """
        async with self._command_lock:
            if key in self.applied_commands:
                self.command_counts["duplicate"] += 1
                log_event(self.log, "risk.command_duplicate", logging.DEBUG, command_id=key)
                knobs = await self.evaluate()
            else:
                if journal:  # REST commands are journaled here (emit only enqueues); bus commands already are
                    await self.journal.emit(cmd)
                self.applied_commands = remember(self.applied_commands, key)
                self.command_counts["applied"] += 1
                self.operator = after_command(cmd)
                if cmd.action == "halt":
                    log_event(self.log, "risk.halted", source=cmd.source, reason=cmd.reason, command_id=key)
                else:
                    s = self.evidence.summary
                    cleared = self.kill.reset_latched(s.equity if s else None)
                    if self.state_known and self.state_error is not None:
                        # an operator resumes over a corrupt stored state: ours replaces it from now on
                        cleared.append("state_unavailable")
                        self.state_error = None
                    log_event(
                        self.log,
                        "risk.resumed",
                        source=cmd.source,
                        reason=cmd.reason,
                        cleared=cleared,
                        command_id=key,
                    )
                MANUAL_HALT.set(1 if self.operator.halted else 0)
                knobs = await self.evaluate()
            if self.state_known and self.state_error is None and not self.state_persisted:
                raise StateNotPersisted(f"{STATE_KEY} not written: command {key} applied in memory only")
            return knobs

    # ------------------------------------------------------------------ evaluation

    async def _eval_loop(self) -> None:
        while not self.stop_event.is_set():
            await wait_event(self.stop_event, self.settings.eval_interval_sec)
            try:
                if not self.state_known:
                    await self._restore()
                self.step_load(time.time())
                await self.evaluate()
            except Exception as e:
                log_event(self.log, "risk.evaluate_failed", logging.ERROR, error=f"{type(e).__name__}: {e}")

    async def evaluate(self) -> GuardKnobs:
        async with self._lock:
            now = time.time()
            down = stream_down_for(self.stream_status, now, self.kill_cfg.stale_data_sec)
            x = kill_inputs(now, self.evidence, self.api_errors.count(now), down)
            self.kill_state = ks = self.kill.evaluate(x)
            KILL_SWITCH.set(1 if ks.tripped else 0)
            event = kill_switch_event(ks, x)
            if event is not None:
                for r in ks.newly_tripped:
                    KILL_TRIPS.labels(r).inc()
                await self.journal.emit(event)
                log_event(
                    self.log,
                    "risk.kill_switch",
                    logging.WARNING,
                    tripped=ks.tripped,
                    reasons=list(ks.reasons),
                    newly=list(ks.newly_tripped),
                    released=list(ks.released),
                )
            await self._persist_state()  # before the knobs: what they say is what a restart restores
            await self._publish(self.compose())
            assert self.published is not None
            return self.published

    def compose(self) -> GuardKnobs:
        return compose_knobs(
            self.settings,
            controller_mode=self.controller.mode,
            trace=self.trace,
            debt_inputs=self.evidence.debt_inputs,
            kill=self.kill_state,
            operator=self.operator,
            state_error=self.state_error,
            load_mode=self.shedder.mode,
            load_reason=self.shedder.reason,
            load_level=int(self.shedder.reading.level),
        )

    async def _publish(self, knobs: GuardKnobs) -> None:
        if not knobs_changed(self.published, knobs):
            return
        kv = await self._kv_bucket()
        for _ in range(5):
            revision = (self.kv_revision or 0) + 1
            knobs = knobs.model_copy(update={"revision": revision, "ts_ms": int(time.time() * 1000)})
            try:
                if self.kv_revision is None:
                    self.kv_revision = await kv.create(GUARD_KEY, encode(knobs))
                else:
                    self.kv_revision = await kv.update(GUARD_KEY, encode(knobs), last=self.kv_revision)
                break
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                # someone else wrote (a second risk instance, an operator tool): re-read and retry
                entry = await kv.get(GUARD_KEY)
                self.kv_revision = entry.revision
        else:
            raise RuntimeError("guard knobs CAS kept failing")
        self.published = knobs
        await self.journal.emit(knobs)
        self._metrics(knobs)
        log_event(
            self.log,
            "risk.knobs",
            logging.WARNING if not knobs.allow_entries else logging.INFO,
            mode=knobs.mode,
            allow_entries=knobs.allow_entries,
            reason=knobs.reason,
            revision=knobs.revision,
        )
        async with self._published_cond:
            self._published_cond.notify_all()

    def _metrics(self, k: GuardKnobs) -> None:
        GUARD_ALLOW_ENTRIES.set(1 if k.allow_entries else 0)
        GUARD_MAX_NOTIONAL.set(k.max_notional_usdt)
        GUARD_MAX_LEVERAGE.set(k.max_leverage)
        GUARD_MIN_CONF.set(k.min_entry_conf)
        for m in MODES:
            GUARD_MODE.labels(m).set(1 if m == k.mode else 0)

    async def wait_published(self, predicate, within_sec: float = 15.0) -> GuardKnobs:
        """Tests: wait until the published knobs satisfy ``predicate``."""
        async with asyncio.timeout(within_sec), self._published_cond:
            await self._published_cond.wait_for(
                lambda: self.published is not None and predicate(self.published)
            )
        assert self.published is not None
        return self.published

    # ------------------------------------------------------------------ REST

    def _authorize(self, authorization: str | None) -> None:
        token = self.settings.admin_token
        if token is None:
            raise HTTPException(503, "halt API disabled: set RISK_ADMIN_TOKEN")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise HTTPException(401, "bad or missing bearer token", headers={"WWW-Authenticate": "Bearer"})

    def status(self) -> dict:
        return {
            "knobs": self.published.model_dump(mode="json") if self.published else None,
            "kill_switch": {
                "tripped": self.kill_state.tripped,
                "reasons": list(self.kill_state.reasons),
                "trips": dict(self.kill.trips),
                "drawdown_pct": self.kill_state.drawdown_pct,
            },
            "manual_halt": self.operator.halted,
            "state": {
                "key": STATE_KEY,
                "revision": self.state_revision,
                "error": self.state_error,
                "persisted": self.state_persisted,
                "writes": self.state_writes,
                "holds": {t.value: r for t, r in holds_from_active(self.kill.active).items()},
                "peak_equity": self.kill.peak_equity,
            },
            "commands": dict(self.command_counts),
            "controller": {
                "mode": MODES[self.controller.mode],
                **(self.trace.as_dict() if self.trace else {}),
            },
            "data_age_sec": round(time.time() - self.evidence.data_at, 3) if self.evidence.data_at else None,
            "router_load": {
                "mode": MODES[self.shedder.mode],
                "level": self.shedder.reading.level.name.lower(),
                "detail": self.shedder.reading.detail,
                "reason": self.shedder.reason,
                "report": self.router_load.model_dump(mode="json") if self.router_load else None,
            },
        }

    def add_routes(self, app: FastAPI) -> None:
        @app.get("/guard")
        async def guard() -> dict:
            return self.status()

        async def command_from(request: Request, action: str, authorization: str | None) -> dict:
            self._authorize(authorization)  # before looking at the body: strangers learn nothing
            try:
                body = ReasonBody.model_validate_json(await request.body() or b"{}")
            except ValidationError as e:
                raise HTTPException(422, [{"loc": x["loc"], "msg": x["msg"]} for x in e.errors()]) from None
            try:
                k = await self.command(action, body.reason, "api", journal=True)
            except StateNotPersisted as e:
                raise HTTPException(
                    503, f"applied and published, but it may not survive a restart: {e}; retry"
                ) from None
            return k.model_dump(mode="json")

        @app.post("/halt")
        async def halt(request: Request, authorization: str | None = Header(None)) -> dict:
            """Halt new entries (exits and stop repairs keep flowing). Body: {"reason": "..."}."""
            return await command_from(request, "halt", authorization)

        @app.post("/resume")
        async def resume(request: Request, authorization: str | None = Header(None)) -> dict:
            """Lift an operator halt and clear latched kill-switch triggers. Body: {"reason": "..."}."""
            return await command_from(request, "resume", authorization)


def encode_state(state: RiskState) -> bytes:
    return state.model_dump_json().encode()
