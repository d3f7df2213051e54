"""The throughput bench's signals: round robin over symbols, each fill flipping its symbol's position.

Pure (no I/O). The venue allows one close-position stop per side per symbol, and every stage-1
stop is one; the venue expires a close-position stop when its position flips. So each signal is
sized to flip the position the symbol will have once every signal before it has filled: long
``p`` -> sell ``p + q`` (short ``q``), short -> buy, flat -> buy ``q``. Each fill then opens a
fresh position whose stop is a fresh placement. A signal that does not fill (refused by the entry
service or the router, or failed) is taken out of the expected position as soon as that is known,
so one refusal costs at most the stops of the signals already sent on its symbol, never the rest
of the run.
"""

from __future__ import annotations

import uuid

from libs.common.messages import Side, Signal


class SignalMix:
    def __init__(self, base_qty: dict[str, float]) -> None:
        if not base_qty:
            raise ValueError("SignalMix needs at least one symbol")
        self.base_qty = base_qty
        self.symbols = list(base_qty)
        self.expected: dict[str, float] = dict.fromkeys(self.symbols, 0.0)  # signed, once all fill
        self.pending: dict[str, tuple[str, float]] = {}  # signal id -> (symbol, signed qty)
        self.i = 0

    def next(self) -> Signal:
        symbol = self.symbols[self.i % len(self.symbols)]
        self.i += 1
        pos, q = self.expected[symbol], self.base_qty[symbol]
        side: Side = "sell" if pos > 0 else "buy"
        qty = round(abs(pos) + q, 8)
        signed = qty if side == "buy" else -qty
        signal = Signal(
            signal_id=f"tp{uuid.uuid4().hex[:20]}", symbol=symbol, side=side, qty=qty, source="bench"
        )
        self.expected[symbol] = round(pos + signed, 8)
        self.pending[signal.signal_id] = (symbol, signed)
        return signal

    def settled(self, signal_id: str, filled: bool) -> None:
        """The signal's entry filled, or will never fill (refused, blocked, failed). Idempotent."""
        item = self.pending.pop(signal_id, None)
        if item is not None and not filled:
            symbol, signed = item
            self.expected[symbol] = round(self.expected[symbol] - signed, 8)
