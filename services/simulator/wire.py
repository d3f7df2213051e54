"""Engine objects -> the exact Binance USD-M JSON shapes ccxt parses. Pure.

Numbers go out as strings where Binance sends strings; ``positionSide`` is
always present because ccxt uses it to recognise a contract order.
"""

from __future__ import annotations

from typing import Any

from services.simulator.engine import AlgoOrder, Engine, Market, Order

ORDER_TYPES = [
    "LIMIT",
    "MARKET",
    "STOP",
    "STOP_MARKET",
    "TAKE_PROFIT",
    "TAKE_PROFIT_MARKET",
    "TRAILING_STOP_MARKET",
]


def num(x: float, places: int = 8) -> str:
    s = f"{x:.{places}f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def market_info(m: Market) -> dict[str, Any]:
    return {
        "symbol": m.symbol,
        "pair": m.symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": m.base,
        "quoteAsset": m.quote,
        "marginAsset": m.quote,
        "pricePrecision": m.price_precision,
        "quantityPrecision": m.qty_precision,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": num(m.tick),
                "maxPrice": "4529764",
                "tickSize": num(m.tick),
            },
            {
                "filterType": "LOT_SIZE",
                "stepSize": num(m.step),
                "maxQty": "1000000",
                "minQty": num(m.min_qty),
            },
            {
                "filterType": "MARKET_LOT_SIZE",
                "stepSize": num(m.step),
                "maxQty": "1000000",
                "minQty": num(m.min_qty),
            },
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": num(m.min_notional)},
            {
                "filterType": "PERCENT_PRICE",
                "multiplierUp": "1.0500",
                "multiplierDown": "0.9500",
                "multiplierDecimal": "4",
            },
        ],
        "orderTypes": ORDER_TYPES,
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }


def exchange_info(engine: Engine) -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "serverTime": engine.now_ms(),
        "futuresType": "U_MARGINED",
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": [market_info(m) for m in engine.markets.values()],
    }


def order(o: Order) -> dict[str, Any]:
    return {
        "orderId": o.order_id,
        "symbol": o.symbol,
        "status": o.status,
        "clientOrderId": o.client_id,
        "price": num(o.price),
        "avgPrice": num(o.avg_price),
        "origQty": num(o.qty),
        "executedQty": num(o.executed),
        "cumQty": num(o.executed),
        "cumQuote": num(o.cum_quote),
        "timeInForce": o.time_in_force,
        "type": o.type,
        "reduceOnly": o.reduce_only,
        "closePosition": o.close_position,
        "side": o.side,
        "positionSide": "BOTH",
        "stopPrice": num(o.stop_price),
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": o.orig_type or o.type,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0,
        "time": o.time,
        "updateTime": o.update_time,
    }


def algo(a: AlgoOrder) -> dict[str, Any]:
    trailing = {"activatePrice": num(a.activate_price), "callbackRate": num(a.callback_rate)}
    return {
        **(trailing if a.is_trailing else {}),
        "algoId": a.algo_id,
        "clientAlgoId": a.client_id,
        "algoType": "CONDITIONAL",
        "orderType": a.order_type,
        "symbol": a.symbol,
        "side": a.side,
        "positionSide": "BOTH",
        "timeInForce": a.time_in_force,
        "quantity": num(a.qty),
        "algoStatus": a.status,
        "triggerPrice": num(a.trigger_price),
        "price": num(a.price),
        "icebergQuantity": None,
        "selfTradePreventionMode": "EXPIRE_MAKER",
        "workingType": a.working_type,
        "priceMatch": "NONE",
        "closePosition": a.close_position,
        "priceProtect": False,
        "reduceOnly": a.reduce_only,
        "actualOrderId": str(a.actual_order_id) if a.actual_order_id else "",
        "createTime": a.create_time,
        "updateTime": a.update_time,
        "triggerTime": a.trigger_time,
        "goodTillDate": 0,
    }


def algo_cancel(a: AlgoOrder) -> dict[str, Any]:
    """Binance answers an algo cancel with a bare ack, no status: callers must look up to know more."""
    return {"algoId": a.algo_id, "clientAlgoId": a.client_id, "code": "200", "msg": "success"}


def position_risk(engine: Engine, symbol: str) -> dict[str, Any]:
    p = engine.position(symbol)
    px = engine.prices[symbol]
    notional = p.qty * px
    lev = engine.lev(symbol)
    return {
        "symbol": symbol,
        "positionSide": "BOTH",
        "positionAmt": num(p.qty),
        "entryPrice": num(p.entry_price),
        "breakEvenPrice": num(p.entry_price),
        "markPrice": num(px),
        "unRealizedProfit": num(engine.unrealized(symbol)),
        "liquidationPrice": "0",
        "isolatedMargin": "0",
        "notional": num(notional),
        "marginAsset": "USDT",
        "isolatedWallet": "0",
        "initialMargin": num(abs(notional) / lev),
        "maintMargin": num(abs(notional) * 0.004),
        "positionInitialMargin": num(abs(notional) / lev),
        "openOrderInitialMargin": "0",
        "adl": 0,
        "bidNotional": "0",
        "askNotional": "0",
        "updateTime": p.update_time,
        "leverage": str(lev),
        "marginType": "cross",
    }


def account(engine: Engine) -> dict[str, Any]:
    unreal = sum(engine.unrealized(s) for s in engine.positions)
    used = engine.used_margin()
    equity = engine.wallet + unreal
    avail = equity - used
    now = engine.now_ms()
    return {
        "totalInitialMargin": num(used),
        "totalMaintMargin": num(used * 0.1),
        "totalWalletBalance": num(engine.wallet),
        "totalUnrealizedProfit": num(unreal),
        "totalMarginBalance": num(equity),
        "totalPositionInitialMargin": num(used),
        "totalOpenOrderInitialMargin": "0",
        "totalCrossWalletBalance": num(engine.wallet),
        "totalCrossUnPnl": num(unreal),
        "availableBalance": num(avail),
        "maxWithdrawAmount": num(max(avail, 0)),
        "assets": [
            {
                "asset": "USDT",
                "walletBalance": num(engine.wallet),
                "unrealizedProfit": num(unreal),
                "marginBalance": num(equity),
                "maintMargin": num(used * 0.1),
                "initialMargin": num(used),
                "positionInitialMargin": num(used),
                "openOrderInitialMargin": "0",
                "crossWalletBalance": num(engine.wallet),
                "crossUnPnl": num(unreal),
                "availableBalance": num(avail),
                "maxWithdrawAmount": num(max(avail, 0)),
                "updateTime": now,
            }
        ],
        "positions": [
            {
                "symbol": s,
                "positionSide": "BOTH",
                "positionAmt": num(p.qty),
                "unrealizedProfit": num(engine.unrealized(s)),
                "isolatedMargin": "0",
                "notional": num(p.qty * engine.prices[s]),
                "isolatedWallet": "0",
                "initialMargin": num(abs(p.qty) * engine.prices[s] / engine.lev(s)),
                "maintMargin": "0",
                "updateTime": p.update_time,
            }
            for s, p in engine.positions.items()
            if p.qty
        ],
    }


def balances(engine: Engine) -> list[dict[str, Any]]:
    acct = account(engine)
    a = acct["assets"][0]
    return [
        {
            "accountAlias": "sim",
            "asset": "USDT",
            "balance": a["walletBalance"],
            "crossWalletBalance": a["crossWalletBalance"],
            "crossUnPnl": a["crossUnPnl"],
            "availableBalance": a["availableBalance"],
            "maxWithdrawAmount": a["maxWithdrawAmount"],
            "marginAvailable": True,
            "updateTime": a["updateTime"],
        }
    ]


def premium_index(engine: Engine, symbol: str) -> dict[str, Any]:
    px = engine.prices[symbol]
    return {
        "symbol": symbol,
        "markPrice": num(px),
        "indexPrice": num(px),
        "estimatedSettlePrice": num(px),
        "lastFundingRate": "0.00010000",
        "interestRate": "0.00010000",
        "nextFundingTime": engine.now_ms() + 3_600_000,
        "time": engine.now_ms(),
    }


def ticker_price(engine: Engine, symbol: str) -> dict[str, Any]:
    return {"symbol": symbol, "price": num(engine.prices[symbol]), "time": engine.now_ms()}


def leverage_brackets(engine: Engine) -> list[dict[str, Any]]:
    return [
        {
            "symbol": s,
            "brackets": [
                {
                    "bracket": 1,
                    "initialLeverage": engine.max_leverage,
                    "notionalCap": 50_000_000,
                    "notionalFloor": 0,
                    "maintMarginRatio": 0.004,
                    "cum": 0.0,
                },
            ],
        }
        for s in engine.markets
    ]
