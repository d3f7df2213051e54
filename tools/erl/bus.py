"""The CLI's side of the bus: a fail-fast connection and journal watches (ordered consumers)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from libs.common.bus import connect_nats, stored_ts_ms
from libs.common.config import NatsSettings
from libs.common.messages import BusMessage, DecodeError, decode
from libs.common.replay import JournalEntry
from tools.erl.endpoints import Unreachable

CONNECT_DEADLINE_SEC = 5.0


@contextlib.asynccontextmanager
async def connected(settings: NatsSettings) -> AsyncIterator[NatsClient]:
    """A bus connection that fails within seconds (Unreachable), never a reconnect loop."""
    try:
        async with asyncio.timeout(CONNECT_DEADLINE_SEC):
            nc = await connect_nats(settings, "erl-cli", fail_fast=True)
    except Exception as e:  # nats-py raises a zoo here (NoServersError, OSError, timeouts, auth errors)
        raise Unreachable(f"NATS at {settings.url}: {type(e).__name__}: {e}") from None
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


class Watch:
    """Journal messages on one subject filter, from the start of the journal (``since``: from then, or
    only new ones with ``new_only``), queued in stream order."""

    def __init__(self, nc: NatsClient, settings: NatsSettings, subject: str) -> None:
        self.nc, self.settings, self.subject = nc, settings, subject
        self.queue: asyncio.Queue[JournalEntry] = asyncio.Queue()
        self.undecodable: list[str] = []
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self, *, new_only: bool = False, since: dt.datetime | None = None) -> Watch:
        js = self.nc.jetstream()
        kwargs: dict = {"deliver_policy": DeliverPolicy.NEW if new_only else DeliverPolicy.ALL}
        if since is not None:
            kwargs = {
                "deliver_policy": DeliverPolicy.BY_START_TIME,
                "config": ConsumerConfig(opt_start_time=since),
            }
        try:
            self._sub = await js.subscribe(
                self.subject, stream=self.settings.stream, ordered_consumer=True, cb=self._on_msg, **kwargs
            )
        except nats.js.errors.NotFoundError:
            raise Unreachable(
                f"journal stream {self.settings.stream!r} not found at {self.settings.url}: is the stack running?"
            ) from None
        return self

    async def _on_msg(self, m: Msg) -> None:
        meta = m.metadata
        try:
            msg = decode(self.settings.subject_prefix, m.subject, m.data, stored_ts_ms(m))
        except DecodeError as e:
            self.undecodable.append(f"seq {meta.sequence.stream}: {e}")
            return
        self.queue.put_nowait(JournalEntry(meta.sequence.stream, m.subject, msg))

    async def next(self, within_sec: float) -> BusMessage | None:
        e = await self.next_entry(within_sec)
        return e.msg if e is not None else None

    async def next_entry(self, within_sec: float) -> JournalEntry | None:
        if within_sec <= 0 and self.queue.empty():
            return None
        try:
            async with asyncio.timeout(max(within_sec, 0.001)):
                return await self.queue.get()
        except TimeoutError:
            return None

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
