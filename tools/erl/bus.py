"""The CLI's side of the bus: a fail-fast connection and journal watches (direct gets + core NATS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.common.bus import connect_nats
from libs.common.config import NatsSettings
from libs.common.messages import BusMessage, DecodeError, decode
from libs.common.replay import JournalEntry, read_journal_batches
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
    only new ones with ``new_only``), queued in journal order.

    No consumer: operators may not create one on the journal (the nameless create subject could rewrite
    a service's durable, tools/nats_config.py). The history is read with direct gets, then the live
    messages from a core subscription opened before that read; a message in both is queued once. Live
    messages carry no stream sequence (``seq`` 0)."""

    def __init__(self, nc: NatsClient, settings: NatsSettings, subject: str) -> None:
        self.nc, self.settings, self.subject = nc, settings, subject
        self.queue: asyncio.Queue[JournalEntry] = asyncio.Queue()
        self.undecodable: list[str] = []
        self._sub: Subscription | None = None
        # live messages that arrived while the history was read; None once only the live part is left
        self._early: list[JournalEntry] | None = []

    async def start(self, *, new_only: bool = False, since: dt.datetime | None = None) -> Watch:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_live)
        seen: set[tuple[str, str]] = set()
        if not new_only:
            js, errors = self.nc.jetstream(), self.undecodable
            prefix, stream = self.settings.subject_prefix, self.settings.stream
            try:
                async for batch in read_journal_batches(
                    js, stream, prefix, [self.subject], since=since, errors=errors
                ):
                    for e in batch:
                        seen.add(_key(e))
                        self.queue.put_nowait(e)
            except Exception as err:
                raise Unreachable(
                    f"journal stream {stream!r} at {self.settings.url} not readable ({type(err).__name__}: {err}): "
                    "is the stack running?"
                ) from None
        early, self._early = self._early or [], None
        for e in early:
            if _key(e) not in seen:
                self.queue.put_nowait(e)
        return self

    async def _on_live(self, m: Msg) -> None:
        try:
            msg = decode(self.settings.subject_prefix, m.subject, m.data)
        except DecodeError as e:
            self.undecodable.append(f"{m.subject}: {e}")
            return
        entry = JournalEntry(0, m.subject, msg)
        if self._early is not None:
            self._early.append(entry)
        else:
            self.queue.put_nowait(entry)

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


def _key(e: JournalEntry) -> tuple[str, str]:
    return e.subject, e.msg.model_dump_json()
