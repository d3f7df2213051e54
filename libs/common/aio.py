"""Waits that never swallow a cancel.

Python 3.11's ``asyncio.wait_for`` returns normally when the task is cancelled in the same loop turn as
the awaited event fires (bpo-42130 / gh-86296): a loop around it then runs on, and a crash or shutdown
that awaits the task hangs (seen: the journal flusher survived ``Service.crash()``). ``asyncio.timeout``
awaits in the task itself and keeps the cancel, so every timed wait goes through here."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it is set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
