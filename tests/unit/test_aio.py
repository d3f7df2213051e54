import asyncio

import pytest

from libs.common.aio import wait_event


async def test_a_cancel_that_arrives_with_the_event_still_ends_the_waiting_loop():
    """Under 3.11's wait_for the cancel was swallowed and this loop ran on for ever."""
    wake = asyncio.Event()
    waiting = asyncio.Event()

    async def flusher() -> None:
        while True:
            wake.clear()
            waiting.set()
            await wait_event(wake, 5.0)

    task = asyncio.ensure_future(flusher())
    await waiting.wait()
    await asyncio.sleep(0)  # one loop turn: the task is now inside its wait
    wake.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2.0)


async def test_wait_event_says_whether_the_event_came():
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    asyncio.get_running_loop().call_soon(ev.set)
    assert await wait_event(ev, 5.0) is True
    assert await wait_event(ev, 0.0) is True  # already set: no wait at all
