"""Binance USD-M user data stream: the listenKey REST calls and the private WebSocket, fed by the engine.

The WebSocket listens on its own port (the venue's stream host, fstream.binance.com, is apart from
fapi.binance.com too) and serves, for the account's listenKey:
- ``/private/ws?listenKey=<key>``: what ccxt.pro 4.5.x builds from ``urls['api']['ws']['linear']``
  = ``ws://host:port/ws`` (docs/user-data-stream-notes.md);
- ``/private/ws/<key>`` (Binance's documented form) and ``/ws/<key>`` (the legacy one).
Every connection on the active key gets every event, in venue order (one queue per connection, filled
under one lock in the order the engine changed). aiohttp serves it: uvicorn has no WebSocket library
here, and aiohttp is already installed as ccxt's transport.

Venue behaviour, and where it is modelled harsher than documented (HARSHER):
- a connection with an unknown, expired or closed key is accepted and then stays silent: no event, no
  close (HARSHER; the docs only say no data flows without a valid key). A consumer learns it from
  its own silence or from the keepalive's -1125;
- when the key expires, each of its connections gets ``listenKeyExpired`` and is then closed;
- DELETE closes every connection on the key (no event first);
- pings are answered even while a stream is stalled (HARSHER: the socket looks alive, only the data stops).

Faults (``/_sim/faults``; ``count`` = connections or events affected, null = until cleared). A rule that
finds no open stream waits for the next connection:
- ``stream_drop``: the connection is cut (TCP abort, no close frame);
- ``stream_stall``: the connection stays open and sends nothing more for ``delay_ms`` (0 = for good);
  the events it would have sent are lost (HARSHER: a stalled stream does not replay);
- ``stream_delay``: each event is held ``delay_ms`` after it happened (order kept);
- ``listen_key_expire``: the key expires now (``listenKeyExpired``, close; PUT is then -1125).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import threading
import time
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from services.simulator.engine import AlgoOrder, Engine, Order
from services.simulator.faults import FaultBook
from services.simulator.listenkey import ListenKeys
from services.simulator.user_events import UserEvents, listen_key_expired

_CLOSE = object()  # queued after the last event a connection gets before the venue closes it
_FAULT_AT = ("WS", "/private/ws", None)  # how stream faults are matched in the fault book


class Connection:
    _ids = itertools.count(1)

    def __init__(self, key: str, live: bool, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.id = next(self._ids)
        self.key = key
        self.live = live  # on the active key; a silent connection never gets anything
        self.ws = ws
        self.request = request
        self.pending: deque[tuple[float, Any]] = deque()
        self.wake = asyncio.Event()
        self.stalled_until = 0.0  # time.monotonic(); math.inf = for good
        self.sent = 0
        self.dropped = 0

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "live": self.live,
            "stalled": self.stalled_until > time.monotonic(),
            "sent": self.sent,
            "dropped": self.dropped,
            "pending": len(self.pending),
        }


class UserStream:
    """The account's listenKey, its WebSocket consumers and the events the engine feeds them."""

    def __init__(self, engine: Engine, faults: FaultBook, validity_ms: int) -> None:
        self.engine = engine
        self.faults = faults
        self.keys = ListenKeys(validity_ms)
        self.events = UserEvents(engine)
        self.connections: dict[int, Connection] = {}
        self._lock = threading.Lock()  # the engine may change from a test thread too
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port: int | None = None
        engine.listener = self.on_change

    # ------------------------------------------------------------------ REST: /fapi/v1/listenKey

    def post(self) -> dict[str, Any]:
        return {"listenKey": self.keys.create(self.engine.now_ms())}

    def put(self, params: dict[str, str]) -> dict[str, Any]:
        return {"listenKey": self.keys.keepalive(self.engine.now_ms(), params.get("listenKey") or None)}

    def delete(self, params: dict[str, str]) -> dict[str, Any]:
        self._end(self.keys.close(self.engine.now_ms(), params.get("listenKey") or None), expired=False)
        return {}

    # ------------------------------------------------------------------ engine -> connections

    def on_change(self, kind: str, subject: Any, detail: dict[str, Any]) -> None:
        """The engine's listener: called under the engine lock, in the order things happened."""
        if kind == "account":
            self.events.note_realized(subject, detail.get("realized", 0.0))
        with self._lock:
            targets = [c for c in self.connections.values() if c.live]
            if not targets:
                return
            payload = self._payload(kind, subject, detail)
            now = time.monotonic()
            for c in targets:
                c.pending.append((now, payload))
        self._wake(targets)

    def _payload(self, kind: str, subject: Any, detail: dict[str, Any]) -> dict[str, Any]:
        if kind == "order":
            assert isinstance(subject, Order)
            return self.events.order_update(
                subject,
                detail["exec_type"],
                detail.get("last_qty", 0.0),
                detail.get("last_price", 0.0),
                detail.get("realized", 0.0),
            )
        if kind == "algo":
            assert isinstance(subject, AlgoOrder)
            return self.events.algo_update(subject, detail.get("reason", ""))
        return self.events.account_update(subject, detail.get("reason", "ORDER"))

    def _wake(self, conns: list[Connection]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for c in conns:
            loop.call_soon_threadsafe(c.wake.set)

    def _end(self, key: str | None, *, expired: bool) -> None:
        """The key is gone: its connections get ``listenKeyExpired`` (on expiry) and are closed."""
        if key is None:
            return
        now = time.monotonic()
        with self._lock:
            conns = [c for c in self.connections.values() if c.key == key and c.live]
            for c in conns:
                c.live = False
                if expired:
                    c.pending.append((now, listen_key_expired(key, self.engine.now_ms())))
                c.pending.append((now, _CLOSE))
        self._wake(conns)

    def expire_now(self) -> None:
        self._end(self.keys.expire(), expired=True)

    # ------------------------------------------------------------------ faults

    def apply_faults(self) -> None:
        """Stream faults that act at once (called when a rule is added): expire, drop, stall."""
        for _ in self.faults.take(("listen_key_expire",), *_FAULT_AT):
            self.expire_now()
        for c in list(self.connections.values()):
            self._connection_faults(c)

    def _connection_faults(self, c: Connection) -> None:
        if c.ws.closed:
            return
        if self.faults.take(("stream_drop",), *_FAULT_AT):
            self._abort(c)
            return
        for rule in self.faults.take(("stream_stall",), *_FAULT_AT):
            c.stalled_until = time.monotonic() + rule.delay_ms / 1000 if rule.delay_ms else math.inf

    @staticmethod
    def _abort(c: Connection) -> None:
        transport = c.request.transport
        if transport is not None:
            transport.abort()

    def _delay_sec(self) -> float:
        return sum(r.delay_ms for r in self.faults.take(("stream_delay",), *_FAULT_AT)) / 1000

    # ------------------------------------------------------------------ WebSocket server

    async def _serve(self, request: web.Request) -> web.WebSocketResponse:
        key = request.query.get("listenKey") or request.match_info.get("key", "")
        # autoping: pings are answered whatever the stream does (see the module doc)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._lock:
            c = Connection(key, self.keys.valid(self.engine.now_ms(), key), ws, request)
            self.connections[c.id] = c
        self._connection_faults(c)
        pump = asyncio.ensure_future(self._pump(c))
        try:
            async for msg in ws:  # the user data stream takes no requests; read to see pings and the close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            with self._lock:
                self.connections.pop(c.id, None)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return ws

    async def _pump(self, c: Connection) -> None:
        while not c.ws.closed:
            await c.wake.wait()
            c.wake.clear()
            while True:
                with self._lock:
                    if not c.pending:
                        break
                    at, payload = c.pending.popleft()
                if payload is _CLOSE:
                    await c.ws.close()
                    return
                if time.monotonic() < c.stalled_until:
                    c.dropped += 1
                    continue
                delay = self._delay_sec()
                if delay:
                    await asyncio.sleep(max(0.0, at + delay - time.monotonic()))
                if c.ws.closed:
                    return
                await c.ws.send_str(json.dumps(payload, separators=(",", ":")))
                c.sent += 1

    async def _sweep(self) -> None:
        """Expire the key when its validity runs out (checked at least every second)."""
        while True:
            c = self.keys.current
            wait = 1.0 if c is None else (c.expires_ms - self.engine.now_ms()) / 1000
            await asyncio.sleep(min(max(wait, 0.005), 1.0))
            self._end(self.keys.due(self.engine.now_ms()), expired=True)

    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_get("/private/ws", self._serve)
        app.router.add_get("/private/ws/{key}", self._serve)
        app.router.add_get("/ws/{key}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.connections.values()):
            with contextlib.suppress(Exception):
                await c.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        """/_sim/reset: no key, every stream closed, accumulated realized profit forgotten."""
        self.keys.current = None
        now = time.monotonic()
        with self._lock:
            conns = list(self.connections.values())
            for c in conns:
                c.live = False
                c.pending.append((now, _CLOSE))
        self._wake(conns)
        self.events.reset()

    def view(self) -> dict[str, Any]:
        now = self.engine.now_ms()
        c = self.keys.active(now)
        return {
            "port": self.port,
            "listenKey": c.key if c else None,
            "expires_in_ms": c.expires_ms - now if c else None,
            "connections": [x.view() for x in list(self.connections.values())],
        }
