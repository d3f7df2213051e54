"""FastAPI app: Binance USD-M REST under /fapi, fault injection and test controls under /_sim.

The user data stream (listenKey REST here, its WebSocket on a port of its own) is userstream.py.

Every /fapi request goes through one dispatcher: log it, apply "before"
faults, charge Binance's request weight and order counts (429, then 418 bans:
see ratelimit.py), check the signature, run the handler against the engine,
apply "after" faults. Every answer carries X-MBX-USED-WEIGHT-1M, the answer to an order placement
the limiter admitted X-MBX-ORDER-COUNT-10S/1M too (as on Binance: order responses only). The control API is unauthenticated on purpose: it is a test
and operator tool and the simulator binds to loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.simulator import ratelimit, wire
from services.simulator.auth import check_api_key, check_signed_request
from services.simulator.config import SimulatorSettings
from services.simulator.engine import AlgoOrder, Engine, SimError
from services.simulator.faults import (
    ACCEPT_KINDS,
    CANCEL_KINDS,
    POSITION_KINDS,
    POST_KINDS,
    PRE_KINDS,
    FaultBook,
    FaultRule,
)
from services.simulator.health import add_health_routes
from services.simulator.persistence import StateFile
from services.simulator.userstream import UserStream

Params = dict[str, str]
Handler = Callable[[Engine, Params], Any]

PUBLIC = {
    "/fapi/v1/ping",
    "/fapi/v1/time",
    "/fapi/v1/exchangeInfo",
    "/fapi/v1/premiumIndex",
    "/fapi/v1/ticker/price",
    "/fapi/v2/ticker/price",
}
USER_STREAM = {"/fapi/v1/listenKey"}  # API key, no signature


def limits_from(settings: SimulatorSettings) -> ratelimit.Limits:
    return ratelimit.Limits(
        weight_limit_1m=settings.weight_limit_1m,
        orders_limit_10s=settings.orders_limit_10s,
        orders_limit_1m=settings.orders_limit_1m,
        ban_base_sec=settings.ban_base_sec,
        rate_limits=settings.rate_limits,
    )


def refusal_response(r: ratelimit.Refusal) -> Response:
    return JSONResponse(r.body(), status_code=r.status, headers={"Retry-After": str(r.retry_after_sec)})


def _f(p: Params, key: str) -> float | None:
    v = p.get(key)
    if v is None or v == "":
        return None
    try:
        return float(v)
    except ValueError:
        raise SimError(
            400,
            -1102,
            f"Illegal characters found in parameter '{key}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.",
        ) from None


def _i(p: Params, key: str) -> int | None:
    v = _f(p, key)
    return int(v) if v is not None else None


def _b(p: Params, key: str) -> bool:
    return str(p.get(key, "false")).lower() == "true"


def _need(p: Params, key: str) -> str:
    v = p.get(key)
    if not v:
        raise SimError(400, -1102, f"Mandatory parameter '{key}' was not sent, was empty/null, or malformed.")
    return v


# ----------------------------------------------------------------------------- Binance handlers


def h_ping(e: Engine, p: Params) -> Any:
    return {}


def h_time(e: Engine, p: Params) -> Any:
    return {"serverTime": e.now_ms()}


def h_exchange_info(e: Engine, p: Params) -> Any:
    return wire.exchange_info(e)


def h_premium_index(e: Engine, p: Params) -> Any:
    if p.get("symbol"):
        e.market(p["symbol"])
        return wire.premium_index(e, p["symbol"])
    return [wire.premium_index(e, s) for s in e.markets]


def h_ticker_price(e: Engine, p: Params) -> Any:
    if p.get("symbol"):
        e.market(p["symbol"])
        return wire.ticker_price(e, p["symbol"])
    return [wire.ticker_price(e, s) for s in e.markets]


def h_new_order(e: Engine, p: Params) -> Any:
    typ = _need(p, "type").upper()
    if typ not in ("MARKET", "LIMIT"):
        raise SimError(
            400,
            -4120,
            "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.",
        )
    o = e.place_order(
        symbol=_need(p, "symbol"),
        side=_need(p, "side"),
        type=typ,
        qty=_f(p, "quantity"),
        price=_f(p, "price"),
        client_id=p.get("newClientOrderId"),
        reduce_only=_b(p, "reduceOnly"),
        time_in_force=p.get("timeInForce", "GTC"),
    )
    return wire.order(o)


def h_get_order(e: Engine, p: Params) -> Any:
    return wire.order(e.get_order(_need(p, "symbol"), _i(p, "orderId"), p.get("origClientOrderId")))


def h_cancel_order(e: Engine, p: Params) -> Any:
    return wire.order(e.cancel_order(_need(p, "symbol"), _i(p, "orderId"), p.get("origClientOrderId")))


def h_open_orders(e: Engine, p: Params) -> Any:
    if p.get("symbol"):
        e.market(p["symbol"])
    return [wire.order(o) for o in e.open_orders(p.get("symbol") or None)]


def h_all_orders(e: Engine, p: Params) -> Any:
    sym = _need(p, "symbol")
    e.market(sym)
    return [wire.order(o) for o in e.all_orders(sym)]


def h_new_algo(e: Engine, p: Params) -> Any:
    if p.get("algoType", "CONDITIONAL") != "CONDITIONAL":
        raise SimError(400, -1116, "Invalid algoType.")
    a = e.place_algo(
        symbol=_need(p, "symbol"),
        side=_need(p, "side"),
        order_type=_need(p, "type"),
        qty=_f(p, "quantity"),
        price=_f(p, "price"),
        trigger_price=_f(p, "triggerPrice"),
        client_id=p.get("clientAlgoId"),
        reduce_only=_b(p, "reduceOnly"),
        close_position=_b(p, "closePosition"),
        time_in_force=p.get("timeInForce", "GTC"),
        working_type=p.get("workingType", "CONTRACT_PRICE"),
        callback_rate=_f(p, "callbackRate"),
        activate_price=_f(p, "activatePrice"),
    )
    return wire.algo(a)


def h_get_algo(e: Engine, p: Params) -> Any:
    return wire.algo(e.get_algo(p.get("symbol") or None, _i(p, "algoId"), p.get("clientAlgoId")))


def h_cancel_algo(e: Engine, p: Params) -> Any:
    return wire.algo_cancel(e.cancel_algo(p.get("symbol") or None, _i(p, "algoId"), p.get("clientAlgoId")))


def h_open_algos(e: Engine, p: Params) -> Any:
    if p.get("symbol"):
        e.market(p["symbol"])
    return [wire.algo(a) for a in e.open_algos(p.get("symbol") or None)]


def h_all_algos(e: Engine, p: Params) -> Any:
    return [wire.algo(a) for a in e.all_algos(p.get("symbol") or None)]


def h_leverage(e: Engine, p: Params) -> Any:
    sym = _need(p, "symbol")
    lev = e.set_leverage(sym, _i(p, "leverage") or 0)
    return {"leverage": lev, "maxNotionalValue": "50000000", "symbol": sym}


def h_position_risk(e: Engine, p: Params) -> Any:
    if p.get("symbol"):
        e.market(p["symbol"])
        return [wire.position_risk(e, p["symbol"])]
    # Binance v3 lists only symbols with a position or open orders
    return [wire.position_risk(e, s) for s, pos in e.positions.items() if pos.qty]


def h_account(e: Engine, p: Params) -> Any:
    return wire.account(e)


def h_balance(e: Engine, p: Params) -> Any:
    return wire.balances(e)


def h_leverage_bracket(e: Engine, p: Params) -> Any:
    return wire.leverage_brackets(e)


ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/fapi/v1/ping"): h_ping,
    ("GET", "/fapi/v1/time"): h_time,
    ("GET", "/fapi/v1/exchangeInfo"): h_exchange_info,
    ("GET", "/fapi/v1/premiumIndex"): h_premium_index,
    ("GET", "/fapi/v1/ticker/price"): h_ticker_price,
    ("GET", "/fapi/v2/ticker/price"): h_ticker_price,
    ("POST", "/fapi/v1/order"): h_new_order,
    ("GET", "/fapi/v1/order"): h_get_order,
    ("DELETE", "/fapi/v1/order"): h_cancel_order,
    ("GET", "/fapi/v1/openOrders"): h_open_orders,
    ("GET", "/fapi/v1/allOrders"): h_all_orders,
    ("POST", "/fapi/v1/algoOrder"): h_new_algo,
    ("GET", "/fapi/v1/algoOrder"): h_get_algo,
    ("DELETE", "/fapi/v1/algoOrder"): h_cancel_algo,
    ("GET", "/fapi/v1/openAlgoOrders"): h_open_algos,
    ("GET", "/fapi/v1/allAlgoOrders"): h_all_algos,
    ("POST", "/fapi/v1/leverage"): h_leverage,
    ("GET", "/fapi/v2/positionRisk"): h_position_risk,
    ("GET", "/fapi/v3/positionRisk"): h_position_risk,
    ("GET", "/fapi/v2/account"): h_account,
    ("GET", "/fapi/v3/account"): h_account,
    ("GET", "/fapi/v2/balance"): h_balance,
    ("GET", "/fapi/v3/balance"): h_balance,
    ("GET", "/fapi/v1/leverageBracket"): h_leverage_bracket,
}

CANCEL_ROUTES = {("DELETE", "/fapi/v1/order"), ("DELETE", "/fapi/v1/algoOrder")}
CREATE_ROUTES = {("POST", "/fapi/v1/order"), ("POST", "/fapi/v1/algoOrder")}
OVERLOADED = SimError(
    503, -1008, "Server is currently overloaded with other requests. Please try again in a few minutes."
)


async def _request_params(request: Request) -> tuple[str, Params]:
    """The signed payload (form body or query) and the request's parameters, the signature left out."""
    method, query = request.method, request.url.query
    payload = (await request.body()).decode() if method in ("POST", "PUT") else query
    params: Params = {k: v for k, v in parse_qsl(payload, keep_blank_values=True) if k != "signature"}
    if method in ("POST", "PUT") and query:
        params.update({k: v for k, v in parse_qsl(query) if k != "signature"})
    return payload, params


def _error_response(e: SimError) -> tuple[Response, int]:
    """Binance's JSON error body for ``e`` and its code."""
    return JSONResponse({"code": e.code, "msg": e.msg}, status_code=e.http_status), e.code


def _protective(p: Params) -> bool:
    """Reduce-only and close-position orders: the venue lets them through when it sheds load."""
    return _b(p, "reduceOnly") or _b(p, "closePosition")


# ----------------------------------------------------------------------------- control API bodies


class PriceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: str
    price: float = Field(gt=0, allow_inf_nan=False)


class OrderRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: str
    clientOrderId: str = Field(min_length=1)


class PositionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    symbol: str
    amount: float = Field(allow_inf_nan=False, description="signed: long > 0, short < 0")
    entryPrice: float | None = Field(None, gt=0)


class LimitsBody(BaseModel):
    """POST /_sim/limits: change the rate limits at runtime (omitted fields stay)."""

    model_config = ConfigDict(extra="forbid")
    weight_limit_1m: int | None = Field(None, ge=1)
    orders_limit_10s: int | None = Field(None, ge=1)
    orders_limit_1m: int | None = Field(None, ge=1)
    ban_base_sec: float | None = Field(None, gt=0, allow_inf_nan=False)
    rate_limits: bool | None = None


class Simulator:
    """The running simulator: engine + faults + rate limiter + request log."""

    def __init__(self, settings: SimulatorSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or Engine(
            settings.symbol_list(),
            start_balance=settings.start_balance,
            default_leverage=settings.default_leverage,
            max_leverage=settings.max_leverage,
            seed=settings.seed,
            half_spread_bps=settings.half_spread_bps,
            query_lag_ms=settings.query_lag_ms,
        )
        self.faults = FaultBook()
        self.engine.keep_protection = lambda symbol: bool(self.faults.take(POSITION_KINDS, "-", "-", symbol))
        self.requests: deque[dict] = deque(maxlen=settings.request_log_size)
        self.rate = ratelimit.RateLimiter(limits_from(settings), clock=lambda: self.engine.clock())
        self.stream = UserStream(self.engine, self.faults, int(settings.listen_key_validity_sec * 1000))
        self.started_at = time.time()
        # positions and orders survive a restart only with a state file (raises StateFileError if unusable)
        self.state_file = StateFile(settings.state_file) if settings.state_file else None
        if self.state_file is not None:
            self.state_file.load(self.engine)
        self.routes = {
            **ROUTES,
            ("GET", "/fapi/v1/exchangeInfo"): self._exchange_info,
            ("POST", "/fapi/v1/listenKey"): lambda e, p: self.stream.post(),
            ("PUT", "/fapi/v1/listenKey"): lambda e, p: self.stream.put(p),
            ("DELETE", "/fapi/v1/listenKey"): lambda e, p: self.stream.delete(p),
        }

    async def dispatch(self, request: Request) -> Response:
        method, path = request.method, request.url.path
        ip = request.client.host if request.client else "unknown"
        payload, params = await _request_params(request)
        entry = {
            "ts": time.time(),
            "method": method,
            "path": path,
            "params": params,
            "status": None,
            "code": None,
        }
        self.requests.append(entry)

        admitted_order = False  # order counts go only on the answer to a placement the limiter took

        def done(resp: Response, code: int | None = None) -> Response:
            entry["status"], entry["code"] = resp.status_code, code
            resp.headers.update(self.rate.headers(ip, order_counts=admitted_order))
            return resp

        symbol = params.get("symbol")
        injected = await self._faults_before(method, path, params, ip)
        if injected is not None:
            return done(*injected)
        # injected faults above answer in front of the limiter and are not charged
        refused = self.rate.admit(ip, method, path, params)
        if refused is not None:
            return done(refusal_response(refused), refused.code)
        admitted_order = ratelimit.places_order(method, path)
        handler = self.routes.get((method, path))
        if handler is None:
            return done(*_error_response(SimError(404, -5000, f"Path {path}, Method {method} is invalid")))
        try:
            if path in USER_STREAM:  # listenKey calls: the API key, no signature
                check_api_key(request.headers.get("X-MBX-APIKEY"), self.settings.api_key)
            elif path not in PUBLIC:
                self._check_signature(request, payload, params)
            if (method, path) in CANCEL_ROUTES:
                result = self._cancel_with_races(method, path, params, handler)
            else:
                result = handler(self.engine, params)
        except SimError as e:
            return done(*_error_response(e))
        if (method, path) in CREATE_ROUTES:
            for rule in self.faults.take(ACCEPT_KINDS, method, path, symbol):
                self.engine.hide(int(result.get("orderId") or result.get("algoId")), rule.delay_ms)
        lost = await self._faults_after(method, path, symbol)
        if lost is not None:
            return done(*_error_response(lost))
        return done(JSONResponse(result))

    async def _faults_before(
        self, method: str, path: str, params: Params, ip: str
    ) -> tuple[Response, int | None] | None:
        """The "before" faults matching this request: waits, or the answer that replaces the venue's."""
        pre = PRE_KINDS if not _protective(params) else tuple(k for k in PRE_KINDS if k != "overload")
        for rule in self.faults.take(pre, method, path, params.get("symbol")):
            if rule.kind == "latency":
                await asyncio.sleep(rule.delay_ms / 1000)
            # the rule's validator makes an http_error carry a status and a binance_error a code
            elif rule.kind == "http_error" and rule.status is not None:
                return self._injected_http_error(rule.status, ip)
            elif rule.kind == "binance_error" and rule.code is not None:
                return _error_response(SimError(400, rule.code, rule.msg or "Injected error."))
            elif rule.kind == "overload":
                return _error_response(OVERLOADED)
        return None

    async def _faults_after(self, method: str, path: str, symbol: str | None) -> SimError | None:
        """The "after" faults once the venue has acted: a slow answer, or an answer lost (-1007)."""
        for rule in self.faults.take(POST_KINDS, method, path, symbol):
            if rule.kind == "timeout_after_accept":
                await asyncio.sleep(rule.delay_ms / 1000)
            elif rule.kind == "unknown_after_accept":
                return SimError(
                    503,
                    -1007,
                    "Timeout waiting for response from backend server. "
                    "Send status unknown; execution status unknown.",
                )
        return None

    def _check_signature(self, request: Request, payload: str, params: Params) -> None:
        """Binance's signed-endpoint checks (key, signature, timestamp within recvWindow); raises SimError."""
        timestamp, recv_window = params.get("timestamp", ""), params.get("recvWindow", "")
        check_signed_request(
            api_key_header=request.headers.get("X-MBX-APIKEY"),
            payload=payload,
            timestamp_ms=int(timestamp) if timestamp.isdigit() else None,
            recv_window_ms=int(recv_window) if recv_window.isdigit() else None,
            now_ms=self.engine.now_ms(),
            api_key=self.settings.api_key,
            api_secret=self.settings.api_secret,
            default_recv_window_ms=self.settings.recv_window_ms,
        )

    def _cancel_with_races(self, method: str, path: str, params: Params, handler: Handler) -> Any:
        races = self.faults.take(CANCEL_KINDS, method, path, params.get("symbol"))
        if not races:
            return handler(self.engine, params)
        e = self.engine
        target = self._cancel_target(path, params)
        if races[0].kind == "fill_on_cancel":
            e.fill_then_report(target)
            raise SimError(400, -2011, "Unknown order sent.")
        # fill_after_cancel_ack: answer as if cancelled, while the venue records the fill
        with e.lock:
            if isinstance(target, AlgoOrder):
                answer = wire.algo_cancel(target)
            else:
                answer = {**wire.order(target), "status": "CANCELED"}
            e.fill_then_report(target)
        return answer

    def _cancel_target(self, path: str, params: Params) -> Any:
        e = self.engine
        if path.endswith("algoOrder"):
            a = e.get_algo(params.get("symbol") or None, _i(params, "algoId"), params.get("clientAlgoId"))
            if not a.open:
                raise SimError(400, -2011, "Unknown order sent.")
            return a
        o = e.get_order(_need(params, "symbol"), _i(params, "orderId"), params.get("origClientOrderId"))
        if not o.open:
            raise SimError(400, -2011, "Unknown order sent.")
        return o

    def _exchange_info(self, e: Engine, p: Params) -> Any:
        return {**wire.exchange_info(e), "rateLimits": self.rate.advertised()}

    def _injected_http_error(self, status: int, ip: str) -> tuple[Response, int | None]:
        """An http_error fault: 429/418 look like the venue's (body, Retry-After, a ban ending
        soon) but leave the limiter's counters and bans alone; other statuses are plain text."""
        if status in (429, 418):
            r = ratelimit.injected_refusal(status, ip, self.engine.clock(), self.rate.limits)
            return refusal_response(r), r.code
        return Response("Service Unavailable.", status_code=status, media_type="text/plain"), None

    def state(self, open_only: bool = False) -> dict:
        """The venue's whole state; ``open_only``: resting orders only (cheap enough to sample often)."""
        e = self.engine
        with e.lock:
            orders = [o for o in e.orders.values() if not open_only or o.open]
            algos = [a for a in e.algos.values() if not open_only or a.open]
            return {
                "ts_ms": e.now_ms(),
                "prices": dict(e.prices),
                "orders": [wire.order(o) for o in orders],
                "algo_orders": [wire.algo(a) for a in algos],
                "positions": [wire.position_risk(e, s) for s, p in e.positions.items() if p.qty],
                "account": wire.account(e),
                "leverage": dict(e.leverage),
                "default_leverage": e.default_leverage,
            }


def create_app(settings: SimulatorSettings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or SimulatorSettings()
    sim = Simulator(settings, engine)
    app = FastAPI(
        title="erl exchange simulator (Binance USD-M wire format)", lifespan=_price_walk(settings, sim)
    )
    app.state.sim = sim
    _add_fault_routes(app, sim)
    _add_control_routes(app, sim, settings)
    add_health_routes(app, sim)

    async def binance(request: Request) -> Response:
        return await sim.dispatch(request)

    # a plain route: the venue's wire is parsed by dispatch itself, and FastAPI's per-request dependency
    # and body machinery was a large share of the simulator's CPU per order (it stands in for the venue
    # in every benchmark of ours)
    app.add_route("/fapi/{rest:path}", binance, methods=["GET", "POST", "DELETE", "PUT"])

    @app.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse(
            "erl exchange simulator: Binance USD-M REST under /fapi, controls under /_sim\n"
        )

    return app


def _price_walk(
    settings: SimulatorSettings, sim: Simulator
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: a random price walk every ``tick_ms`` (none when 0)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if settings.tick_ms > 0:

            async def walk() -> None:
                while True:
                    await asyncio.sleep(settings.tick_ms / 1000)
                    sim.engine.random_walk()

            task = asyncio.ensure_future(walk())
        saver = asyncio.ensure_future(_save_every(sim, settings.state_save_sec)) if sim.state_file else None
        await sim.stream.start(settings.host, settings.ws_port)
        yield
        for t in (task, saver):
            if t is not None:
                t.cancel()
        if sim.state_file is not None:
            sim.state_file.save(sim.engine)  # shutdown: the last word
        await sim.stream.stop()

    return lifespan


async def _save_every(sim: Simulator, period_sec: float) -> None:
    """Write the venue state when it changed, every ``period_sec`` (a write failure is retried next time)."""
    assert sim.state_file is not None
    while True:
        await asyncio.sleep(period_sec)
        try:
            sim.state_file.save(sim.engine)
        except OSError as e:
            sim.state_file.last_error = f"{type(e).__name__}: {e}"


def _add_fault_routes(app: FastAPI, sim: Simulator) -> None:
    @app.post("/_sim/faults")
    async def add_fault(rule: FaultRule) -> dict:
        added = sim.faults.add(rule)
        sim.stream.apply_faults()  # stream faults act at once on the open streams
        return {"id": added.id}

    @app.get("/_sim/faults")
    async def list_faults() -> list[dict]:
        return [r.view() for r in sim.faults.rules]

    @app.delete("/_sim/faults")
    async def clear_faults() -> dict:
        sim.faults.clear()
        return {"cleared": True}

    @app.delete("/_sim/faults/{rule_id}")
    async def delete_fault(rule_id: int) -> dict:
        if not sim.faults.remove(rule_id):
            raise HTTPException(404, f"no fault rule {rule_id}")
        return {"deleted": rule_id}


def _control(fn: Callable[[], Any]) -> Any:
    """Run an operator action; the venue's refusal becomes a 400 (or its own 5xx)."""
    try:
        return fn()
    except SimError as e:
        raise HTTPException(400 if e.http_status < 500 else e.http_status, f"{e.code} {e.msg}") from None


def _add_control_routes(app: FastAPI, sim: Simulator, settings: SimulatorSettings) -> None:
    """Market, limits, venue state and operator actions (orders, positions), and the request log."""

    @app.post("/_sim/price")
    async def set_price(body: PriceBody) -> dict:
        touched = _control(lambda: sim.engine.set_price(body.symbol, body.price))
        return {"symbol": body.symbol, "price": sim.engine.prices[body.symbol], "touched": touched}

    @app.post("/_sim/reset")
    async def reset() -> dict:
        sim.engine.reset()
        sim.faults.clear()
        sim.stream.reset()
        sim.requests.clear()
        sim.rate.reset(limits_from(settings))
        return {"reset": True}

    @app.get("/_sim/limits")
    async def limits() -> dict:
        return sim.rate.view()

    @app.post("/_sim/limits")
    async def set_limits(body: LimitsBody) -> dict:
        sim.rate.set_limits(**body.model_dump(exclude_none=True))
        return sim.rate.view()

    @app.get("/_sim/state")
    async def state(open_only: bool = False) -> dict:
        return sim.state(open_only)

    @app.post("/_sim/orders/cancel")
    async def operator_cancel(body: OrderRef) -> dict:
        kind = _control(lambda: sim.engine.operator_cancel(body.symbol, body.clientOrderId))
        return {"canceled": body.clientOrderId, "kind": kind}

    @app.post("/_sim/orders/fill")
    async def operator_fill(body: OrderRef) -> dict:
        o = _control(lambda: sim.engine.operator_fill(body.symbol, body.clientOrderId))
        return wire.order(o) if o is not None else {"filled": body.clientOrderId}

    @app.post("/_sim/positions")
    async def set_position(body: PositionBody) -> dict:
        _control(lambda: sim.engine.set_position(body.symbol, body.amount, body.entryPrice))
        return wire.position_risk(sim.engine, body.symbol)

    @app.get("/_sim/stream")
    async def stream_state() -> dict:
        """The listenKey, its expiry and the open user-data-stream connections."""
        return sim.stream.view()

    @app.get("/_sim/requests")
    async def requests_log() -> list[dict]:
        return list(sim.requests)

    @app.delete("/_sim/requests")
    async def clear_requests() -> dict:
        sim.requests.clear()
        return {"cleared": True}
