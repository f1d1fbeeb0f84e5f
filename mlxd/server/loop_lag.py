"""How late the event loop wakes a sleeping task: the figure that says whether sockets are served promptly.

Every socket of every client is read and written on this one loop; anything that holds it up (a long
parse, a blocking call, the GIL held by another thread) delays them all, and shows here first.

Two figures come from each wake-up. The lag is what clients feel. On a machine with more runnable threads
than cores, part of it is time the loop's thread was ready to run but the kernel ran someone else: that is
the machine's load, not this server's doing. Linux counts that time per thread (run-queue wait, in
/proc/thread-self/schedstat); the server's own lag is the lag less the run-queue wait of the same interval.
It still counts the server's own callbacks and the GIL, whoever holds it. The two bound the truth: a wait
for a CPU earlier in the interval, which made nothing late, is subtracted too, so on a loaded machine the
own lag may understate, and the lag overstates; on a machine with a CPU to spare they are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from prometheus_client import Histogram

INTERVAL_SECONDS = 0.1
SCHEDSTAT = "/proc/thread-self/schedstat"


class RunQueueClock:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux); None elsewhere."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open(SCHEDSTAT, os.O_RDONLY)
        if self.read() is None:
            self.close()

    def read(self) -> float | None:
        if self._fd is None:
            return None
        try:
            fields = os.pread(self._fd, 128, 0).split()
            return int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def watch_loop_lag(lag: Histogram, own_lag: Histogram, interval: float = INTERVAL_SECONDS) -> None:
    """Sleep `interval` over and over, recording how much later than asked each wake-up came, in all and less
    the time the kernel kept the loop's thread waiting for a CPU meanwhile. Run on the loop's own thread."""
    loop = asyncio.get_running_loop()
    run_queue = RunQueueClock()
    try:
        while True:
            waited_before = run_queue.read()
            started = loop.time()
            await asyncio.sleep(interval)
            waited_after = run_queue.read()  # before the clock: a wait to read it is in both figures, or neither
            late = max(0.0, loop.time() - started - interval)
            lag.observe(late)
            if waited_before is not None and waited_after is not None:
                own_lag.observe(max(0.0, late - (waited_after - waited_before)))
            else:
                own_lag.observe(late)
    finally:
        run_queue.close()
