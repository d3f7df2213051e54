"""The venue's user data stream (Binance USD-M, through ccxt.pro): order updates pushed, not polled.

One session = one fresh ccxt.pro client: it POSTs a listenKey (the venue returns the account's key,
extended), dials the private stream and yields order updates until the session ends. A fresh client per
session is how we drop ccxt's cached key and any futures it left rejected (docs/user-data-stream-notes.md):
ccxt keeps a dead key after ``listenKeyExpired`` and would reconnect with it to a silent stream.

What ccxt 4.5.90 does not do, done here:
- keepalive: ccxt sends one listenKey PUT and never reschedules it; we PUT every ``keepalive_sec``;
- key gone: -1125 ("This listenKey does not exist.") surfaces as ``AuthenticationError``; it means the
  key expired or was deleted (a new session gets a new one), not that the credentials are bad;
- ``listenKeyExpired``: ccxt drops the event silently; we watch the raw messages for it;
- a stalled stream (pings answered, events lost) is never detected by ccxt: no event for ``silence_sec``
  ends the session (an idle account then reconnects that often: one POST, weight 1);
- reconnects with bounded exponential backoff.

What ccxt does that we do not use: it parses every order event into its unified order cache and every
``ACCOUNT_UPDATE`` into its balance and position caches, for ``watch_*`` callers. Those events are read
raw here instead (libs/venue/stream_events.py) and never reach ccxt's handler; ccxt still opens the
session (listenKey POST, dial) and holds the connection (pings) for one ``watch_orders`` call, which
now only ends when the connection does.

The caller is told when a session opens (``on_up``: what happened meanwhile is only on the venue) and
ends (``on_down``), and gets every order update parsed into our types (``on_order``), in the order the
venue sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import ccxt

from libs.common.aio import wait_event
from libs.common.logs import log_event
from libs.venue.client import BinanceUSDMStreamClient
from libs.venue.stream_events import (
    ORDER_EVENTS,
    StreamOrderUpdate,
    StreamPositionUpdate,
    SymbolOf,
    order_update_from_event,
    position_updates_from_account_event,
)

log = logging.getLogger("erl.venue.stream")

KEY_GONE_CODE = "-1125"


class SessionEnded(Exception):
    """A session ended for a reason of ours (not an error raised by ccxt)."""


@dataclass(frozen=True, slots=True)
class StreamTiming:
    keepalive_sec: float = 1800.0
    silence_sec: float = 120.0
    connect_timeout_sec: float = 10.0
    backoff_base_sec: float = 0.5
    backoff_max_sec: float = 30.0

    def backoff(self, failures: int) -> float:
        """Delay before the next session after ``failures`` failed ones in a row (0: at once)."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_base_sec * 2 ** (failures - 1), self.backoff_max_sec)


def key_gone(e: BaseException) -> bool:
    """-1125: the listenKey expired or was deleted (ccxt raises AuthenticationError for it)."""
    return isinstance(e, ccxt.BaseError) and KEY_GONE_CODE in str(e)


def end_reason(e: BaseException) -> str:
    """Why a session ended, as a short word for logs, metrics and the status event."""
    if isinstance(e, SessionEnded):
        return str(e)
    if key_gone(e):
        return "listen_key_gone"
    if isinstance(e, ccxt.AuthenticationError):
        return "authentication_failed"
    if isinstance(e, ccxt.NetworkError):
        return "connection_lost"
    if isinstance(e, ccxt.BaseError):
        return f"venue_error:{type(e).__name__}"
    return f"internal_error:{type(e).__name__}"


OnOrder = Callable[[StreamOrderUpdate], Awaitable[None]]
OnPosition = Callable[[StreamPositionUpdate], Awaitable[None]]
OnMalformed = Callable[[dict[str, Any], str], None]


class UserStream:
    """Runs sessions until stopped. ``make_client`` builds a fresh ccxt.pro client per session."""

    def __init__(
        self,
        make_client: Callable[[], BinanceUSDMStreamClient],
        timing: StreamTiming,
        *,
        on_order: OnOrder,
        on_up: Callable[[], Awaitable[None]],
        on_down: Callable[[str], Awaitable[None]],
        on_malformed: OnMalformed,
        on_position: OnPosition | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.make_client = make_client
        self.timing = timing
        self.on_order, self.on_up, self.on_down, self.on_malformed = on_order, on_up, on_down, on_malformed
        self.on_position = on_position
        self.clock = clock
        self.up = False
        self.sessions = 0  # sessions that connected
        self.failures = 0  # failed sessions in a row
        self.last_message = 0.0  # clock() of the last raw message (any event)
        self.last_reason = ""
        self._markets: Any = None  # reused across sessions: one exchangeInfo per process
        # parsed updates on their way to ``on_order``: the message tap runs in ccxt's receive loop and
        # never waits for the caller
        self._updates: asyncio.Queue[StreamOrderUpdate | StreamPositionUpdate] = asyncio.Queue()
        self._lost = asyncio.Event()  # an update could not be handed over: end the session (a resume follows)

    async def run(self, stop: asyncio.Event) -> None:
        deliver = asyncio.ensure_future(self._deliver())
        try:
            await self._sessions(stop)
        finally:
            deliver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliver

    async def _deliver(self) -> None:
        while True:
            update = await self._updates.get()
            try:
                if isinstance(update, StreamPositionUpdate):
                    if self.on_position is not None:
                        await self.on_position(update)
                else:
                    await self.on_order(update)
            except Exception as e:
                log_event(
                    log,
                    "stream.update_lost",
                    logging.ERROR,
                    what=update.symbol
                    if isinstance(update, StreamPositionUpdate)
                    else update.order.client_order_id,
                    error=f"{type(e).__name__}: {e}"[:300],
                )
                self._lost.set()

    async def _sessions(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = self.clock()
            try:
                await self._session(stop)
                reason = "stopped"
            except Exception as e:
                reason = end_reason(e)
                level = (
                    logging.ERROR if reason.startswith(("internal", "authentication")) else logging.WARNING
                )
                log_event(log, "stream.ended", level, reason=reason, error=f"{type(e).__name__}: {e}"[:300])
            self.last_reason = reason
            was_up, self.up = self.up, False
            if stop.is_set():
                return
            if was_up and reason == "silent":
                self.failures = 0  # a recycle, not a failure: reconnect at once
            elif was_up and self.clock() - started >= self.timing.backoff_max_sec:
                self.failures = 1  # it held a while: start the backoff over
            else:
                self.failures += 1
            await self.on_down(reason)
            await wait_event(stop, self.timing.backoff(self.failures))

    async def _session(self, stop: asyncio.Event) -> None:
        ex = self.make_client()
        gone = asyncio.Event()  # listenKeyExpired seen
        opened = asyncio.Event()
        ex.connected_cb = lambda _url: opened.set()
        handle = ex.handle_message
        symbols: dict[str, str] = {}  # the venue's market id -> our symbol, once the markets are loaded

        def tap(client: Any, message: Any) -> Any:
            self.last_message = self.clock()
            event = message.get("e") if isinstance(message, dict) else None
            if event in ORDER_EVENTS:
                self._order(message, symbols.get)  # read here, and not again by ccxt
                return None
            if event == "ACCOUNT_UPDATE":
                self._positions(message, symbols.get)  # ccxt keeps it only for watch_balance/positions
                return None
            if event == "listenKeyExpired":
                gone.set()  # ccxt drops it without a trace
            return handle(client, message)

        ex.handle_message = tap  # before the first connection: the client captures the bound method
        watch: asyncio.Future | None = None
        try:
            if self._markets is not None:
                ex.set_markets(self._markets)
            else:
                await ex.load_markets()
                self._markets = ex.markets
            symbols.update((vid, str(ms[0]["symbol"])) for vid, ms in (ex.markets_by_id or {}).items() if ms)
            watch = asyncio.ensure_future(self._watch(ex))
            await self._until([opened], watch, stop, self.timing.connect_timeout_sec, "connect_timeout")
            if stop.is_set():
                return
            self.up = True
            self.sessions += 1
            self.last_message = self.clock()
            log_event(log, "stream.up", session=self.sessions)
            await self.on_up()
            await self._hold(ex, watch, gone, stop)
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(BaseException):
                    await watch
            with contextlib.suppress(Exception):
                await ex.close()

    def _order(self, message: dict[str, Any], symbol_of: SymbolOf) -> None:
        try:
            update = order_update_from_event(message, symbol_of)
        except (ValueError, TypeError, KeyError) as e:
            body = message.get("o")
            self.on_malformed(body if isinstance(body, dict) else message, str(e))
            return
        self._updates.put_nowait(update)

    def _positions(self, message: dict[str, Any], symbol_of: SymbolOf) -> None:
        """Position changes, read from the raw event: a position moved behind our back is known at once."""
        try:
            updates = position_updates_from_account_event(message, symbol_of)
        except (ValueError, TypeError) as e:
            self.on_malformed(message, str(e))
            return
        for u in updates:
            self._updates.put_nowait(u)

    async def _hold(
        self, ex: BinanceUSDMStreamClient, watch: asyncio.Future, gone: asyncio.Event, stop: asyncio.Event
    ) -> None:
        """Keep the session: keepalive PUTs, silence and expiry checks, until it ends (raises why)."""
        next_keepalive = self.clock() + self.timing.keepalive_sec
        while not stop.is_set():
            now = self.clock()
            silent_at = self.last_message + self.timing.silence_sec
            if now >= silent_at:
                raise SessionEnded("silent")
            if now >= next_keepalive:
                await ex.fapiPrivatePutListenKey()  # -1125 raises: the key is gone
                next_keepalive = now + self.timing.keepalive_sec
                continue
            await self._until([gone, self._lost], watch, stop, min(silent_at, next_keepalive) - now, None)
            if gone.is_set():
                raise SessionEnded("listen_key_expired")
            if self._lost.is_set():
                self._lost.clear()
                raise SessionEnded("update_lost")

    async def _until(
        self,
        events: list[asyncio.Event],
        watch: asyncio.Future,
        stop: asyncio.Event,
        within_sec: float,
        timeout_reason: str | None,
    ) -> None:
        """Wait for one of ``events`` or ``stop``; the watch ending raises its error; the timeout raises
        ``SessionEnded(timeout_reason)`` (None: just return)."""
        waits = [asyncio.ensure_future(e.wait()) for e in (*events, stop)]
        try:
            await asyncio.wait([watch, *waits], timeout=max(within_sec, 0.0), return_when="FIRST_COMPLETED")
        finally:
            for w in waits:
                w.cancel()
        if watch.done():
            watch.result()  # raises the session's error
            raise SessionEnded("watch_ended")
        if not any(e.is_set() for e in (*events, stop)) and timeout_reason is not None:
            raise SessionEnded(timeout_reason)

    async def _watch(self, ex: BinanceUSDMStreamClient) -> None:
        """Holds the session: ccxt.pro opens it for a watch call (listenKey POST, dial) and ends the call
        with the connection's error (closed, pings unanswered). The order events never reach ccxt (the
        tap reads them), so the call does not return otherwise; the loop only guards against one that
        does (its updates were delivered by the tap already)."""
        while True:
            await ex.watch_orders()

    def status(self) -> dict:
        return {
            "up": self.up,
            "sessions": self.sessions,
            "failures_in_a_row": self.failures,
            "last_end": self.last_reason,
            "silent_for_sec": round(self.clock() - self.last_message, 3) if self.last_message else None,
        }
