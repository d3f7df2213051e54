"""Read-only view of the guard knobs in the JetStream KV bucket.

A KV watch gives fast propagation (a halt reaches every reader within
milliseconds); a periodic ``get`` proves the view is still live. If neither has
confirmed the knobs for ``stale_after_sec`` (bus down, watcher wedged) or the
stored value does not parse, ``current()`` returns None and callers must fail
safe: no new entries. Exits never consult this view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from libs.common.aio import wait_event
from libs.common.logs import RateLimitedLog, log_event
from libs.common.messages import GuardKnobs

log = logging.getLogger("erl.guard")

GUARD_KEY = "knobs"


class GuardView:
    def __init__(
        self,
        nc: NatsClient,
        bucket: str,
        *,
        require_knobs: bool,
        stale_after_sec: float = 5.0,
        poll_sec: float = 1.0,
        on_change: Callable[[GuardKnobs | None], None] | None = None,
    ) -> None:
        self.nc, self.bucket = nc, bucket
        self.require_knobs = require_knobs
        self.stale_after_sec, self.poll_sec = stale_after_sec, poll_sec
        self.on_change = on_change
        self._knobs: GuardKnobs | None = None
        self._revision = 0
        self._confirmed_at = float("-inf")
        self._error: str | None = "not loaded"
        self._limited = RateLimitedLog(log)
        self._changed = asyncio.Condition()

    # --- reading

    def current(self) -> GuardKnobs | None:
        """The knobs to apply now, or None when they cannot be trusted."""
        if self._error is not None:
            return None
        if time.monotonic() - self._confirmed_at > self.stale_after_sec or not self.nc.is_connected:
            return None
        return self._knobs

    @property
    def loaded(self) -> bool:
        """The bucket has answered at least once (with knobs, a deletion or 'no key')."""
        return self._confirmed_at > float("-inf")

    def status(self) -> dict:
        k = self.current()
        return {
            "live": k is not None,
            "error": self._error,
            "revision": self._revision,
            "age_sec": round(time.monotonic() - self._confirmed_at, 3) if self._confirmed_at > 0 else None,
            "knobs": k.model_dump() if k else None,
        }

    # --- updating from the bucket

    async def _apply(self, raw: bytes | None, revision: int, deleted: bool = False) -> None:
        self._confirmed_at = time.monotonic()
        if revision and revision == self._revision and self._error is None:
            return
        if raw is None or deleted:
            if self.require_knobs:
                self._error = "no knobs in the bucket"
                self._knobs = None
            else:
                self._error, self._knobs = None, GuardKnobs(reason="defaults: no knobs published")
        else:
            try:
                self._knobs = GuardKnobs.model_validate_json(raw)
                self._error = None
            except ValidationError as e:
                self._knobs = None
                self._error = f"unparsable knobs: {e.errors()[0]['msg']}"
                self._limited("guard.unparsable", logging.ERROR, error=self._error)
        self._revision = revision
        if self.on_change is not None:
            self.on_change(self._knobs)
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(
        self, predicate: Callable[[GuardKnobs | None], bool], within_sec: float = 5.0
    ) -> None:
        """Wait until ``predicate(current())`` holds (re-checked on every change)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.current())), within_sec)

    async def _get(self, kv: KeyValue) -> None:
        try:
            e = await kv.get(GUARD_KEY)
            await self._apply(e.value, e.revision or 0, e.operation in (KV_DEL, KV_PURGE))
        except nats.js.errors.KeyNotFoundError:
            await self._apply(None, 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch + poll until ``stop``; survives bus outages."""
        while not stop.is_set():
            watcher = None
            try:
                kv = await self.nc.jetstream().key_value(self.bucket)
                await self._get(kv)
                watcher = await kv.watch(GUARD_KEY)
                stopping = asyncio.ensure_future(stop.wait())
                while not stop.is_set():
                    update = asyncio.ensure_future(watcher.updates(timeout=self.poll_sec))
                    await asyncio.wait({update, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not update.done():
                        update.cancel()
                        break
                    try:
                        entry = update.result()
                    except nats.errors.TimeoutError:
                        await self._get(kv)  # liveness proof when nothing changes
                        continue
                    if entry is None:
                        continue
                    await self._apply(entry.value, entry.revision or 0, entry.operation in (KV_DEL, KV_PURGE))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._limited("guard.watch_failed", error=f"{type(e).__name__}: {e}")
                await wait_event(stop, self.poll_sec)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
        log_event(log, "guard.view_stopped")
