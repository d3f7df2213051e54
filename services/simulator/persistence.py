"""The venue's state in a file (``SIM_STATE_FILE``), so a simulator restart keeps positions and orders.

A real venue does not forget an account when its front end restarts; without this file the simulator
does (every position, order and balance back to the start), and the services then see a venue that
changed behind their back. What is kept: positions, orders (open and closed: the router looks settled
ones up by client id), algo orders, wallet and realised PnL, leverage, marks, the id counter. What is
not: the user data stream's listenKey (clients reconnect), fault rules, rate-limit counters, fills.

Writes are atomic (a temporary file in the same directory, fsynced, then renamed over the old one):
a crash mid-write leaves the previous state, never half of one. An unreadable file or one naming a
symbol this simulator does not list stops the start with a message naming the file: starting empty
would silently forget positions, which is what the file is for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from services.simulator.engine import AlgoOrder, Engine, Order, Position

FORMAT = 1


class StateFileError(ValueError):
    """The state file cannot be used; the message names it."""


def snapshot(e: Engine) -> dict[str, Any]:
    """The engine's durable state as plain JSON-able data (under its lock)."""
    with e.lock:
        return {
            "format": FORMAT,
            "next_id": e._next_id,
            "wallet": e.wallet,
            "realized_pnl": e.realized_pnl,
            "prices": dict(e.prices),
            "leverage": dict(e.leverage),
            "positions": {s: dataclasses.asdict(p) for s, p in e.positions.items() if p.qty},
            "orders": [dataclasses.asdict(o) for o in e.orders.values()],
            "algos": [dataclasses.asdict(a) for a in e.algos.values()],
        }


def restore(e: Engine, doc: dict[str, Any], source: str = "state") -> None:
    """Put ``doc`` (from ``snapshot``) into the engine; raises StateFileError naming ``source``."""
    if doc.get("format") != FORMAT:
        raise StateFileError(f"{source}: unknown format {doc.get('format')!r} (this build writes {FORMAT})")
    try:
        positions = {s: Position(**p) for s, p in doc["positions"].items()}
        orders = [Order(**o) for o in doc["orders"]]
        algos = [AlgoOrder(**a) for a in doc["algos"]]
        named = set(positions) | {o.symbol for o in orders} | {a.symbol for a in algos}
        unknown = sorted(named - set(e.markets))
        if unknown:
            raise StateFileError(
                f"{source}: names symbols this simulator does not list (SIM_SYMBOLS): {', '.join(unknown)}"
            )
        with e.lock:
            e._next_id = max(int(doc["next_id"]), e._next_id)
            e.wallet = float(doc["wallet"])
            e.realized_pnl = float(doc["realized_pnl"])
            e.prices.update({s: float(p) for s, p in doc["prices"].items() if s in e.markets})
            e.leverage = {s: int(v) for s, v in doc["leverage"].items() if s in e.markets}
            e.positions = positions
            e.orders = {o.order_id: o for o in orders}
            e.algos = {a.algo_id: a for a in algos}
            e.reindex()
    except StateFileError:
        raise
    except (KeyError, TypeError, ValueError) as ex:
        raise StateFileError(f"{source}: not a simulator state ({type(ex).__name__}: {ex})") from None


class StateFile:
    """One state file: ``load`` at start, ``save`` when the state changed (and at shutdown)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.saves = 0
        self.last_saved_ms: int | None = None
        self.loaded: str = "not loaded"
        self.last_error: str | None = None
        self._last: str | None = None

    def load(self, e: Engine) -> bool:
        """Restore the engine from the file; False when there is none yet (a first start)."""
        if not self.path.exists():
            self.loaded = "no file yet: started empty"
            return False
        try:
            text = self.path.read_text()
            doc = json.loads(text)
        except (OSError, ValueError) as ex:
            raise StateFileError(f"SIM_STATE_FILE {self.path}: unreadable: {ex}") from None
        if not isinstance(doc, dict):
            raise StateFileError(f"SIM_STATE_FILE {self.path}: not a JSON object")
        restore(e, doc, f"SIM_STATE_FILE {self.path}")
        self._last = text
        self.loaded = (
            f"loaded {len(e.positions)} position(s), {sum(o.open for o in e.orders.values())} open "
            f"order(s), {sum(a.open for a in e.algos.values())} open algo order(s)"
        )
        return True

    def save(self, e: Engine) -> bool:
        """Write the state if it changed since the last write; True when written."""
        text = json.dumps(snapshot(e), separators=(",", ":"))
        if text == self._last:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._last = text
        self.last_error = None
        self.saves += 1
        self.last_saved_ms = e.now_ms()
        return True

    def view(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "loaded": self.loaded,
            "saves": self.saves,
            "last_saved_ms": self.last_saved_ms,
            "last_error": self.last_error,
        }
