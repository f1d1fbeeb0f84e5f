"""How late the event loop wakes a sleeping task: the figure that says whether sockets are served promptly.

Every socket of every client is read and written on this one loop; anything that holds it up (a long
parse, a blocking call, the GIL held by another thread) delays them all, and shows here first.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

INTERVAL_SECONDS = 0.1


async def watch_loop_lag(histogram: Histogram, interval: float = INTERVAL_SECONDS) -> None:
    """Sleep `interval` over and over, recording how much later than asked each wake-up came."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - started - interval))
