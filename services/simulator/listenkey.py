"""The account's user-data-stream listenKey, as Binance USD-M manages it. Pure: the clock is passed in.

- One key per account: POST returns the active key (and extends it) or creates one.
- A key lives ``validity_ms`` (Binance: 60 minutes) from its last POST or PUT.
- PUT extends the active key; with no active key (never created, expired, closed) it is -1125.
  Binance's USD-M PUT takes no parameter (ccxt sends none); a ``listenKey`` that is sent must be
  the active one, else -1125.
- DELETE closes the active key (its streams end); with none, -1125 (HARSHER: the docs do not say).
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

from services.simulator.engine import SimError

VALIDITY_MS = 60 * 60 * 1000
_ALPHABET = string.ascii_letters + string.digits


def unknown_key() -> SimError:
    return SimError(400, -1125, "This listenKey does not exist.")


@dataclass
class ListenKey:
    key: str
    expires_ms: int


class ListenKeys:
    """The single account's key: ``active(now)`` is None once it expired or was closed."""

    def __init__(self, validity_ms: int = VALIDITY_MS) -> None:
        self.validity_ms = validity_ms
        self.current: ListenKey | None = None

    def active(self, now_ms: int) -> ListenKey | None:
        c = self.current
        return c if c is not None and c.expires_ms > now_ms else None

    def create(self, now_ms: int) -> str:
        """POST: the active key, extended; or a new one."""
        c = self.active(now_ms)
        if c is None:
            c = self.current = ListenKey(
                "".join(secrets.choice(_ALPHABET) for _ in range(64)), now_ms + self.validity_ms
            )
        c.expires_ms = now_ms + self.validity_ms
        return c.key

    def keepalive(self, now_ms: int, key: str | None = None) -> str:
        """PUT: extend the active key (it must be ``key`` when one is given)."""
        c = self._named(now_ms, key)
        c.expires_ms = now_ms + self.validity_ms
        return c.key

    def close(self, now_ms: int, key: str | None = None) -> str:
        """DELETE: invalidate the active key; returns it (its streams must end)."""
        c = self._named(now_ms, key)
        self.current = None
        return c.key

    def expire(self) -> str | None:
        """Fault / sweep: the key is gone now; returns the key that was current, if any."""
        c, self.current = self.current, None
        return c.key if c is not None else None

    def due(self, now_ms: int) -> str | None:
        """The current key if its validity ran out (it is then dropped): the caller ends its streams."""
        c = self.current
        if c is not None and c.expires_ms <= now_ms:
            self.current = None
            return c.key
        return None

    def valid(self, now_ms: int, key: str) -> bool:
        c = self.active(now_ms)
        return c is not None and secrets.compare_digest(c.key, key)

    def _named(self, now_ms: int, key: str | None) -> ListenKey:
        c = self.active(now_ms)
        if c is None or (key is not None and not secrets.compare_digest(c.key, key)):
            raise unknown_key()
        return c
